//! NumPy `.npy` images and labels (feature `npy`): both dtypes read as the network
//! sees them, and a named error for each kind of bad array.
#![cfg(feature = "npy")]

use ndarray::{Array, ArrayD, IxDyn};
use ndarray_npy::write_npy;
use reflow::io::{read_npy_labels, Dataset, ImageSource, Normalization, NpyImages};
use std::path::PathBuf;

fn npy<T: ndarray_npy::WritableElement>(
    dir: &tempfile::TempDir,
    name: &str,
    shape: &[usize],
    values: Vec<T>,
) -> PathBuf {
    let path = dir.path().join(name);
    let a: ArrayD<T> = Array::from_shape_vec(IxDyn(shape), values).unwrap();
    write_npy(&path, &a).unwrap();
    path
}

#[test]
fn pixels_and_normalised_values_feed_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let norm = Normalization::new(vec![0.5], vec![0.25]).unwrap();
    // uint8 [N, H, W]: one channel, normalised like IDX pixels.
    let pixels = npy(
        &dir,
        "x.npy",
        &[3, 2, 2],
        (0..12u8).map(|v| v * 20).collect(),
    );
    let x = NpyImages::read(&pixels).unwrap();
    assert!(matches!(x, NpyImages::Pixels(_)));
    assert_eq!(
        (x.len(), x.image_dims(), x.is_normalized()),
        (3, [1, 2, 2], false)
    );
    let t = x.tensor(&[1], &norm).unwrap();
    assert!((t[[0, 0, 0, 0]] - (80.0 / 255.0 - 0.5) / 0.25).abs() < 1e-6);

    // float32 [N, C, H, W]: given as they are.
    let values: Vec<f32> = (0..24).map(|v| v as f32 * 0.5 - 3.0).collect();
    let floats = npy(&dir, "f.npy", &[2, 3, 2, 2], values.clone());
    let f = NpyImages::read(&floats).unwrap();
    assert!(f.is_normalized());
    let t = f.tensor(&[1, 0], &norm).unwrap();
    assert_eq!(&t.as_slice().unwrap()[..12], &values[12..]);

    // Labels of int64, int32 and uint8.
    let y = npy(&dir, "y.npy", &[3], vec![2i64, 0, 999]);
    assert_eq!(read_npy_labels(&y).unwrap().as_slice(), &[2, 0, 999]);
    let y32 = npy(&dir, "y32.npy", &[2], vec![7i32, 1]);
    assert_eq!(read_npy_labels(&y32).unwrap().as_slice(), &[7, 1]);
    let y8 = npy(&dir, "y8.npy", &[3], vec![1u8, 2, 3]);
    let data = Dataset::new(x, read_npy_labels(&y8).unwrap()).unwrap();
    assert_eq!(data.batches(2, &norm).unwrap().count(), 2);
}

#[test]
fn bad_arrays_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = |e: reflow::Error| e.to_string();
    let f64s = npy(&dir, "d.npy", &[1, 1, 2, 2], vec![0.0f64; 4]);
    let e = err(NpyImages::read(&f64s).unwrap_err());
    assert!(
        e.contains("d.npy: dtype '<f8': images must be uint8 pixels or float32"),
        "{e}"
    );
    let rank2 = npy(&dir, "r.npy", &[4, 4], vec![0u8; 16]);
    let e = err(NpyImages::read(&rank2).unwrap_err());
    assert!(
        e.contains("r.npy: uint8 images must be [N, H, W] or [N, C, H, W], not [4, 4]"),
        "{e}"
    );
    let rank3f = npy(&dir, "f3.npy", &[2, 2, 2], vec![0f32; 8]);
    let e = err(NpyImages::read(&rank3f).unwrap_err());
    assert!(e.contains("float32 images must be [N, C, H, W]"), "{e}");
    let nan = npy(
        &dir,
        "nan.npy",
        &[2, 1, 1, 2],
        vec![0.0, 1.0, f32::NAN, 2.0],
    );
    let e = err(NpyImages::read(&nan).unwrap_err());
    assert!(e.contains("nan.npy") && e.contains("NaN in image 1"), "{e}");
    let garbage = dir.path().join("g.npy");
    std::fs::write(&garbage, b"not numpy at all").unwrap();
    let e = err(NpyImages::read(&garbage).unwrap_err());
    assert!(e.contains("g.npy: not a valid .npy file"), "{e}");

    let neg = npy(&dir, "neg.npy", &[3], vec![1i64, -1, 2]);
    let e = err(read_npy_labels(&neg).unwrap_err());
    assert!(
        e.contains("neg.npy: label -1 of sample 1 is not a class index"),
        "{e}"
    );
    let fl = npy(&dir, "fl.npy", &[2], vec![1.0f32, 2.0]);
    let e = err(read_npy_labels(&fl).unwrap_err());
    assert!(e.contains("labels must be int64, int32 or uint8"), "{e}");
    let two = npy(&dir, "two.npy", &[2, 1], vec![1i64, 2]);
    assert!(err(read_npy_labels(&two).unwrap_err()).contains("labels must be [N], not [2, 1]"));
}
