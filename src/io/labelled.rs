//! Labelled batches: what an accuracy is measured on.

use super::{Dataset, LabelledData, Normalization};
use crate::data::Tensor4;
use crate::error::{Error, Result};

/// A [`Dataset`] in file order, normalised, `batch_size` samples at a time: see
/// [`Dataset::labelled`].
#[derive(Debug, Clone, Copy)]
pub struct LabelledBatches<'a, S = super::IdxImages> {
    data: &'a Dataset<S>,
    batch_size: usize,
    norm: &'a Normalization,
}

impl<S: super::ImageSource> Dataset<S> {
    /// The data set as [`LabelledData`], `batch_size` samples at a time, normalised by
    /// `norm`. The batch size and the normalisation's channel count are checked here,
    /// before any batch is made.
    ///
    /// ```
    /// use reflow::prelude::*;
    ///
    /// let data = Dataset::new(
    ///     IdxImages::from_pixels([3, 1, 2, 2], vec![0; 12])?,
    ///     IdxLabels::from_vec(vec![0, 1, 0]),
    /// )?;
    /// assert!(data.labelled(0, &Normalization::fashion_mnist()).is_err());
    /// let batches = data.labelled(2, &Normalization::fashion_mnist())?;
    /// # Ok::<(), reflow::Error>(())
    /// ```
    pub fn labelled<'a>(
        &'a self,
        batch_size: usize,
        norm: &'a Normalization,
    ) -> Result<LabelledBatches<'a, S>> {
        if batch_size == 0 {
            return Err(Error::zero("batch size"));
        }
        norm.check_source(self.images())?;
        Ok(LabelledBatches {
            data: self,
            batch_size,
            norm,
        })
    }
}

impl<S: super::ImageSource> LabelledData<Tensor4> for LabelledBatches<'_, S> {
    fn try_for_each_labelled(
        &self,
        f: &mut dyn FnMut(&Tensor4, &[usize]) -> Result<()>,
    ) -> Result<()> {
        for batch in self.data.batches(self.batch_size, self.norm)? {
            let batch = batch?;
            let labels: Vec<usize> = batch.labels.iter().map(|&l| l as usize).collect();
            f(&batch.images, &labels)?;
        }
        Ok(())
    }
}
