//! The IDX format of MNIST and Fashion-MNIST, raw or gzip-compressed.
//!
//! An IDX file is a 4-byte magic (`0, 0, dtype, rank`), `rank` big-endian `u32`
//! dimensions, then the row-major data. Only unsigned-byte data (`dtype = 0x08`) is
//! used by image data sets, and only it is accepted here.

use crate::data::Tensor4;
use crate::data::{ImageSource, Normalization};
use crate::error::{Error, Result};
use ndarray::Array4;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const UBYTE: u8 = 0x08;

/// Reads a file, decompressing it when it starts with the gzip magic. The stream is
/// inflated as it is read: first the IDX header, checked, then no more than the data
/// it declares (and one byte, to notice a longer stream), so that a stream that
/// inflates to far more than its header says is never held in memory.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = super::file::read_regular(path)?;
    if !raw.starts_with(&GZIP_MAGIC) {
        return Ok(raw);
    }
    let corrupt = |e: std::io::Error| idx_error(path, format!("corrupt gzip stream: {e}"));
    let mut stream = flate2::read::MultiGzDecoder::new(raw.as_slice());
    let mut out = Vec::new();
    // The magic and the rank, then the dimensions.
    (&mut stream)
        .take(4)
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    if out.len() < 4 || out[0] != 0 || out[1] != 0 {
        return Ok(out); // `parse` names the problem.
    }
    let rank = usize::from(out[3]);
    (&mut stream)
        .take(4 * rank as u64)
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    let declared = out[4..]
        .chunks_exact(4)
        .map(|c| u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
        .try_fold(1u64, |acc, d| acc.checked_mul(d));
    let Some(declared) = declared else {
        return Ok(out); // `parse` reports the overflow.
    };
    stream
        .take(declared.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    Ok(out)
}

fn idx_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Idx {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Splits an IDX buffer into its dimensions and its data, checking the magic, the
/// dtype, the rank and that the data is exactly as long as the dimensions say.
fn parse(bytes: &[u8], path: &Path, ranks: &[usize]) -> Result<(Vec<usize>, Vec<u8>)> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(idx_error(
            path,
            "missing IDX magic (expected 00 00 <dtype> <rank>)",
        ));
    }
    if bytes[2] != UBYTE {
        return Err(idx_error(
            path,
            format!("dtype 0x{:02x} is not unsigned byte (0x08)", bytes[2]),
        ));
    }
    let rank = bytes[3] as usize;
    if !ranks.contains(&rank) {
        return Err(idx_error(
            path,
            format!("rank {rank}, expected one of {ranks:?}"),
        ));
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(idx_error(path, "truncated header"));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let len = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| idx_error(path, format!("dimensions {dims:?} overflow")))?;
    let data = &bytes[header..];
    if data.len() != len {
        return Err(idx_error(
            path,
            format!(
                "dimensions {dims:?} need {len} data bytes, the file has {}{}",
                data.len(),
                if data.len() < len { " (truncated)" } else { "" }
            ),
        ));
    }
    Ok((dims, data.to_vec()))
}

/// Images stored as unsigned bytes, `[N, H, W]` (one channel) or `[N, C, H, W]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// `[N, C, H, W]`.
    dims: [usize; 4],
    pixels: Vec<u8>,
}

impl IdxImages {
    /// Reads an IDX image file (`.gz` or raw).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::parse(&read_maybe_gz(path)?, path)
    }

    /// Parses an uncompressed IDX image buffer.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::parse(bytes, &PathBuf::from("<memory>"))
    }

    fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let (d, pixels) = parse(bytes, path, &[3, 4])?;
        let dims = match *d.as_slice() {
            [n, h, w] => [n, 1, h, w],
            [n, c, h, w] => [n, c, h, w],
            _ => return Err(idx_error(path, format!("dimensions {d:?} are not images"))),
        };
        if dims[1..].contains(&0) {
            return Err(idx_error(path, format!("empty image dimensions {d:?}")));
        }
        Ok(IdxImages { dims, pixels })
    }

    /// Wraps raw pixels `[N, C, H, W]`.
    pub fn from_pixels(dims: [usize; 4], pixels: Vec<u8>) -> Result<Self> {
        if super::numel(&dims) != Some(pixels.len()) {
            return Err(Error::invalid(
                "pixels",
                format!("{} bytes for dimensions {dims:?}", pixels.len()),
            ));
        }
        Ok(IdxImages { dims, pixels })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.dims[0]
    }

    /// True when there is no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[N, C, H, W]`.
    pub fn dims(&self) -> [usize; 4] {
        self.dims
    }

    /// Channels per image.
    pub fn channels(&self) -> usize {
        self.dims[1]
    }

    fn image_len(&self) -> usize {
        self.dims[1] * self.dims[2] * self.dims[3]
    }

    /// The first `n` images; an error when there are fewer.
    pub fn first(&self, n: usize) -> Result<IdxImages> {
        if n > self.len() {
            return Err(Error::Data(format!(
                "asked for {n} images, the file has {}",
                self.len()
            )));
        }
        let mut dims = self.dims;
        dims[0] = n;
        Ok(IdxImages {
            dims,
            pixels: self.pixels[..n * self.image_len()].to_vec(),
        })
    }

    /// Images `range` as a normalised NCHW tensor: `(p / 255 − mean_c) / std_c`.
    pub fn to_tensor(&self, range: Range<usize>, norm: &Normalization) -> Result<Tensor4> {
        if range.start > range.end || range.end > self.len() {
            return Err(Error::invalid(
                "range",
                format!("{range:?} outside the {} images", self.len()),
            ));
        }
        norm.check_channels(self.channels())?;
        let [_, c, h, w] = self.dims;
        let plane = h * w;
        let bytes = &self.pixels[range.start * self.image_len()..range.end * self.image_len()];
        let mut data = vec![0.0; bytes.len()];
        norm.normalize_into(bytes, plane, &mut data);
        Ok(Array4::from_shape_vec((range.len(), c, h, w), data).expect("sizes checked"))
    }
}

/// Class labels, `[N]`: read from an IDX file (unsigned bytes), or any others
/// ([`IdxLabels::from_vec`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxLabels {
    labels: Vec<u32>,
}

impl IdxLabels {
    /// Reads an IDX label file (`.gz` or raw).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::parse(&read_maybe_gz(path)?, path)
    }

    /// Parses an uncompressed IDX label buffer.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::parse(bytes, &PathBuf::from("<memory>"))
    }

    fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let (_, labels) = parse(bytes, path, &[1])?;
        Ok(IdxLabels {
            labels: labels.into_iter().map(u32::from).collect(),
        })
    }

    /// Wraps labels.
    pub fn from_vec(labels: Vec<u32>) -> Self {
        IdxLabels { labels }
    }

    /// The labels.
    pub fn as_slice(&self) -> &[u32] {
        &self.labels
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there is no label.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Images from any [`ImageSource`] (IDX images unless said otherwise) with their
/// labels, equal in number.
///
/// ```no_run
/// use reflow::io::{Dataset, IdxImages, IdxLabels, Normalization};
///
/// let test = Dataset::new(
///     IdxImages::read("t10k-images-idx3-ubyte.gz")?,
///     IdxLabels::read("t10k-labels-idx1-ubyte.gz")?,
/// )?;
/// for batch in test.batches(256, &Normalization::fashion_mnist())? {
///     let batch = batch?;
///     println!("{} images from {}", batch.labels.len(), batch.start);
/// }
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset<S = IdxImages> {
    images: S,
    labels: IdxLabels,
}

/// A batch of a [`Dataset`]: normalised images and their labels.
#[derive(Debug, Clone)]
pub struct Batch<'a> {
    /// Index of the first image in the data set.
    pub start: usize,
    /// `[B, C, H, W]`, normalised.
    pub images: Tensor4,
    /// `[B]`.
    pub labels: &'a [u32],
}

impl<S: ImageSource> Dataset<S> {
    /// Pairs images and labels; an [`Error::Data`] when their counts differ.
    pub fn new(images: S, labels: IdxLabels) -> Result<Self> {
        if images.len() != labels.len() {
            return Err(Error::Data(format!(
                "{} images but {} labels",
                images.len(),
                labels.len()
            )));
        }
        Ok(Dataset { images, labels })
    }

    /// The images.
    pub fn images(&self) -> &S {
        &self.images
    }

    /// The labels.
    pub fn labels(&self) -> &IdxLabels {
        &self.labels
    }

    /// The images and the labels, taken apart.
    pub fn into_parts(self) -> (S, IdxLabels) {
        (self.images, self.labels)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// True when there is no sample.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// The data set in order, `batch_size` samples at a time (the last batch may be
    /// smaller). Checks the batch size and the normalisation's channel count once, up
    /// front.
    pub fn batches<'a>(
        &'a self,
        batch_size: usize,
        norm: &'a Normalization,
    ) -> Result<impl Iterator<Item = Result<Batch<'a>>> + 'a> {
        if batch_size == 0 {
            return Err(Error::zero("batch size"));
        }
        norm.check_source(&self.images)?;
        Ok((0..self.len()).step_by(batch_size).map(move |start| {
            let end = (start + batch_size).min(self.len());
            let indices: Vec<usize> = (start..end).collect();
            Ok(Batch {
                start,
                images: self.images.tensor(&indices, norm)?,
                labels: &self.labels.as_slice()[start..end],
            })
        }))
    }
}
