//! The test and calibration images of `reflow prune`: IDX files, `.npy` arrays, CIFAR
//! folders or image folders, and the check that every batch norm gets enough values.

use super::super::protocol::invalid;
use super::plan::Plan;
use super::Args;
use reflow::io::{read_cifar, CifarSplit, EvalTransform, ImageSource};
use reflow::models::Model;
use reflow::prelude::*;
use reflow::protocol::RepairChoice;

/// Images of any source, chosen at run time.
type Source = Box<dyn ImageSource>;

/// `.npy` files, when the build has the `npy` feature (the `reflow` command always has).
mod npy {
    use super::Source;
    use std::path::Path;

    /// Float images whose values pass this are taken for unnormalised pixels.
    #[cfg(feature = "npy")]
    const NORMALISED_LIMIT: f32 = 50.0;

    #[cfg(feature = "npy")]
    pub fn images(flag: &str, path: &Path) -> reflow::Result<Source> {
        let images = reflow::io::NpyImages::read(path)?;
        if let reflow::io::NpyImages::Normalized(floats) = &images {
            let max = floats.max_abs();
            if max > NORMALISED_LIMIT {
                return Err(super::invalid(
                    flag,
                    format!(
                        "{}: float32 values up to {max} look like pixels, but float32 images are taken as normalised already (--mean/--std apply to uint8 images): normalise them, or save them as uint8",
                        path.display()
                    ),
                ));
            }
        }
        Ok(Box::new(images))
    }

    #[cfg(feature = "npy")]
    pub fn labels(path: &Path) -> reflow::Result<reflow::io::IdxLabels> {
        reflow::io::read_npy_labels(path)
    }

    #[cfg(not(feature = "npy"))]
    pub fn images(flag: &str, _: &Path) -> reflow::Result<Source> {
        Err(super::invalid(
            flag,
            "this build reads no .npy files: build with --features npy (the reflow command has it)",
        ))
    }

    #[cfg(not(feature = "npy"))]
    pub fn labels(_: &Path) -> reflow::Result<reflow::io::IdxLabels> {
        Err(super::invalid(
            "test-labels-npy",
            "this build reads no .npy files: build with --features npy",
        ))
    }
}

/// Image folders, when the build has the `image` feature (the `reflow` command
/// always has).
mod folder {
    use super::Source;
    use reflow::io::{EvalTransform, IdxLabels};
    use std::path::Path;

    /// The folder's images, and their labels when it has class sub-folders: a test
    /// folder (`classes`, the model's) with its class count checked and every header
    /// read; a calibration folder (`None`: of which a run draws a few) only listed, the
    /// run checks what it draws.
    #[cfg(feature = "image")]
    pub fn images(
        flag: &str,
        dir: &Path,
        channels: usize,
        transform: EvalTransform,
        classes: Option<usize>,
    ) -> reflow::Result<(Source, Option<IdxLabels>)> {
        use reflow::io::ImageFolder;
        if !dir.is_dir() {
            return Err(super::invalid(
                flag,
                format!("{} is not a folder", dir.display()),
            ));
        }
        // Listing a large folder and reading its headers takes a while.
        let spinner = indicatif::ProgressBar::new_spinner();
        spinner.set_message(format!("--{flag}: reading {}", dir.display()));
        spinner.enable_steady_tick(std::time::Duration::from_millis(120));
        let images = ImageFolder::scan_unlabelled(dir, channels, transform).and_then(|images| {
            if let Some(classes) = classes.filter(|_| images.is_labelled()) {
                let found = images.classes();
                if found.len() > classes {
                    return Err(super::invalid(
                        flag,
                        format!(
                            "{} class folders, but the model has {classes} classes (the first without one: \"{}\")",
                            found.len(),
                            found[classes]
                        ),
                    ));
                }
            }
            if classes.is_some() {
                let large = images.check(&(0..images.paths().len()).collect::<Vec<_>>())?;
                if let Some(first) = large.first() {
                    eprintln!(
                        "warning: --{flag}: {} image(s) above {} pixels (Pillow warns of a possible decompression bomb), the first {}",
                        large.len(),
                        reflow::io::MAX_IMAGE_PIXELS,
                        first.display()
                    );
                }
            }
            Ok(images)
        });
        spinner.finish_and_clear();
        let images = images?;
        let labels = images.is_labelled().then(|| images.labels());
        Ok((Box::new(images), labels))
    }

    #[cfg(not(feature = "image"))]
    pub fn images(
        flag: &str,
        _: &Path,
        _: usize,
        _: EvalTransform,
        _: Option<usize>,
    ) -> reflow::Result<(Source, Option<IdxLabels>)> {
        Err(super::invalid(
            flag,
            "this build reads no image folders: build with --features image (the reflow command has it)",
        ))
    }
}

/// The test images, their labels when given, and the calibration images: IDX files,
/// `.npy` arrays, a CIFAR folder or image folders (read as `channels`, a labelled test
/// folder of at most `classes` classes, preprocessed by `transform`), any test source
/// with any calibration source.
pub(super) fn read_data(
    args: &Args,
    channels: usize,
    classes: usize,
    transform: EvalTransform,
) -> reflow::Result<(Source, Option<IdxLabels>, Source)> {
    let boxed = |images: IdxImages| -> Source { Box::new(images) };
    /// Images with their labels, the counts checked.
    fn labelled(images: Source, labels: IdxLabels) -> reflow::Result<(Source, Option<IdxLabels>)> {
        let (images, labels) = Dataset::new(images, labels)?.into_parts();
        Ok((images, Some(labels)))
    }
    let (test, labels) = match (&args.cifar_dir, &args.test_images, &args.test_npy) {
        _ if args.test_dir.is_some() => {
            let dir = args.test_dir.as_ref().expect("matched");
            let (images, labels) = folder::images("test-dir", dir, channels, transform, Some(classes))?;
            match labels {
                Some(labels) => labelled(images, labels)?,
                None => (images, None),
            }
        }
        (Some(dir), _, _) => {
            let (images, labels) = read_cifar(dir, CifarSplit::Test)?.1.into_parts();
            labelled(boxed(images), labels)?
        }
        (None, Some(images), _) => {
            let images = boxed(IdxImages::read(images)?);
            match &args.test_labels {
                Some(labels) => labelled(images, IdxLabels::read(labels)?)?,
                None => (images, None),
            }
        }
        (None, None, Some(images)) => {
            let images = npy::images("test-npy", images)?;
            match &args.test_labels_npy {
                Some(labels) => labelled(images, npy::labels(labels)?)?,
                None => (images, None),
            }
        }
        _ => {
            return Err(invalid(
                "test-images",
                "give --test-images (and --test-labels), --test-npy (and --test-labels-npy), --test-dir or --cifar-dir",
            ))
        }
    };
    let calib: Source = match (&args.calib_images, &args.calib_npy, &args.cifar_dir) {
        _ if args.calib_dir.is_some() => {
            let dir = args.calib_dir.as_ref().expect("matched");
            folder::images("calib-dir", dir, channels, transform, None)?.0
        }
        (Some(path), _, _) => boxed(IdxImages::read(path)?),
        (None, Some(path), _) => npy::images("calib-npy", path)?,
        (None, None, Some(dir)) => boxed(read_cifar(dir, CifarSplit::Train)?.1.into_parts().0),
        (None, None, None) => return Err(invalid("calib-images", "not given")),
    };
    Ok((test, labels, calib))
}

/// Before any forward pass over the data: every batch norm gets at least two values
/// per channel to compute a variance from — in each calibration batch for the
/// running modes, in the whole calibration set for `exact`. How many values a batch
/// norm sees per image is measured on one blank image.
pub(super) fn enough_values(
    args: &Args,
    plan: &Plan,
    net: &Model,
    images: &dyn ImageSource,
) -> reflow::Result<()> {
    /// The smallest plane a batch norm sees.
    struct Smallest(usize);
    impl reflow::layer::Observer for Smallest {
        fn wants(&self, tap: &reflow::layer::Tap<'_>) -> bool {
            tap.kind == reflow::layer::LayerKind::BatchNorm
                && tap.site == reflow::layer::Site::Output
        }
        fn observe(&mut self, _: &reflow::layer::Tap<'_>, a: reflow::layer::ActivationView<'_>) {
            self.0 = self.0.min(a.spatial);
        }
    }
    let [c, h, w] = images.image_dims();
    // The probe is one image of the calibration set's size: bounded like any image.
    reflow::io::check_image_pixels("calibration images", h, w)?;
    let mut smallest = Smallest(usize::MAX);
    let blank = reflow::nn::Tensor4::zeros((1, c, h, w));
    net.forward_with(&blank, &mut Probe::new(&mut smallest))?;
    let per_image = smallest.0;
    let count = args.calib_count.min(images.len());
    // `--repair auto` also repairs from each half of the images.
    let mut sets = vec![(count, String::new())];
    if plan.study.repair == RepairChoice::Auto {
        sets.push((
            count.div_ceil(2),
            " (half of them, for --repair auto)".into(),
        ));
        sets.push((count / 2, " (half of them, for --repair auto)".into()));
    }
    for (count, which) in sets {
        let (images_at_once, flag) = match plan.study.reflow.mode() {
            ReflowMode::Exact => (count, "calib-count"),
            _ => match count % args.calib_batch {
                0 => (args.calib_batch.min(count), "calib-batch"),
                last => (last, "calib-batch"),
            },
        };
        if images_at_once.saturating_mul(per_image) < 2 {
            return Err(invalid(
                flag,
                format!(
                    "{images_at_once} image(s){which} of {h}x{w} give the smallest batch norms {} value(s) per channel; a variance needs two",
                    images_at_once.saturating_mul(per_image)
                ),
            ));
        }
    }
    Ok(())
}
