//! The binary version of CIFAR-10 and CIFAR-100.
//!
//! A CIFAR-10 file (`data_batch_1.bin` … `data_batch_5.bin`, `test_batch.bin`) is a run
//! of 3,073-byte records: the label (0–9), then a 32 × 32 image as 1,024 red, 1,024
//! green and 1,024 blue bytes, each plane row by row. A CIFAR-100 file (`train.bin`,
//! `test.bin`) has 3,074-byte records: the coarse label (0–19), the fine label (0–99),
//! then the image; the fine label is the one used.

use super::{Dataset, IdxImages, IdxLabels};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The pixels of one image.
const IMAGE: usize = 3 * 32 * 32;

/// Which part of a CIFAR data set to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CifarSplit {
    /// The training images: CIFAR-10's `data_batch_*.bin` in order, CIFAR-100's
    /// `train.bin`.
    Train,
    /// The test images: `test_batch.bin` or `test.bin`.
    Test,
}

/// CIFAR-10 or CIFAR-100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CifarKind {
    /// 10 classes, one label byte per record.
    Cifar10,
    /// 100 classes (fine labels), two label bytes per record.
    Cifar100,
}

impl CifarKind {
    /// Label bytes before each image.
    fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100 => 2,
        }
    }

    /// Number of classes.
    pub fn classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }

    /// The files of `split` in `dir`.
    fn files(self, dir: &Path, split: CifarSplit) -> Vec<PathBuf> {
        match (self, split) {
            (CifarKind::Cifar10, CifarSplit::Train) => (1..=5)
                .map(|i| dir.join(format!("data_batch_{i}.bin")))
                .take_while(|p| p.exists())
                .collect(),
            (CifarKind::Cifar10, CifarSplit::Test) => vec![dir.join("test_batch.bin")],
            (CifarKind::Cifar100, CifarSplit::Train) => vec![dir.join("train.bin")],
            (CifarKind::Cifar100, CifarSplit::Test) => vec![dir.join("test.bin")],
        }
    }
}

/// Reads `split` of the CIFAR-10 or CIFAR-100 binary files in `dir` (the folder that
/// holds the `.bin` files: `cifar-10-batches-bin`, `cifar-100-binary`) as a
/// [`Dataset`] of `[N, 3, 32, 32]` images. Which of the two it is follows from the
/// files present.
///
/// Errors name the folder or the file: no CIFAR files, a file that is not a whole
/// number of records (truncated), an empty file, a label past the last class.
///
/// ```no_run
/// use reflow::io::{read_cifar, CifarKind, CifarSplit};
///
/// let (kind, test) = read_cifar("cifar-10-batches-bin", CifarSplit::Test)?;
/// assert_eq!((kind, test.len()), (CifarKind::Cifar10, 10_000));
/// # Ok::<(), reflow::Error>(())
/// ```
pub fn read_cifar(dir: impl AsRef<Path>, split: CifarSplit) -> Result<(CifarKind, Dataset)> {
    let dir = dir.as_ref();
    let kind = if dir.join("test_batch.bin").exists() || dir.join("data_batch_1.bin").exists() {
        CifarKind::Cifar10
    } else if dir.join("test.bin").exists() || dir.join("train.bin").exists() {
        CifarKind::Cifar100
    } else {
        return Err(Error::Data(format!(
            "{}: no CIFAR binary files (CIFAR-10: data_batch_1.bin … data_batch_5.bin and test_batch.bin; CIFAR-100: train.bin and test.bin)",
            dir.display()
        )));
    };
    let files = kind.files(dir, split);
    if kind == CifarKind::Cifar10 && split == CifarSplit::Train {
        let gap = (files.len() + 2..=5).find(|i| dir.join(format!("data_batch_{i}.bin")).exists());
        if let Some(i) = gap {
            return Err(Error::Data(format!(
                "{}: data_batch_{i}.bin is there but data_batch_{}.bin is missing",
                dir.display(),
                files.len() + 1
            )));
        }
    }
    if files.is_empty() {
        return Err(Error::Data(format!(
            "{}: no data_batch_1.bin for the CIFAR-10 training split",
            dir.display()
        )));
    }
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for file in &files {
        read_file(file, kind, &mut pixels, &mut labels)?;
    }
    let n = labels.len();
    let images = IdxImages::from_pixels([n, 3, 32, 32], pixels)?;
    Ok((kind, Dataset::new(images, IdxLabels::from_vec(labels))?))
}

/// Appends the records of one file.
fn read_file(
    path: &Path,
    kind: CifarKind,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> Result<()> {
    let bytes = super::file::read_regular(path)?;
    let record = kind.label_bytes() + IMAGE;
    let bad = |reason: String| Error::Data(format!("{}: {reason}", path.display()));
    if bytes.is_empty() {
        return Err(bad("empty: no images".into()));
    }
    if bytes.len() % record != 0 {
        return Err(bad(format!(
            "{} bytes is not a whole number of {record}-byte {kind:?} records (truncated, or the other CIFAR?)",
            bytes.len()
        )));
    }
    pixels.reserve(bytes.len() / record * IMAGE);
    for (i, r) in bytes.chunks_exact(record).enumerate() {
        let label = r[kind.label_bytes() - 1];
        if usize::from(label) >= kind.classes() {
            return Err(bad(format!(
                "record {i}: label {label}, but {kind:?} has {} classes",
                kind.classes()
            )));
        }
        labels.push(u32::from(label));
        pixels.extend_from_slice(&r[kind.label_bytes()..]);
    }
    Ok(())
}
