//! The test and calibration images of `reflow prune`: IDX files, `.npy` arrays, CIFAR
//! folders or image folders, mapped onto `reflow::protocol::Images` and `Labels`.

use super::super::protocol::invalid;
use super::Args;
use reflow::io::{EvalTransform, IdxLabels};
use reflow::protocol::{Images, Labels, Source};

/// The test images, their labels when given, and the calibration images: IDX files,
/// `.npy` arrays, a CIFAR folder or image folders (read as `channels`, a labelled test
/// folder of at most `classes` classes, preprocessed by `transform`), any test source
/// with any calibration source, each checked against the network's channels and
/// classes; and the flag that gave the calibration images.
pub(super) fn read_data(
    args: &Args,
    channels: usize,
    classes: usize,
    transform: EvalTransform,
) -> reflow::Result<(Source, Option<IdxLabels>, Source, &'static str)> {
    let (test, test_flag, labels, labels_flag) = match (&args.cifar_dir, &args.test_images) {
        _ if args.test_dir.is_some() => {
            let dir = args.test_dir.clone().expect("matched");
            (Images::Folder(dir), "test-dir", None, "test-dir")
        }
        (Some(dir), _) => (Images::Cifar(dir.clone()), "cifar-dir", None, "cifar-dir"),
        (None, Some(path)) => (
            Images::Idx(path.clone()),
            "test-images",
            args.test_labels.clone().map(Labels::Idx),
            "test-labels",
        ),
        (None, None) => match &args.test_npy {
            Some(path) => (
                Images::Npy(path.clone()),
                "test-npy",
                args.test_labels_npy.clone().map(Labels::Npy),
                "test-labels-npy",
            ),
            None => {
                return Err(invalid(
                    "test-images",
                    "give --test-images (and --test-labels), --test-npy (and --test-labels-npy), --test-dir or --cifar-dir",
                ))
            }
        },
    };
    let names = (format!("--{test_flag}"), format!("--{labels_flag}"));
    let test = reading(&test, test_flag, || {
        test.open_test(
            labels.as_ref(),
            channels,
            classes,
            transform,
            (&names.0, &names.1),
        )
    })?;
    if let Some(first) = test.large.first() {
        eprintln!(
            "warning: --{test_flag}: {} image(s) above {} pixels (Pillow warns of a possible decompression bomb), the first {}",
            test.large.len(),
            reflow::io::MAX_IMAGE_PIXELS,
            first.display()
        );
    }
    let (calib, calib_flag) = match (&args.calib_images, &args.calib_npy, &args.cifar_dir) {
        _ if args.calib_dir.is_some() => (
            Images::Folder(args.calib_dir.clone().expect("matched")),
            "calib-dir",
        ),
        (Some(path), _, _) => (Images::Idx(path.clone()), "calib-images"),
        (None, Some(path), _) => (Images::Npy(path.clone()), "calib-npy"),
        (None, None, Some(dir)) => (Images::Cifar(dir.clone()), "cifar-dir"),
        (None, None, None) => return Err(invalid("calib-images", "not given")),
    };
    let name = format!("--{calib_flag}");
    let calib = reading(&calib, calib_flag, || {
        calib.open_calibration(channels, transform, &name)
    })?;
    Ok((test.images, test.labels, calib, calib_flag))
}

/// Runs `open`, with a spinner on stderr while a folder is listed and its headers read
/// (a large folder takes a while).
fn reading<T>(
    images: &Images,
    flag: &str,
    open: impl FnOnce() -> reflow::Result<T>,
) -> reflow::Result<T> {
    if !matches!(images, Images::Folder(_)) {
        return open();
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!("--{flag}: reading {}", images.path().display()));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let opened = open();
    spinner.finish_and_clear();
    opened
}
