//! Image folders and torchvision's evaluation preprocessing against
//! `scripts/make_image_fixtures.py`: Pillow-decoded, torchvision-transformed pixels of
//! real photos (JPEG at several qualities and subsamplings) and synthetic PNGs (every
//! 8-bit colour type, odd sizes), the logits of two networks on them, and bad folders.
//!
//! PNG: every pixel equal to torchvision's. JPEG: `image`'s decoder (zune-jpeg) is not
//! libjpeg-turbo's; the difference after the transform is bounded below
//! (`JPEG_MAX_DIFF`, `JPEG_MEAN_DIFF`), and every top-1 is torchvision's.
#![cfg(feature = "image")]

mod common;

use reflow::io::{read_image, EvalTransform, ImageFolder, ImageSource, Normalization, Pixels};
use reflow::layer::Layer;
use reflow::models::ResNet;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

/// The largest difference of a JPEG pixel from torchvision's, out of 255, after any
/// of the fixture's transforms (measured on the fixture: 4).
const JPEG_MAX_DIFF: u8 = 5;
/// The largest mean absolute difference of a JPEG image from torchvision's, out of
/// 255 (measured: 0.372).
const JPEG_MEAN_DIFF: f64 = 0.5;

fn folder() -> PathBuf {
    common::fixture("images")
}

/// The fixture's tensors, by name: uint8 pixels, float32 logits.
struct Expected {
    bytes: Vec<u8>,
}

impl Expected {
    fn read() -> Expected {
        Expected {
            bytes: std::fs::read(common::fixture("image_transforms.safetensors")).unwrap(),
        }
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }

    /// `(image, mode, transform, pixels)` of every pixel case.
    fn pixel_cases(&self) -> Vec<(String, usize, EvalTransform, Pixels)> {
        let tensors = self.tensors();
        let mut cases = Vec::new();
        for (name, view) in tensors.tensors() {
            let Some((image, rest)) = name.split_once('|') else {
                continue;
            };
            let parts: Vec<&str> = rest.split('|').collect();
            let size = |s: &str| (s != "-").then(|| s.parse::<usize>().unwrap());
            let channels = if parts[0] == "L" { 1 } else { 3 };
            let transform = EvalTransform {
                resize: size(parts[1]),
                crop: size(parts[2]),
            };
            assert_eq!(view.dtype(), Dtype::U8);
            let shape = view.shape();
            let pixels = Pixels::new([shape[0], shape[1], shape[2]], view.data().to_vec()).unwrap();
            cases.push((image.to_string(), channels, transform, pixels));
        }
        cases.sort_by(|a, b| a.0.cmp(&b.0));
        cases
    }

    fn logits(&self, net: &str, image: &str) -> Vec<f32> {
        let tensors = self.tensors();
        let view = tensors.tensor(&format!("logits/{net}/{image}")).unwrap();
        view.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
}

/// `(max, mean)` absolute difference of two images of one shape.
fn difference(a: &Pixels, b: &Pixels) -> (u8, f64) {
    assert_eq!(a.dims(), b.dims());
    let diffs = a
        .as_slice()
        .iter()
        .zip(b.as_slice())
        .map(|(x, y)| x.abs_diff(*y));
    let max = diffs.clone().max().unwrap();
    let mean = diffs.map(f64::from).sum::<f64>() / a.as_slice().len() as f64;
    (max, mean)
}

fn ours(image: &str, channels: usize, transform: EvalTransform) -> Pixels {
    transform
        .apply(&read_image(folder().join(image), channels).unwrap())
        .unwrap()
}

#[test]
fn png_pixels_equal_torchvisions_after_every_transform() {
    let expected = Expected::read();
    let mut checked = 0;
    for (image, channels, transform, want) in expected.pixel_cases() {
        if !image.ends_with(".png") {
            continue;
        }
        let got = ours(&image, channels, transform);
        assert_eq!(
            difference(&got, &want),
            (0, 0.0),
            "{image} {channels} channel(s) {transform:?}"
        );
        checked += 1;
    }
    assert_eq!(checked, 8 * 4 + 1);
}

#[test]
fn jpeg_pixels_are_within_the_stated_tolerance() {
    let expected = Expected::read();
    let (mut worst_max, mut worst_mean, mut checked) = (0, 0.0f64, 0);
    for (image, channels, transform, want) in expected.pixel_cases() {
        if !image.ends_with(".jpg") {
            continue;
        }
        let (max, mean) = difference(&ours(&image, channels, transform), &want);
        assert!(
            max <= JPEG_MAX_DIFF && mean <= JPEG_MEAN_DIFF,
            "{image} {channels} channel(s) {transform:?}: max {max}, mean {mean:.3}"
        );
        worst_max = worst_max.max(max);
        worst_mean = worst_mean.max(mean);
        checked += 1;
    }
    println!("JPEG: largest difference {worst_max}/255, largest mean {worst_mean:.3}/255 over {checked} cases");
    assert_eq!(checked, 21 * 4 + 1);
}

#[test]
fn the_folder_is_torchvisions_image_folder() {
    let set = ImageFolder::open(
        folder(),
        3,
        EvalTransform {
            resize: Some(64),
            crop: Some(56),
        },
    )
    .unwrap();
    assert_eq!(set.classes(), ["jpeg", "png"]);
    assert_eq!(set.len(), 29);
    assert_eq!(set.image_dims(), [3, 56, 56]);
    let names: Vec<String> = set
        .paths()
        .iter()
        .map(|p| {
            p.strip_prefix(folder())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // Sorted by name within each class: as `sorted(os.walk(...))` and `sorted(fnames)`.
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names[0], "jpeg/astronaut_q40_420.jpg");
    assert_eq!(names[21], "png/bits_19x90.png");
    let labels = set.labels();
    assert_eq!(labels.as_slice()[..21], [0; 21]);
    assert_eq!(labels.as_slice()[21..], [1; 8]);

    // A batch is the images' pixels, normalised as ToTensor + Normalize.
    let norm = Normalization::imagenet();
    let x = set.tensor(&[22, 3], &norm).unwrap();
    assert_eq!(x.shape(), [2, 3, 56, 56]);
    let expected = Expected::read();
    let cases = expected.pixel_cases();
    for (row, index) in [(0, 22), (1, 3)] {
        let want = &cases
            .iter()
            .find(|c| c.0 == names[index] && c.1 == 3 && c.2 == set_transform())
            .unwrap()
            .3;
        let mean = [0.485f32, 0.456, 0.406];
        let std = [0.229f32, 0.224, 0.225];
        for (i, &p) in want.as_slice().iter().enumerate() {
            let c = i / (56 * 56);
            let v = (p as f32 / 255.0 - mean[c]) / std[c];
            let got = x.as_slice().unwrap()[row * 3 * 56 * 56 + i];
            if names[index].ends_with(".png") {
                assert_eq!(got, v);
            }
        }
    }
    let dataset = set.into_dataset().unwrap();
    assert_eq!(dataset.len(), 29);
}

fn set_transform() -> EvalTransform {
    EvalTransform {
        resize: Some(64),
        crop: Some(56),
    }
}

/// Every image through a network, as an `ImageFolder` batch: PNG logits equal
/// torchvision's to float rounding, every top-1 equal.
fn top1_unchanged(
    net: &str,
    weights: &Path,
    channels: usize,
    resize: usize,
    crop: usize,
    norm: Normalization,
) {
    let state = reflow::StateDict::read_safetensors(weights).unwrap();
    let model = ResNet::from_state_dict(&state).unwrap();
    let transform = EvalTransform {
        resize: Some(resize),
        crop: Some(crop),
    };
    let set = ImageFolder::open(folder(), channels, transform).unwrap();
    let indices: Vec<usize> = (0..set.len()).collect();
    let x = set.tensor(&indices, &norm).unwrap();
    let logits = model.forward(&x).unwrap();
    let expected = Expected::read();
    for (i, path) in set.paths().iter().enumerate() {
        let name = path
            .strip_prefix(folder())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let want = expected.logits(net, &name);
        let got: Vec<f32> = logits.row(i).to_vec();
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (j, &x)| if x > b.1 { (j, x) } else { b })
                .0
        };
        assert_eq!(argmax(&got), argmax(&want), "{net}: top-1 of {name}");
        if name.ends_with(".png") {
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-4 * scale, "{net}: {name}: {g} vs {w}");
            }
        }
    }
}

#[test]
fn top1_of_a_network_is_torchvisions_rgb() {
    top1_unchanged(
        "resnet20_cifar",
        &common::fixture("resnet20_cifar.safetensors"),
        3,
        36,
        32,
        Normalization::imagenet(),
    );
}

#[test]
fn top1_of_a_network_is_torchvisions_gray() {
    let weights = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("assets/fashion-mnist/resnet20_fmnist.safetensors");
    top1_unchanged(
        "resnet20_fmnist",
        &weights,
        1,
        32,
        28,
        Normalization::fashion_mnist(),
    );
}

/// A folder in a fresh temporary directory, with `files` (relative path, bytes).
fn make_folder(files: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    dir
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(folder().join(name)).unwrap()
}

fn open_error(dir: &Path, transform: EvalTransform) -> String {
    ImageFolder::open(dir, 3, transform)
        .unwrap_err()
        .to_string()
}

#[test]
fn bad_folders_are_named_one_line_errors() {
    let crop = EvalTransform {
        resize: None,
        crop: Some(16),
    };
    let jpeg = fixture_bytes("jpeg/rocket_q90_420.jpg");
    let png = fixture_bytes("png/rgb_37x53.png");

    // No image at all, and images with no class folder.
    let empty = make_folder(&[]);
    let e = open_error(empty.path(), crop);
    assert!(e.contains("no class sub-folder and no image"), "{e}");
    let flat = make_folder(&[("a.png", png.clone())]);
    let e = open_error(flat.path(), crop);
    assert!(e.contains("1 images directly in it"), "{e}");
    // Unlabelled, the same folder is one image and no class, and no data set.
    let images = ImageFolder::scan_unlabelled(flat.path(), 3, crop).unwrap();
    assert_eq!((images.len(), images.classes().len()), (1, 0));
    assert!(!images.is_labelled());
    assert_eq!(
        images
            .tensor(&[0], &Normalization::imagenet())
            .unwrap()
            .shape(),
        [1, 3, 16, 16]
    );
    let e = images.into_dataset().unwrap_err().to_string();
    assert!(e.contains("without class sub-folders"), "{e}");
    let e = ImageFolder::scan_unlabelled(empty.path(), 3, crop)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no class sub-folder and no image"), "{e}");
    let labelled = make_folder(&[("cat/a.png", png.clone())]);
    assert!(ImageFolder::scan_unlabelled(labelled.path(), 3, crop)
        .unwrap()
        .is_labelled());

    // An empty class folder, among good ones.
    let dir = make_folder(&[
        ("cat/a.jpg", jpeg.clone()),
        ("dog/notes.txt", b"hi".to_vec()),
    ]);
    let e = open_error(dir.path(), crop);
    assert!(
        e.contains("dog") && e.contains("no JPEG or PNG image in this class folder"),
        "{e}"
    );

    // A 16-bit PNG.
    let deep = std::fs::read(common::fixture("gray16.png")).unwrap();
    let dir = make_folder(&[("a/deep.png", deep)]);
    let e = open_error(dir.path(), crop);
    assert!(e.contains("deep.png") && e.contains("16-bit"), "{e}");

    // A file that is no image, under an image's name; and a BMP.
    let dir = make_folder(&[("a/fake.jpg", b"not a jpeg at all".to_vec())]);
    let e = open_error(dir.path(), crop);
    assert!(
        e.contains("fake.jpg") && e.contains("not a JPEG or PNG"),
        "{e}"
    );
    let dir = make_folder(&[("a/moving.png", b"GIF89a......".to_vec())]);
    let e = open_error(dir.path(), crop);
    assert!(e.contains("moving.png") && e.contains("a GIF image"), "{e}");
    // A JPEG whose header is cut: the header read fails, naming it.
    let dir = make_folder(&[("a/stub.jpg", jpeg[..40].to_vec())]);
    let e = open_error(dir.path(), crop);
    assert!(e.contains("stub.jpg") && e.contains("cannot decode"), "{e}");
    let dir = make_folder(&[("a/old.BMP", b"BM....".to_vec())]);
    let e = open_error(dir.path(), crop);
    assert!(
        e.contains("old.BMP") && e.contains(".bmp images are not read"),
        "{e}"
    );

    // Sizes that disagree without a crop.
    let dir = make_folder(&[("a/1.jpg", jpeg.clone()), ("a/2.png", png.clone())]);
    let e = open_error(dir.path(), EvalTransform::none());
    assert!(e.contains("2.png") && e.contains("same size"), "{e}");

    // A JPEG cut short: refused when the folder is opened (its end marker is read
    // with its header, issue 26), naming it; decoding it alone fails the same way.
    let dir = make_folder(&[("a/cut.jpg", jpeg[..jpeg.len() / 3].to_vec())]);
    let e = open_error(dir.path(), crop);
    assert!(e.contains("cut.jpg") && e.contains("truncated JPEG"), "{e}");
    let e = read_image(dir.path().join("a/cut.jpg"), 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cut.jpg") && e.contains("truncated JPEG"), "{e}");
    // A scanned folder (as for calibration) checks it among the images drawn.
    let set = ImageFolder::scan(dir.path(), 3, crop).unwrap();
    assert!(set
        .check(&[0])
        .unwrap_err()
        .to_string()
        .contains("truncated JPEG"));
    let dir = make_folder(&[("a/cut.png", png[..png.len() / 2].to_vec())]);
    let set = ImageFolder::open(dir.path(), 3, crop).unwrap();
    let e = set
        .tensor(&[0], &Normalization::imagenet())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cut.png") && e.contains("cannot decode"), "{e}");

    // Every message is one line.
    assert!(!e.contains('\n'));
}

#[test]
fn a_scanned_folder_checks_only_the_images_asked_for() {
    let png = fixture_bytes("png/rgb_37x53.png");
    let deep = std::fs::read(common::fixture("gray16.png")).unwrap();
    let dir = make_folder(&[
        ("a/1.png", png.clone()),
        ("a/2.png", deep),
        ("b/3.png", png),
    ]);
    let crop = EvalTransform {
        resize: None,
        crop: Some(8),
    };
    // `open` reads every header; `scan` none with a crop, and `check` those asked for.
    let e = open_error(dir.path(), crop);
    assert!(e.contains("2.png") && e.contains("16-bit"), "{e}");
    let set = ImageFolder::scan(dir.path(), 3, crop).unwrap();
    assert_eq!(set.len(), 3);
    set.check(&[0, 2]).unwrap();
    let e = set.check(&[2, 1]).unwrap_err().to_string();
    assert!(e.contains("2.png") && e.contains("16-bit"), "{e}");
    let e = set.check(&[3]).unwrap_err().to_string();
    assert!(e.contains("3 is past the 3 images"), "{e}");
    // Through the trait, as `reflow prune` checks the calibration images it draws.
    let source: Box<dyn ImageSource> = Box::new(set);
    assert!(source.check(&[1]).is_err());

    // Unchecked, a size that disagrees is found when the image is decoded.
    let other = fixture_bytes("png/gray_101x67.png");
    let dir = make_folder(&[
        ("a/1.png", fixture_bytes("png/rgb_37x53.png")),
        ("a/2.png", other),
    ]);
    let set = ImageFolder::scan(dir.path(), 3, EvalTransform::none()).unwrap();
    assert_eq!(set.image_dims(), [3, 37, 53]);
    let e = set
        .tensor(&[0, 1], &Normalization::imagenet())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("2.png: 101x67 image gives 101x67") && e.contains("same size"),
        "{e}"
    );
}

#[test]
fn nested_folders_sort_as_os_walk_does() {
    // `sorted(os.walk(...))` sorts folders by whole path: "k/b" before "k/b c" before
    // "k/b/d" (a space sorts before "/"). torchvision's order, from this very tree.
    let png = fixture_bytes("png/gray_101x67.png");
    let dir = make_folder(&[
        ("k/b/z.png", png.clone()),
        ("k/b/d/w.png", png.clone()),
        ("k/b c/y.png", png.clone()),
        ("k/a.png", png.clone()),
        ("k/B.png", png.clone()),
        ("j/x.PNG", png.clone()),
        ("j/skip.txt", b"".to_vec()),
    ]);
    let set = ImageFolder::open(dir.path(), 1, EvalTransform::none()).unwrap();
    let names: Vec<String> = set
        .paths()
        .iter()
        .map(|p| {
            p.strip_prefix(dir.path())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "j/x.PNG",
            "k/B.png",
            "k/a.png",
            "k/b/z.png",
            "k/b c/y.png",
            "k/b/d/w.png"
        ]
    );
    assert_eq!(set.labels().as_slice(), [0, 1, 1, 1, 1, 1]);
}
