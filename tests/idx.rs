//! The IDX reader: raw and gzip files, normalisation, and the errors bad files produce.

mod common;

use flate2::write::GzEncoder;
use flate2::Compression;
use reflow::io::{Dataset, IdxImages, IdxLabels, Normalization};
use reflow::Error;
use std::io::Write;

/// An IDX u8 file with the given dimensions and data.
fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn raw_and_gzip_files_read_the_same() {
    let pixels: Vec<u8> = (0..3 * 2 * 4).map(|i| (i * 10) as u8).collect();
    let raw = idx(&[3, 2, 4], &pixels);
    let dir = tempfile::tempdir().unwrap();
    let a = IdxImages::read(write(&dir, "a-idx3-ubyte", &raw)).unwrap();
    let b = IdxImages::read(write(&dir, "a-idx3-ubyte.gz", &gz(&raw))).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.dims(), [3, 1, 2, 4]);
    let labels = IdxLabels::read(write(&dir, "l.gz", &gz(&idx(&[3], &[7, 0, 9])))).unwrap();
    assert_eq!(labels.as_slice(), [7, 0, 9]);
}

#[test]
fn images_normalise_per_channel_like_torchvision() {
    // Two images of 2 channels, 1x2 each.
    let pixels = [0, 255, 51, 102, 255, 0, 204, 153];
    let images = IdxImages::from_bytes(&idx(&[2, 2, 1, 2], &pixels)).unwrap();
    assert_eq!(images.dims(), [2, 2, 1, 2]);
    let norm = Normalization::new(vec![0.5, 0.25], vec![0.5, 0.25]).unwrap();
    let x = images.to_tensor(1..2, &norm).unwrap();
    assert_eq!(x.dim(), (1, 2, 1, 2));
    let expect = |p: u8, m: f32, s: f32| (p as f32 / 255.0 - m) / s;
    assert_eq!(x[[0, 0, 0, 0]], expect(255, 0.5, 0.5));
    assert_eq!(x[[0, 0, 0, 1]], expect(0, 0.5, 0.5));
    assert_eq!(x[[0, 1, 0, 0]], expect(204, 0.25, 0.25));
    assert_eq!(x[[0, 1, 0, 1]], expect(153, 0.25, 0.25));
    // One value per channel, or an error.
    let err = images
        .to_tensor(0..1, &Normalization::fashion_mnist())
        .unwrap_err();
    assert!(err.to_string().contains("2 channels"), "{err}");
}

#[test]
fn datasets_batch_in_file_order() {
    let images = IdxImages::from_bytes(&idx(&[5, 1, 1], &[1, 2, 3, 4, 5])).unwrap();
    let labels = IdxLabels::from_bytes(&idx(&[5], &[0, 1, 2, 3, 4])).unwrap();
    let data = Dataset::new(images, labels).unwrap();
    let norm = Normalization::new(vec![0.0], vec![1.0 / 255.0]).unwrap();
    let batches: Vec<_> = data
        .batches(2, &norm)
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(batches.len(), 3);
    assert_eq!(batches[2].start, 4);
    assert_eq!(batches[1].labels, [2, 3]);
    let firsts: Vec<f32> = batches.iter().map(|b| b.images[[0, 0, 0, 0]]).collect();
    assert_eq!(firsts, [1.0, 3.0, 5.0]);
    assert!(data.batches(0, &norm).is_err());
    assert_eq!(data.images().first(2).unwrap().len(), 2);
    assert!(matches!(data.images().first(6), Err(Error::Data(_))));
}

#[test]
fn label_count_must_match_image_count() {
    let images = IdxImages::from_bytes(&idx(&[3, 1, 1], &[1, 2, 3])).unwrap();
    let labels = IdxLabels::from_bytes(&idx(&[2], &[0, 1])).unwrap();
    let err = Dataset::new(images, labels).unwrap_err();
    assert!(matches!(err, Error::Data(_)));
    assert_eq!(err.to_string(), "data mismatch: 3 images but 2 labels");
}

#[test]
fn corrupt_files_are_idx_errors_naming_the_file() {
    let good = idx(&[2, 2, 2], &[0; 8]);
    let mut float = good.clone();
    float[2] = 0x0d;
    let mut rank = good.clone();
    rank[3] = 2;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated-data",
            good[..good.len() - 1].to_vec(),
            "truncated",
        ),
        ("truncated-header", good[..6].to_vec(), "truncated header"),
        (
            "too-long",
            [good.as_slice(), &[1]].concat(),
            "the file has 9",
        ),
        ("bad-magic", b"\x89PNG\r\n\x1a\n".to_vec(), "magic"),
        ("float-dtype", float, "dtype 0x0d"),
        ("wrong-rank", rank, "rank 2"),
        ("corrupt-gzip", gz(&good)[..20].to_vec(), "gzip"),
        ("empty", vec![], "magic"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes, needle) in cases {
        let err = IdxImages::read(write(&dir, name, &bytes)).unwrap_err();
        assert!(matches!(err, Error::Idx { .. }), "{name}: {err}");
        let text = err.to_string();
        assert!(
            text.contains(name) && text.contains(needle),
            "{name}: {text}"
        );
    }
    let err = IdxLabels::from_bytes(&idx(&[2, 1, 1], &[0, 0])).unwrap_err();
    assert!(err.to_string().contains("rank 3"), "{err}");
    assert!(matches!(
        IdxImages::read(dir.path().join("absent")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn normalisation_rejects_bad_values() {
    assert!(Normalization::new(vec![], vec![]).is_err());
    assert!(Normalization::new(vec![0.5], vec![0.0]).is_err());
    assert!(Normalization::new(vec![f32::NAN], vec![1.0]).is_err());
    assert!(Normalization::new(vec![0.5], vec![-1.0]).is_err());
    assert!(Normalization::new(vec![0.5, 0.5], vec![1.0]).is_err());
}

/// The protocol's typed sources open IDX test and calibration sets, and name the
/// source as the caller does in their errors.
#[test]
fn protocol_sources_open_idx_files_and_name_the_source_in_errors() {
    use reflow::io::EvalTransform;
    use reflow::protocol::{Images, Labels};
    let dir = tempfile::tempdir().unwrap();
    let (images, labels, bad) = (
        dir.path().join("x.idx"),
        dir.path().join("y.idx"),
        dir.path().join("y5.idx"),
    );
    common::write_idx(&images, &[6, 4, 4], &[7u8; 6 * 16], false);
    common::write_idx(&labels, &[6], &[0, 1, 2, 0, 1, 2], false);
    common::write_idx(&bad, &[5], &[0, 1, 2, 0, 1], false);
    let source = Images::Idx(images.clone());
    let names = ("--test-images", "--test-labels");
    let test = source
        .open_test(
            Some(&Labels::Idx(labels)),
            1,
            3,
            EvalTransform::default(),
            names,
        )
        .unwrap();
    assert_eq!(test.images.len(), 6);
    assert_eq!(test.labels.as_ref().map(|l| l.as_slice().len()), Some(6));
    let unlabelled = source
        .open_test(None, 1, 3, EvalTransform::default(), names)
        .unwrap();
    assert!(unlabelled.labels.is_none());
    let calib = source
        .open_calibration(1, EvalTransform::default(), "--calib-images")
        .unwrap();
    assert_eq!(calib.image_dims(), [1, 4, 4]);
    // Checked against the network: its channels, its classes.
    let Err(e) = source.open_test(None, 3, 3, EvalTransform::default(), names) else {
        panic!("1-channel images for a 3-channel network");
    };
    assert!(
        e.to_string()
            .starts_with("invalid --test-images: 1-channel images; the model takes 3"),
        "{e}"
    );
    let labels_of = Labels::Idx(dir.path().join("y.idx"));
    let Err(e) = source.open_test(Some(&labels_of), 1, 2, EvalTransform::default(), names) else {
        panic!("label 2 for a network of 2 classes");
    };
    assert!(
        e.to_string()
            .starts_with("invalid --test-labels: label 2 of sample 2, but the model has 2 classes"),
        "{e}"
    );
    // Six images, five labels: the counts must agree.
    let e = source
        .open_test(
            Some(&Labels::Idx(bad)),
            1,
            3,
            EvalTransform::default(),
            names,
        )
        .unwrap_err();
    assert!(
        e.to_string().contains('6') && e.to_string().contains('5'),
        "{e}"
    );
    // A folder that is not one is named as the caller names it.
    #[cfg(feature = "image")]
    {
        let Err(e) =
            Images::Folder(images).open_calibration(1, EvalTransform::default(), "--calib-dir")
        else {
            panic!("a file is no folder");
        };
        assert!(e.to_string().starts_with("invalid --calib-dir: "), "{e}");
    }
}

/// A build without the `npy` feature names the feature, and the source as the caller
/// names it (the `reflow` command always has the feature).
#[test]
#[cfg(not(feature = "npy"))]
fn a_build_without_npy_names_the_feature() {
    use reflow::io::EvalTransform;
    use reflow::protocol::Images;
    let Err(e) = Images::Npy("calib.npy".into()).open_calibration(
        1,
        EvalTransform::default(),
        "--calib-npy",
    ) else {
        panic!("a build without npy reads no .npy file");
    };
    assert!(
        e.to_string().contains(
            "invalid --calib-npy: this build reads no .npy files: build with --features npy"
        ),
        "{e}"
    );
}
