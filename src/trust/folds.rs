//! Calibration data divided into disjoint folds of whole images, for cross-fitting.

use crate::data::Tensor4;
use crate::data::{check_fold, CalibrationData, ImageBatches};
use crate::error::{Error, Result};
use ndarray::{concatenate, Axis};

/// Calibration data that can be divided into disjoint folds of whole images.
///
/// Fold `k` of `f` holds the images at positions `k`, `k + f`, `k + 2f`, … of the
/// data in batch order (interleaved, so that data sorted by class gives every fold
/// every class), in batches of the data's batch size. Implemented for
/// [`ImageBatches`] and for batches in memory.
///
/// ```
/// use reflow::nn::Tensor4;
/// use reflow::rescale::CalibrationData;
/// use reflow::trust::Split;
///
/// let batches = vec![Tensor4::zeros((4, 1, 2, 2)), Tensor4::zeros((3, 1, 2, 2))];
/// assert_eq!(batches.images(), 7);
/// let odd = batches.fold(1, 2)?; // positions 1, 3, 5 in one batch of 4
/// assert_eq!(odd.num_batches(), 1);
/// # Ok::<(), reflow::Error>(())
/// ```
pub trait Split: CalibrationData<Tensor4> {
    /// Number of images.
    fn images(&self) -> usize;

    /// Fold `fold` of `folds`. Fails when `fold >= folds` or the fold holds no image.
    fn fold(&self, fold: usize, folds: usize) -> Result<Box<dyn CalibrationData<Tensor4> + '_>>;
}

impl Split for ImageBatches<'_> {
    fn images(&self) -> usize {
        self.len()
    }

    fn fold(&self, fold: usize, folds: usize) -> Result<Box<dyn CalibrationData<Tensor4> + '_>> {
        Ok(Box::new(ImageBatches::fold(self, fold, folds)?))
    }
}

impl Split for [Tensor4] {
    fn images(&self) -> usize {
        self.iter().map(|b| b.shape()[0]).sum()
    }

    fn fold(&self, fold: usize, folds: usize) -> Result<Box<dyn CalibrationData<Tensor4> + '_>> {
        check_fold(fold, folds, self.images())?;
        let batch_size = self.iter().map(|b| b.shape()[0]).max().unwrap_or(1);
        let mut picked = Vec::new();
        let mut position = 0;
        for batch in self {
            for n in 0..batch.shape()[0] {
                if (position + n) % folds == fold {
                    picked.push(batch.index_axis(Axis(0), n).insert_axis(Axis(0)));
                }
            }
            position += batch.shape()[0];
        }
        let batches = picked
            .chunks(batch_size)
            .map(|images| {
                concatenate(Axis(0), images)
                    .map_err(|e| Error::Data(format!("calibration fold: {e}")))
            })
            .collect::<Result<Vec<Tensor4>>>()?;
        Ok(Box::new(batches))
    }
}

impl Split for Vec<Tensor4> {
    fn images(&self) -> usize {
        self.as_slice().images()
    }

    fn fold(&self, fold: usize, folds: usize) -> Result<Box<dyn CalibrationData<Tensor4> + '_>> {
        self.as_slice().fold(fold, folds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_of_batches_in_memory_interleave_and_keep_the_batch_size() {
        let batches: Vec<Tensor4> = [4usize, 3]
            .iter()
            .scan(0.0f32, |next, &n| {
                let b = Tensor4::from_shape_fn((n, 1, 1, 1), |(i, ..)| *next + i as f32);
                *next += n as f32;
                Some(b)
            })
            .collect();
        let seen = |data: &dyn CalibrationData<Tensor4>| {
            let mut values = Vec::new();
            let mut sizes = Vec::new();
            data.try_for_each_batch(&mut |x| {
                sizes.push(x.shape()[0]);
                values.extend(x.iter().copied());
                Ok(())
            })
            .unwrap();
            (values, sizes)
        };
        assert_eq!(
            seen(&*batches.fold(0, 2).unwrap()),
            (vec![0.0, 2.0, 4.0, 6.0], vec![4])
        );
        assert_eq!(
            seen(&*batches.fold(1, 2).unwrap()),
            (vec![1.0, 3.0, 5.0], vec![3])
        );
        assert_eq!(
            seen(&*batches.fold(2, 3).unwrap()),
            (vec![2.0, 5.0], vec![2])
        );
        assert!(batches.fold(2, 2).is_err());
        assert!(vec![Tensor4::zeros((1, 1, 1, 1))].fold(1, 2).is_err());
    }
}
