//! 2-d batch normalisation with eval and calibration (train-statistics) modes.

use super::{check_channels, emit4, layer_context, ParamTensor, Tensor4};
use crate::error::{Error, Result};
use crate::layer::{Layer, LayerKind, NormParams, NormParamsMut, NormUpdate};
use crate::layer::{Params, Visitor, VisitorMut};
use crate::layer::{Probe, Site};
use crate::nn::runtime::{overwritten, Activation, ChannelMap};
use crate::stats::channel_moments;
use rayon::prelude::*;

/// Batch normalisation over the channels of NCHW tensors: PyTorch's `nn.BatchNorm2d`
/// with `affine=True, track_running_stats=True`.
///
/// - [`Layer::forward`] (eval mode): `y = γ (x − μ_run) / √(σ²_run + ε) + β`.
/// - [`Layer::forward_train`] (calibration mode): normalises by the batch's mean and
///   biased variance, then folds the batch mean and *unbiased* variance into the running
///   statistics by the given [`NormUpdate`] rule, as PyTorch's train mode does.
///
/// Parameters: `weight` (γ), `bias` (β), `running_mean`, `running_var`; plus the
/// `num_batches_tracked` counter, reached through [`Params::visit_norms_mut`].
///
/// ```
/// use reflow::layer::{Layer, NormUpdate, Probe};
/// use reflow::nn::BatchNorm2d;
/// use ndarray::Array4;
///
/// let mut bn = BatchNorm2d::new(2, 1e-5);
/// let x = Array4::from_shape_fn((4, 2, 3, 3), |(n, c, h, w)| (n + c * h + w) as f32);
/// bn.forward_train(&x, &mut Probe::none())?;
/// assert_eq!(bn.num_batches_tracked(), 1);
/// assert!(bn.running_mean()[1] > 0.0);
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: ParamTensor,
    bias: ParamTensor,
    running_mean: ParamTensor,
    running_var: ParamTensor,
    num_batches_tracked: i64,
    eps: f32,
}

impl BatchNorm2d {
    /// A layer over `channels` channels with γ = 1, β = 0, running mean 0 and running
    /// variance 1 (PyTorch's initial state).
    pub fn new(channels: usize, eps: f32) -> Self {
        BatchNorm2d {
            weight: ParamTensor::filled(&[channels], 1.0),
            bias: ParamTensor::filled(&[channels], 0.0),
            running_mean: ParamTensor::filled(&[channels], 0.0),
            running_var: ParamTensor::filled(&[channels], 1.0),
            num_batches_tracked: 0,
            eps,
        }
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.weight.data.len()
    }

    /// The ε added to the variance.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// The per-channel running mean.
    pub fn running_mean(&self) -> &[f32] {
        &self.running_mean.data
    }

    /// The per-channel running variance.
    pub fn running_var(&self) -> &[f32] {
        &self.running_var.data
    }

    /// How many batches the running statistics have absorbed.
    pub fn num_batches_tracked(&self) -> i64 {
        self.num_batches_tracked
    }

    /// Calibration mode without the output: folds the batch's per-channel mean and
    /// biased variance (`moments`, over `count` values per channel) into the running
    /// statistics by `update`, and returns the map that normalises the batch, then
    /// applies `activation`.
    pub(crate) fn absorb(
        &mut self,
        moments: &[(f64, f64)],
        count: usize,
        update: NormUpdate,
        activation: Activation,
    ) -> ChannelMap {
        let mean: Vec<f32> = moments.iter().map(|m| m.0 as f32).collect();
        let var: Vec<f32> = moments.iter().map(|m| m.1 as f32).collect();
        let (scale, shift) = self.affine(&mean, &var);
        self.num_batches_tracked = self.num_batches_tracked.saturating_add(1);
        let f = update.factor(self.num_batches_tracked);
        let unbias = count as f64 / (count - 1) as f64;
        for (ch, &(m, v)) in moments.iter().enumerate() {
            let rm = &mut self.running_mean.data[ch];
            *rm = ((1.0 - f) * *rm as f64 + f * m) as f32;
            let rv = &mut self.running_var.data[ch];
            *rv = ((1.0 - f) * *rv as f64 + f * v * unbias) as f32;
        }
        ChannelMap {
            scale,
            shift,
            activation,
        }
    }

    /// Per-channel `(scale, shift)` such that `y = scale·x + shift` in eval mode.
    pub fn eval_affine(&self) -> (Vec<f32>, Vec<f32>) {
        self.affine(&self.running_mean.data, &self.running_var.data)
    }

    fn affine(&self, mean: &[f32], var: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let eps = self.eps as f64;
        (0..self.channels())
            .map(|c| {
                let scale = self.weight.data[c] as f64 / (var[c] as f64 + eps).sqrt();
                let shift = self.bias.data[c] as f64 - mean[c] as f64 * scale;
                (scale as f32, shift as f32)
            })
            .unzip()
    }

    fn normalise(&self, x: &Tensor4, scale: &[f32], shift: &[f32]) -> Tensor4 {
        let (n, c, h, w) = x.dim();
        let spatial = h * w;
        let x = x.as_standard_layout();
        let mut y = overwritten((n, c, h, w));
        let xs = x.as_slice().expect("standard layout");
        y.as_slice_mut()
            .expect("fresh array")
            .par_chunks_mut(spatial.max(1))
            .zip(xs.par_chunks(spatial.max(1)))
            .enumerate()
            .for_each(|(i, (yp, xp))| {
                Activation::Identity.map_into(xp, yp, scale[i % c], shift[i % c])
            });
        y
    }
}

/// Batch statistics need more than one value per channel; `context` names the layer.
pub(crate) fn require_batch_statistics(context: String, x: &Tensor4) -> Result<()> {
    let (n, _, h, w) = x.dim();
    if n * h * w < 2 {
        return Err(Error::shape(
            context,
            "more than one value per channel to compute batch statistics",
            x.shape(),
        ));
    }
    Ok(())
}

impl Layer for BatchNorm2d {
    type Input = Tensor4;
    type Output = Tensor4;

    fn forward_with(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        check_channels(probe, x, self.channels())?;
        emit4(probe, LayerKind::BatchNorm, Site::Input, x);
        let (scale, shift) = self.eval_affine();
        let y = self.normalise(x, &scale, &shift);
        emit4(probe, LayerKind::BatchNorm, Site::Output, &y);
        Ok(y)
    }

    fn forward_train(&mut self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        check_channels(probe, x, self.channels())?;
        emit4(probe, LayerKind::BatchNorm, Site::Input, x);
        require_batch_statistics(layer_context(probe), x)?;
        let mut y = x.as_standard_layout().into_owned();
        let (n, c, h, w) = y.dim();
        let moments = channel_moments(y.as_slice().expect("standard layout"), n, c, h * w);
        self.absorb(&moments, n * h * w, probe.update(), Activation::Identity)
            .apply_in_place(&mut y, probe.exec().threads());
        emit4(probe, LayerKind::BatchNorm, Site::Output, &y);
        Ok(y)
    }
}

impl Params for BatchNorm2d {
    fn visit(&self, v: &mut Visitor<'_>) {
        v.batch_norm(
            "",
            NormParams::new(
                &self.weight.data,
                &self.bias.data,
                &self.running_mean.data,
                &self.running_var.data,
                self.num_batches_tracked,
                self.eps,
            ),
        );
    }

    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        v.batch_norm(
            "",
            NormParamsMut::new(
                &mut self.weight.data,
                &mut self.bias.data,
                &mut self.running_mean.data,
                &mut self.running_var.data,
                &mut self.num_batches_tracked,
                self.eps,
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Probe;
    use ndarray::Array4;

    #[test]
    fn cumulative_update_averages_batches_with_equal_weight() {
        let mut bn = BatchNorm2d::new(1, 1e-5);
        let a = Array4::from_shape_vec((1, 1, 1, 2), vec![0.0, 2.0]).unwrap();
        let b = Array4::from_shape_vec((1, 1, 1, 2), vec![4.0, 8.0]).unwrap();
        bn.forward_train(&a, &mut Probe::none()).unwrap();
        bn.forward_train(&b, &mut Probe::none()).unwrap();
        // means 1 and 6; unbiased variances 2 and 8.
        assert_eq!(bn.running_mean(), &[3.5]);
        assert_eq!(bn.running_var(), &[5.0]);
        assert_eq!(bn.num_batches_tracked(), 2);
    }

    #[test]
    fn train_output_is_standardised() {
        let mut bn = BatchNorm2d::new(3, 0.0);
        let x = Array4::from_shape_fn((2, 3, 4, 5), |(n, c, h, w)| {
            ((n * 31 + c * 7 + h * 5 + w) as f32).sin() * (c + 1) as f32
        });
        let y = bn
            .forward_train(
                &x,
                &mut Probe::none().with_update(NormUpdate::Ema { momentum: 0.1 }),
            )
            .unwrap();
        let m = channel_moments(y.as_slice().unwrap(), 2, 3, 20);
        for (mean, var) in m {
            assert!(
                mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5,
                "{mean} {var}"
            );
        }
    }

    #[test]
    fn a_single_value_per_channel_cannot_be_calibrated() {
        let mut bn = BatchNorm2d::new(2, 1e-5);
        let x = Array4::zeros((1, 2, 1, 1));
        let err = bn.forward_train(&x, &mut Probe::none()).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }));
        assert_eq!(bn.num_batches_tracked(), 0);
    }
}
