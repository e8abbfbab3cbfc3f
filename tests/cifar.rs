//! CIFAR-10 and CIFAR-100 binary files: records read in order, and a named error for
//! every kind of bad folder or file.

use reflow::io::{read_cifar, CifarKind, CifarSplit, Normalization};
use std::path::Path;

/// `n` records with labels `label(i)`; pixel `p` of record `i` is `(i + p) % 251`.
fn records(n: usize, label_bytes: usize, label: impl Fn(usize) -> u8) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        out.extend(std::iter::repeat_n(label(i) / 5, label_bytes - 1)); // coarse label
        out.push(label(i));
        out.extend((0..3072).map(|p| ((i + p) % 251) as u8));
    }
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

#[test]
fn cifar10_batches_read_in_order_as_rgb_planes() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "data_batch_1.bin", &records(3, 1, |i| i as u8));
    write(
        dir.path(),
        "data_batch_2.bin",
        &records(2, 1, |i| 9 - i as u8),
    );
    write(
        dir.path(),
        "test_batch.bin",
        &records(4, 1, |i| (i % 10) as u8),
    );
    let (kind, train) = read_cifar(dir.path(), CifarSplit::Train).unwrap();
    assert_eq!(kind, CifarKind::Cifar10);
    assert_eq!(train.images().dims(), [5, 3, 32, 32]);
    assert_eq!(train.labels().as_slice(), &[0, 1, 2, 9, 8]);
    let (_, test) = read_cifar(dir.path(), CifarSplit::Test).unwrap();
    assert_eq!(test.len(), 4);
    // Record 1 of the first file: red plane first, row by row.
    let norm = Normalization::new(vec![0.0; 3], vec![1.0; 3]).unwrap();
    let x = train.images().to_tensor(1..2, &norm).unwrap();
    assert_eq!(x[[0, 0, 0, 1]], 2.0 / 255.0);
    assert_eq!(x[[0, 1, 0, 0]], ((1 + 1024) % 251) as f32 / 255.0);
    assert_eq!(x[[0, 2, 31, 31]], ((1 + 3071) % 251) as f32 / 255.0);
}

#[test]
fn cifar100_uses_the_fine_labels() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "train.bin", &records(3, 2, |i| 97 + i as u8));
    write(dir.path(), "test.bin", &records(1, 2, |_| 42));
    let (kind, train) = read_cifar(dir.path(), CifarSplit::Train).unwrap();
    assert_eq!((kind, kind.classes()), (CifarKind::Cifar100, 100));
    assert_eq!(train.labels().as_slice(), &[97, 98, 99]);
    let (_, test) = read_cifar(dir.path(), CifarSplit::Test).unwrap();
    assert_eq!(test.labels().as_slice(), &[42]);
}

#[test]
fn bad_folders_and_files_are_named() {
    let err = |dir: &Path, split| read_cifar(dir, split).unwrap_err().to_string();
    let empty = tempfile::tempdir().unwrap();
    assert!(err(empty.path(), CifarSplit::Test).contains("no CIFAR binary files"));

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "test_batch.bin", &records(2, 1, |_| 3)[..6000]);
    let e = err(dir.path(), CifarSplit::Test);
    assert!(
        e.contains("test_batch.bin: 6000 bytes is not a whole number of 3073-byte"),
        "{e}"
    );
    let e = err(dir.path(), CifarSplit::Train);
    assert!(e.contains("no data_batch_1.bin"), "{e}");

    write(
        dir.path(),
        "test_batch.bin",
        &records(2, 1, |i| 9 + i as u8),
    );
    let e = err(dir.path(), CifarSplit::Test);
    assert!(
        e.contains("test_batch.bin: record 1: label 10, but Cifar10 has 10 classes"),
        "{e}"
    );

    write(dir.path(), "test_batch.bin", &[]);
    assert!(err(dir.path(), CifarSplit::Test).contains("test_batch.bin: empty"));

    write(dir.path(), "data_batch_1.bin", &records(1, 1, |_| 0));
    write(dir.path(), "data_batch_3.bin", &records(1, 1, |_| 0));
    let e = err(dir.path(), CifarSplit::Train);
    assert!(
        e.contains("data_batch_3.bin is there but data_batch_2.bin is missing"),
        "{e}"
    );

    // 3,073 CIFAR-100 records have the size of 3,074 CIFAR-10 ones: the labels tell.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "test_batch.bin", &records(3073, 2, |_| 1));
    let e = err(dir.path(), CifarSplit::Test);
    assert!(e.contains("test_batch.bin: record 1: label"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "test.bin", &records(2, 1, |_| 1));
    let e = err(dir.path(), CifarSplit::Test);
    assert!(
        e.contains("not a whole number of 3074-byte Cifar100 records"),
        "{e}"
    );
    // A folder in place of a file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("test.bin")).unwrap();
    assert!(err(dir.path(), CifarSplit::Test).contains("a directory"));
}
