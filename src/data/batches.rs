//! Calibration batches.

use super::{ImageSource, Normalization};
use crate::data::Tensor4;
use crate::error::{Error, Result};

/// A sequence of input batches that can be walked several times, in the same order
/// each time.
///
/// Implemented for slices and vectors of batches (kept in memory) and for
/// [`ImageBatches`] (made on the fly from an IDX file).
pub trait CalibrationData<I> {
    /// Number of batches.
    fn num_batches(&self) -> usize;

    /// Calls `f` with every batch in order, stopping at the first error.
    fn try_for_each_batch(&self, f: &mut dyn FnMut(&I) -> Result<()>) -> Result<()>;
}

impl<I> CalibrationData<I> for [I] {
    fn num_batches(&self) -> usize {
        self.len()
    }

    fn try_for_each_batch(&self, f: &mut dyn FnMut(&I) -> Result<()>) -> Result<()> {
        self.iter().try_for_each(f)
    }
}

impl<I> CalibrationData<I> for Vec<I> {
    fn num_batches(&self) -> usize {
        self.len()
    }

    fn try_for_each_batch(&self, f: &mut dyn FnMut(&I) -> Result<()>) -> Result<()> {
        self.iter().try_for_each(f)
    }
}

/// `count` images of any [`ImageSource`], normalised, in batches of `batch_size` (the
/// last may be smaller): the first `count` in order, or — with
/// [`ImageBatches::shuffled`] — `count` images drawn by a seeded shuffle of them all.
///
/// ```
/// use reflow::io::{IdxImages, Normalization};
/// use reflow::data::{CalibrationData, ImageBatches};
///
/// let images = IdxImages::from_pixels([10, 1, 2, 2], vec![0; 40])?;
/// let norm = Normalization::fashion_mnist();
/// let batches = ImageBatches::new(&images, 7, 3, &norm)?;
/// assert_eq!(batches.num_batches(), 3); // 3 + 3 + 1
/// assert!(ImageBatches::new(&images, 0, 3, &norm).is_err()); // empty calibration set
/// assert!(ImageBatches::new(&images, 11, 3, &norm).is_err()); // more than the file has
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Clone)]
pub struct ImageBatches<'a> {
    images: &'a dyn ImageSource,
    order: Vec<usize>,
    batch_size: usize,
    norm: &'a Normalization,
}

impl std::fmt::Debug for ImageBatches<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageBatches")
            .field("images", &self.order.len())
            .field("of", &self.images.len())
            .field("batch_size", &self.batch_size)
            .field("norm", self.norm)
            .finish()
    }
}

impl<'a> ImageBatches<'a> {
    /// The first `count` images of `images`, in batches of `batch_size`. Fails when
    /// `count` is 0 or more than the file holds, when `batch_size` is 0, or when the
    /// normalisation does not have one value per channel.
    pub fn new(
        images: &'a dyn ImageSource,
        count: usize,
        batch_size: usize,
        norm: &'a Normalization,
    ) -> Result<Self> {
        if count == 0 {
            return Err(Error::empty(
                "calibration count",
                "empty calibration set (0 images)",
            ));
        }
        if count > images.len() {
            return Err(Error::Data(format!(
                "{count} calibration images asked for, the source has {}",
                images.len()
            )));
        }
        if batch_size == 0 {
            return Err(Error::zero("calibration batch size"));
        }
        norm.check_source(images)?;
        Ok(ImageBatches {
            images,
            order: (0..count).collect(),
            batch_size,
            norm,
        })
    }

    /// Draws the `count` images by a seeded shuffle of the whole file instead of
    /// taking the first ones; the batches keep the shuffled order.
    pub fn shuffled(mut self, seed: u64) -> Self {
        let count = self.order.len();
        let mut all: Vec<usize> = (0..self.images.len()).collect();
        // Fisher–Yates with a xorshift64* generator: portable and reproducible.
        let mut state = seed ^ 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for i in (1..all.len()).rev() {
            let j = (next() % (i as u64 + 1)) as usize;
            all.swap(i, j);
        }
        all.truncate(count);
        self.order = all;
        self
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Always false: an empty calibration set is rejected at construction.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Images per batch (the last batch may have fewer).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The image indices, in batch order.
    pub fn indices(&self) -> &[usize] {
        &self.order
    }

    /// The images at positions `fold`, `fold + folds`, `fold + 2·folds`, … of this
    /// set (in batch order), in batches of the same size: `folds` such sets are
    /// disjoint and together hold every image. Fails when `fold >= folds` or the fold
    /// would hold no image.
    ///
    /// ```
    /// use reflow::io::{IdxImages, Normalization};
    /// use reflow::data::ImageBatches;
    ///
    /// let images = IdxImages::from_pixels([10, 1, 2, 2], vec![0; 40])?;
    /// let norm = Normalization::fashion_mnist();
    /// let all = ImageBatches::new(&images, 5, 4, &norm)?;
    /// assert_eq!(all.fold(0, 2)?.indices(), &[0, 2, 4]);
    /// assert_eq!(all.fold(1, 2)?.indices(), &[1, 3]);
    /// assert!(all.fold(2, 2).is_err());
    /// # Ok::<(), reflow::Error>(())
    /// ```
    pub fn fold(&self, fold: usize, folds: usize) -> Result<Self> {
        check_fold(fold, folds, self.order.len())?;
        Ok(ImageBatches {
            order: self
                .order
                .iter()
                .copied()
                .skip(fold)
                .step_by(folds)
                .collect(),
            ..self.clone()
        })
    }

    fn batch(&self, indices: &[usize]) -> Result<Tensor4> {
        self.images.tensor(indices, self.norm)
    }
}

/// Fails unless fold `fold` of `folds` over `images` images holds at least one.
pub(crate) fn check_fold(fold: usize, folds: usize, images: usize) -> Result<()> {
    if fold >= folds {
        return Err(Error::invalid(
            "calibration fold",
            format!("fold {fold} of {folds} (folds count from 0)"),
        ));
    }
    if fold >= images {
        return Err(Error::invalid(
            "calibration fold",
            format!("fold {fold} of {folds} would hold no image: the set has {images}"),
        ));
    }
    Ok(())
}

impl CalibrationData<Tensor4> for ImageBatches<'_> {
    fn num_batches(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }

    fn try_for_each_batch(&self, f: &mut dyn FnMut(&Tensor4) -> Result<()>) -> Result<()> {
        for chunk in self.order.chunks(self.batch_size) {
            f(&self.batch(chunk)?)?;
        }
        Ok(())
    }
}
