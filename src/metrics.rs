//! Classification accuracy.

use crate::data::LabelledData;
use crate::data::Tensor2;
use crate::error::{Error, Result};
use crate::layer::Layer;
use serde::{Deserialize, Serialize};

/// Correct predictions out of a total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accuracy {
    /// Samples whose highest logit is the label's.
    pub correct: usize,
    /// Samples evaluated.
    pub total: usize,
}

impl Accuracy {
    /// `correct / total`; 0 for no samples.
    pub fn top1(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
}

/// The index of the largest value; the first on ties, and the first NaN if any (as
/// PyTorch's `argmax`).
pub fn argmax(row: impl IntoIterator<Item = f32>) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, v) in row.into_iter().enumerate() {
        if v.is_nan() {
            return i;
        }
        if v > best.1 || i == 0 {
            best = (i, v);
        }
    }
    best.0
}

/// Top-1 accuracy of a classifier on labelled batches: any [`LabelledData`], such as
/// a [`Dataset`](crate::io::Dataset) read in batches or batches in memory. A label
/// that names no class of the network is an error, not a wrong answer.
///
/// ```
/// use reflow::prelude::*;
/// use reflow::metrics::accuracy;
///
/// let net = ResNet::new(ResNetConfig::cifar_resnet(20)?.with_in_channels(1))?;
/// let data = Dataset::new(
///     IdxImages::from_pixels([4, 1, 8, 8], vec![128; 256])?,
///     IdxLabels::from_vec(vec![0, 1, 0, 3]),
/// )?;
/// // Zero weights give equal logits: class 0 everywhere.
/// let acc = accuracy(&net, &data.labelled(3, &Normalization::fashion_mnist())?)?;
/// assert_eq!((acc.correct, acc.total), (2, 4));
/// // Batches in memory work the same way.
/// let batch = data.images().to_tensor(0..2, &Normalization::fashion_mnist())?;
/// assert_eq!(accuracy(&net, &vec![(batch, vec![0, 0])])?.correct, 2);
/// # Ok::<(), reflow::Error>(())
/// ```
pub fn accuracy<L, D>(model: &L, data: &D) -> Result<Accuracy>
where
    L: Layer<Output = Tensor2> + ?Sized,
    D: LabelledData<L::Input> + ?Sized,
{
    let mut acc = Accuracy::default();
    data.try_for_each_labelled(&mut |x, labels| {
        let logits = model.forward(x)?;
        if logits.nrows() != labels.len() {
            return Err(Error::shape(
                "logits",
                format!("[{}, _]", labels.len()),
                logits.shape(),
            ));
        }
        let classes = logits.ncols();
        if let Some(i) = labels.iter().position(|&l| l >= classes) {
            return Err(Error::Data(format!(
                "label {} of sample {}, but the network has {classes} classes",
                labels[i],
                acc.total + i
            )));
        }
        for (row, &label) in logits.rows().into_iter().zip(labels) {
            acc.correct += (argmax(row.iter().copied()) == label) as usize;
        }
        acc.total += labels.len();
        Ok(())
    })?;
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn argmax_takes_the_first_maximum_and_nan() {
        assert_eq!(argmax([1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax([1.0, f32::NAN, 3.0]), 1);
        assert_eq!(argmax([f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax([-1.0]), 0);
    }
}
