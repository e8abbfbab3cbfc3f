//! Where a study's images come from, as typed options: IDX files, `.npy` arrays
//! (feature `npy`), a CIFAR folder, or a folder of JPEG/PNG images (feature
//! `image`), opened for evaluation (with labels, when there are) or calibration.
//!
//! Errors name the source by the name the caller gives (the `reflow` command passes
//! its flag, `--test-npy`), so that a user reads back what they wrote.

use crate::data::ImageSource;
use crate::error::{Error, Result};
use crate::io::{read_cifar, CifarSplit, Dataset, EvalTransform, IdxImages, IdxLabels};
use std::path::{Path, PathBuf};

/// Images of any source, chosen at run time.
pub type Source = Box<dyn ImageSource>;

/// Where images come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Images {
    /// An IDX file (`.gz` or not).
    Idx(PathBuf),
    /// A `.npy` array: uint8 `[N, H, W]` or `[N, C, H, W]`, or float32 `[N, C, H, W]`
    /// normalised already.
    Npy(PathBuf),
    /// A folder in torchvision's `ImageFolder` layout, or with the images directly in
    /// it (no labels).
    Folder(PathBuf),
    /// A folder of CIFAR-10 or CIFAR-100 binary files: its test split for evaluation,
    /// its training split for calibration.
    Cifar(PathBuf),
}

/// Where labels come from, for images that do not carry their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Labels {
    /// An IDX file.
    Idx(PathBuf),
    /// A `.npy` array: int64, int32 or uint8 `[N]`.
    Npy(PathBuf),
}

/// Test images, opened.
pub struct TestImages {
    /// The images.
    pub images: Source,
    /// Their labels, when there are: from [`Labels`], a CIFAR split or a folder's
    /// classes.
    pub labels: Option<IdxLabels>,
    /// A folder's images above [`MAX_IMAGE_PIXELS`](crate::io::MAX_IMAGE_PIXELS)
    /// (Pillow warns of them), for the caller to warn of.
    pub large: Vec<PathBuf>,
}

impl std::fmt::Debug for TestImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestImages")
            .field("images", &self.images.len())
            .field("labelled", &self.labels.is_some())
            .field("large", &self.large)
            .finish()
    }
}

/// Float images whose values pass this are taken for unnormalised pixels.
#[cfg(feature = "npy")]
const NORMALISED_LIMIT: f32 = 50.0;

impl Images {
    /// The images and labels for evaluation of a network with `channels` input
    /// channels and `classes` outputs, read as `channels` and, for a folder,
    /// preprocessed by `transform`: a labelled folder has at most `classes` classes
    /// and every header is read now. Checked: at least one image, of `channels`
    /// channels; as many labels as images, each below `classes`. `name` and
    /// `labels_name` name the images and the labels in errors.
    pub fn open_test(
        &self,
        labels: Option<&Labels>,
        channels: usize,
        classes: usize,
        transform: EvalTransform,
        (name, labels_name): (&str, &str),
    ) -> Result<TestImages> {
        /// Images with their labels, the counts checked.
        fn labelled(images: Source, labels: IdxLabels) -> Result<(Source, Option<IdxLabels>)> {
            let (images, labels) = Dataset::new(images, labels)?.into_parts();
            Ok((images, Some(labels)))
        }
        let mut large = Vec::new();
        let labels_name = match labels {
            Some(_) => labels_name,
            None => name,
        };
        let (images, labels) = match (self, labels) {
            (Images::Cifar(dir), _) => {
                let (images, labels) = read_cifar(dir, CifarSplit::Test)?.1.into_parts();
                labelled(Box::new(images), labels)?
            }
            (Images::Folder(dir), _) => {
                let (images, labels, big) =
                    folder::open(name, dir, channels, transform, Some(classes))?;
                large = big;
                match labels {
                    Some(labels) => labelled(images, labels)?,
                    None => (images, None),
                }
            }
            (images, None) => (images.open(name, channels, transform)?, None),
            (images, Some(labels)) => {
                let labels = match labels {
                    Labels::Idx(path) => IdxLabels::read(path)?,
                    Labels::Npy(path) => npy::labels(labels_name, path)?,
                };
                labelled(images.open(name, channels, transform)?, labels)?
            }
        };
        if images.is_empty() {
            return Err(Error::empty(name, "0 test images"));
        }
        check_channels(images.as_ref(), channels, name)?;
        let slice = labels.as_ref().map(|l| l.as_slice()).unwrap_or_default();
        if let Some(i) = slice.iter().position(|&c| c as usize >= classes) {
            return Err(Error::invalid(
                labels_name,
                format!(
                    "label {} of sample {i}, but the model has {classes} classes",
                    slice[i]
                ),
            ));
        }
        Ok(TestImages {
            images,
            labels,
            large,
        })
    }

    /// The images for calibrating a network with `channels` input channels, read as
    /// `channels` and, for a folder, preprocessed by `transform` (a folder is only
    /// listed: a run checks the images it draws). Checked: at least one image, of
    /// `channels` channels. `name` names the source in errors.
    pub fn open_calibration(
        &self,
        channels: usize,
        transform: EvalTransform,
        name: &str,
    ) -> Result<Source> {
        let images = self.open_calibration_unchecked(channels, transform, name)?;
        if images.is_empty() {
            return Err(Error::empty(
                name,
                format!(
                    "{}: 0 images; calibration needs at least one",
                    self.path().display()
                ),
            ));
        }
        check_channels(images.as_ref(), channels, name)?;
        Ok(images)
    }

    fn open_calibration_unchecked(
        &self,
        channels: usize,
        transform: EvalTransform,
        name: &str,
    ) -> Result<Source> {
        match self {
            Images::Cifar(dir) => {
                let images = read_cifar(dir, CifarSplit::Train)?.1.into_parts().0;
                Ok(Box::new(images))
            }
            Images::Folder(dir) => Ok(folder::open(name, dir, channels, transform, None)?.0),
            other => other.open(name, channels, transform),
        }
    }

    /// An IDX or `.npy` file's images.
    fn open(&self, name: &str, channels: usize, transform: EvalTransform) -> Result<Source> {
        match self {
            Images::Idx(path) => Ok(Box::new(IdxImages::read(path)?)),
            Images::Npy(path) => npy::images(name, path),
            Images::Folder(dir) => Ok(folder::open(name, dir, channels, transform, None)?.0),
            Images::Cifar(dir) => {
                let images = read_cifar(dir, CifarSplit::Test)?.1.into_parts().0;
                Ok(Box::new(images))
            }
        }
    }

    /// The file or folder.
    pub fn path(&self) -> &Path {
        match self {
            Images::Idx(p) | Images::Npy(p) | Images::Folder(p) | Images::Cifar(p) => p,
        }
    }
}

/// Images of `channels` channels, or an error naming the source.
fn check_channels(images: &dyn ImageSource, channels: usize, name: &str) -> Result<()> {
    let c = images.image_dims()[0];
    if c == channels {
        return Ok(());
    }
    Err(Error::invalid(
        name,
        format!("{c}-channel images; the model takes {channels} input channel(s)"),
    ))
}

/// `.npy` files, when the build has the `npy` feature.
mod npy {
    use super::Source;
    use crate::error::{Error, Result};
    use std::path::Path;

    #[cfg(feature = "npy")]
    pub(super) fn images(name: &str, path: &Path) -> Result<Source> {
        let images = crate::io::NpyImages::read(path)?;
        if let crate::io::NpyImages::Normalized(floats) = &images {
            let max = floats.max_abs();
            if max > super::NORMALISED_LIMIT {
                return Err(Error::invalid(
                    name,
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
    pub(super) fn labels(_: &str, path: &Path) -> Result<crate::io::IdxLabels> {
        crate::io::read_npy_labels(path)
    }

    #[cfg(not(feature = "npy"))]
    pub(super) fn images(name: &str, _: &Path) -> Result<Source> {
        Err(Error::invalid(
            name,
            "this build reads no .npy files: build with --features npy (the reflow command has it)",
        ))
    }

    #[cfg(not(feature = "npy"))]
    pub(super) fn labels(name: &str, _: &Path) -> Result<crate::io::IdxLabels> {
        Err(Error::invalid(
            name,
            "this build reads no .npy files: build with --features npy",
        ))
    }
}

/// Image folders, when the build has the `image` feature.
mod folder {
    use super::Source;
    use crate::error::{Error, Result};
    use crate::io::{EvalTransform, IdxLabels};
    use std::path::{Path, PathBuf};

    /// The folder's images, their labels when it has class sub-folders, and the
    /// images above Pillow's warning size: a test folder (`classes`, the model's) with
    /// its class count checked and every header read; a calibration folder (`None`)
    /// only listed.
    #[cfg(feature = "image")]
    pub(super) fn open(
        name: &str,
        dir: &Path,
        channels: usize,
        transform: EvalTransform,
        classes: Option<usize>,
    ) -> Result<(Source, Option<IdxLabels>, Vec<PathBuf>)> {
        use crate::io::ImageFolder;
        if !dir.is_dir() {
            return Err(Error::invalid(
                name,
                format!("{} is not a folder", dir.display()),
            ));
        }
        let images = ImageFolder::scan_unlabelled(dir, channels, transform)?;
        if let Some(classes) = classes.filter(|_| images.is_labelled()) {
            let found = images.classes();
            if found.len() > classes {
                return Err(Error::invalid(
                    name,
                    format!(
                        "{} class folders, but the model has {classes} classes (the first without one: \"{}\")",
                        found.len(),
                        found[classes]
                    ),
                ));
            }
        }
        let large = match classes {
            Some(_) => images.check(&(0..images.paths().len()).collect::<Vec<_>>())?,
            None => Vec::new(),
        };
        let labels = images.is_labelled().then(|| images.labels());
        Ok((Box::new(images), labels, large))
    }

    #[cfg(not(feature = "image"))]
    pub(super) fn open(
        name: &str,
        _: &Path,
        _: usize,
        _: EvalTransform,
        _: Option<usize>,
    ) -> Result<(Source, Option<IdxLabels>, Vec<PathBuf>)> {
        Err(Error::invalid(
            name,
            "this build reads no image folders: build with --features image (the reflow command has it)",
        ))
    }
}
