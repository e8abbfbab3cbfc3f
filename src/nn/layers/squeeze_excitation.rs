//! Squeeze-and-excitation: channels reweighted by a gate computed from their means.

use super::{check_channels, layer_context, Conv2d, Conv2dConfig, Tensor4};
use crate::error::Error;
use crate::error::Result;
use crate::layer::{Layer, Probe};
use crate::nn::blocked::{BlockedLayer, Pass, Value};
use crate::nn::kernels::blocked_map::scale_planes;
use crate::nn::kernels::LANES;
use crate::nn::runtime::{overwritten, Activation};
use rayon::prelude::*;
use std::borrow::Cow;

/// torchvision's `SqueezeExcitation`: `x · gate(fc2(activation(fc1(mean(x)))))`, where
/// `mean` averages each channel over its plane and `fc1`, `fc2` are 1×1 convolutions
/// with bias (`channels → squeeze → channels`). RegNetY and EfficientNet use ReLU /
/// SiLU and a sigmoid gate; MobileNetV3 ReLU and a hard sigmoid.
///
/// Parameters: `fc1.weight`, `fc1.bias`, `fc2.weight`, `fc2.bias` (prunable like any
/// convolution's). No batch norm: both passes compute the same.
///
/// ```
/// use reflow::layer::{count_parameters, Layer};
/// use reflow::nn::{Activation, SqueezeExcitation};
/// use ndarray::Array4;
///
/// let se = SqueezeExcitation::new(8, 2, Activation::Relu, Activation::Sigmoid)?;
/// assert_eq!(count_parameters(&se), 8 * 2 + 2 + 2 * 8 + 8);
/// // Zero weights: every gate is sigmoid(0) = 1/2.
/// let y = se.forward(&Array4::from_elem((1, 8, 3, 3), 4.0))?;
/// assert_eq!(y[[0, 5, 1, 1]], 2.0);
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SqueezeExcitation {
    fc1: Conv2d,
    fc2: Conv2d,
    activation: Activation,
    gate: Activation,
}

impl SqueezeExcitation {
    /// A block over `channels` channels squeezed to `squeeze`, with zero weights.
    pub fn new(
        channels: usize,
        squeeze: usize,
        activation: Activation,
        gate: Activation,
    ) -> Result<Self> {
        let pointwise = |i, o| Conv2d::new(Conv2dConfig::new(i, o, 1).bias(true));
        Ok(SqueezeExcitation {
            fc1: pointwise(channels, squeeze)?,
            fc2: pointwise(squeeze, channels)?,
            activation,
            gate,
        })
    }

    /// Channels in and out.
    pub fn channels(&self) -> usize {
        self.fc1.config().in_channels
    }

    /// Channels of the squeezed vector.
    pub fn squeeze(&self) -> usize {
        self.fc1.config().out_channels
    }

    fn run(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        check_channels(probe, x, self.channels())?;
        let (n, c, h, w) = x.dim();
        let x = x.as_standard_layout();
        let xs = x.as_slice().expect("standard layout");
        let spatial = (h * w).max(1);
        let means: Vec<f32> = xs
            .par_chunks(spatial)
            .map(|p| crate::stats::plane_mean(p) as f32)
            .collect();
        let mut g = self.gates(means, n, probe)?;
        let gates = g.as_slice_mut().expect("fresh tensor");
        let mut y = overwritten((n, c, h, w));
        let ys = y.as_slice_mut().expect("fresh tensor");
        crate::nn::engine::scale_planes(xs, ys, spatial, gates, probe.exec());
        Ok(y)
    }
}

impl SqueezeExcitation {
    /// The gates of one image's channel `means` into `gates`, as [`Self::gates`] gives
    /// them but by plain products: an unobserved pass of blocks needs no taps, and the
    /// two 1×1 convolutions on one value per channel are too small for the engine
    /// (tens of microseconds each, against one for the products).
    fn gates_of(&self, means: &[f32], squeezed: &mut [f32], gates: &mut [f32]) {
        affine(self.fc1.weight(), self.fc1.bias(), means, squeezed);
        self.activation.apply_in_place(squeezed);
        affine(self.fc2.weight(), self.fc2.bias(), squeezed, gates);
        self.gate.apply_in_place(gates);
    }

    /// The gates of `means` (`[N, C]`): `gate(fc2(activation(fc1(means))))`, by the
    /// layers' own NCHW passes on `[N, C, 1, 1]`.
    fn gates(&self, means: Vec<f32>, n: usize, probe: &mut Probe<'_>) -> Result<Tensor4> {
        let pooled = Tensor4::from_shape_vec((n, self.channels(), 1, 1), means).expect("n·c means");
        let mut s = probe.scoped("fc1", |p| self.fc1.forward_with(&pooled, p))?;
        self.activation
            .apply_in_place(s.as_slice_mut().expect("fresh tensor"));
        let mut g = probe.scoped("fc2", |p| self.fc2.forward_with(&s, p))?;
        self.gate
            .apply_in_place(g.as_slice_mut().expect("fresh tensor"));
        Ok(g)
    }
}

/// `y = weight · x + bias` for a row-major `weight` of `x.len()` columns and
/// `y.len()` rows: each row's dot product in sixteen running sums (which vectorise),
/// then added up.
fn affine(weight: &[f32], bias: Option<&[f32]>, x: &[f32], y: &mut [f32]) {
    let k = x.len();
    for (r, y) in y.iter_mut().enumerate() {
        let w = &weight[r * k..][..k];
        let mut sums = [0f32; LANES];
        let (wc, xc) = (w.chunks_exact(LANES), x.chunks_exact(LANES));
        let (wr, xr) = (wc.remainder(), xc.remainder());
        for (w, x) in wc.zip(xc) {
            for ((s, w), x) in sums.iter_mut().zip(w).zip(x) {
                *s += w * x;
            }
        }
        let tail: f32 = wr.iter().zip(xr).map(|(w, x)| w * x).sum();
        *y = sums.iter().sum::<f32>() + tail + bias.map_or(0.0, |b| b[r]);
    }
}

impl BlockedLayer for SqueezeExcitation {
    fn forward_blocked<'a>(&self, x: Value<'a>, pass: &mut Pass<'_, '_>) -> Result<Value<'a>> {
        let mut x = x.into_blocked(pass)?.into_owned();
        let [n, c, h, w] = x.dims();
        if c != self.channels() {
            return Err(Error::shape(
                layer_context(pass.probe()),
                format!("[_, {}, _, _]", self.channels()),
                &x.dims()[..],
            ));
        }
        // The gates of each image in blocks of sixteen lanes, zero past the channels.
        let blocks = c.div_ceil(LANES);
        let mut gates = vec![0.0; n * blocks * LANES];
        let means = x.channel_means();
        let mut squeezed = vec![0.0; self.squeeze()];
        for (means, gates) in means.chunks(c).zip(gates.chunks_mut(blocks * LANES)) {
            self.gates_of(means, &mut squeezed, &mut gates[..c]);
        }
        let threads = pass.threads();
        let plane = h * w * LANES;
        scale_planes(pass.kernels(), x.values_mut(), plane, &gates, threads);
        Ok(Value::Blocked(Cow::Owned(x)))
    }
}

crate::params!(SqueezeExcitation { fc1, fc2 });

impl Layer for SqueezeExcitation {
    type Input = Tensor4;
    type Output = Tensor4;

    fn blocked(&self) -> Option<&dyn BlockedLayer> {
        Some(self)
    }

    fn forward_with(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        self.run(x, probe)
    }

    fn forward_train(&mut self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        self.run(x, probe)
    }
}
