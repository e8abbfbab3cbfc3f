//! Per-channel normalisation of 8-bit pixels.

use super::ImageSource;
use crate::error::{Error, Result};

/// The smallest standard deviation a [`Normalization`] accepts.
pub const MIN_STD: f32 = 1e-12;

/// Per-channel normalisation `x = (p / 255 − mean_c) / std_c`.
///
/// ```
/// use reflow::io::Normalization;
/// let norm = Normalization::new(vec![0.2860], vec![0.3530])?;
/// assert!(Normalization::new(vec![0.5, 0.5], vec![0.2]).is_err());
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Normalization {
    /// One mean and one standard deviation per channel; every value finite, every
    /// standard deviation positive.
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Result<Self> {
        if mean.is_empty() || mean.len() != std.len() {
            return Err(Error::invalid(
                "mean/std",
                format!(
                    "{} means and {} standard deviations; need one of each per channel",
                    mean.len(),
                    std.len()
                ),
            ));
        }
        if mean.iter().any(|m| !m.is_finite()) {
            return Err(Error::invalid("mean", format!("{mean:?} is not finite")));
        }
        if std.iter().any(|s| !(s.is_finite() && *s > MIN_STD)) {
            return Err(Error::invalid(
                "std",
                format!("{std:?} must be finite and above {MIN_STD:e} (dividing by less turns pixels into infinities)"),
            ));
        }
        Ok(Normalization { mean, std })
    }

    /// Fashion-MNIST's training-set statistics: mean 0.2860, std 0.3530.
    pub fn fashion_mnist() -> Self {
        Normalization {
            mean: vec![0.2860],
            std: vec![0.3530],
        }
    }

    /// ImageNet's statistics, as torchvision's models are trained with: mean
    /// 0.485/0.456/0.406, std 0.229/0.224/0.225 (RGB).
    pub fn imagenet() -> Self {
        Normalization {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }

    /// MNIST's training-set statistics: mean 0.1307, std 0.3081.
    pub fn mnist() -> Self {
        Normalization {
            mean: vec![0.1307],
            std: vec![0.3081],
        }
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// The mean of each channel.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// The standard deviation of each channel.
    pub fn std(&self) -> &[f32] {
        &self.std
    }

    /// One value per channel of `source`'s images, unless they are normalised already.
    pub(crate) fn check_source(&self, source: &dyn ImageSource) -> Result<()> {
        match source.is_normalized() {
            true => Ok(()),
            false => self.check_channels(source.image_dims()[0]),
        }
    }

    /// `out[i] = (bytes[i] / 255 − mean_c) / std_c` for channel-major images of
    /// `plane` values per channel (torchvision's `ToTensor` + `Normalize`, in f32).
    pub(crate) fn normalize_into(&self, bytes: &[u8], plane: usize, out: &mut [f32]) {
        let c = self.channels();
        let planes = bytes
            .chunks_exact(plane.max(1))
            .zip(out.chunks_exact_mut(plane.max(1)));
        for (i, (from, to)) in planes.enumerate() {
            let (mean, std) = (self.mean[i % c], self.std[i % c]);
            // p/255 first, then (x − m)/s: torchvision's order.
            for (t, &p) in to.iter_mut().zip(from) {
                *t = (p as f32 / 255.0 - mean) / std;
            }
        }
    }

    pub(crate) fn check_channels(&self, channels: usize) -> Result<()> {
        if channels != self.channels() {
            return Err(Error::invalid(
                "mean/std",
                format!(
                    "{} values given for images with {channels} channels",
                    self.channels()
                ),
            ));
        }
        Ok(())
    }
}
