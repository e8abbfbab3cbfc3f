//! A convolution followed by batch norm and an activation, fused in eval mode.

use super::batch_norm::require_batch_statistics;
use super::pending::Pending;
use super::{emit4, BatchNorm2d, Conv2d, Tensor4};
use crate::error::{Error, Result};
use crate::layer::{Layer, LayerKind, Params, Probe, Site, Visitor, VisitorMut};
use crate::nn::blocked::{BlockedLayer, BlockedTensor, Pass, Value};
use crate::nn::engine::blocked::{BlockedInput, BlockedKind};
use crate::nn::engine::Epilogue;
use crate::nn::runtime::{Activation, ChannelMap};
use crate::nn::AnyTensor;
use std::borrow::Cow;

/// `activation(bn(conv(x)))` with the two layers under their own names (`conv1` and
/// `bn1`, or `0` and `1` in a torchvision `downsample`), so the parameters and taps are
/// exactly those of the separate layers.
///
/// In eval mode, the batch norm's scale and shift (and the activation) are applied to
/// each output plane right after the product, while it is in cache: one pass and one
/// allocation instead of three. When an observer wants the batch norm's output, the
/// activation waits until it has seen it; when it wants the convolution's output (the batch
/// norm's input) — and always in calibration mode, where the batch statistics need the
/// whole convolution output — the layers run one after the other. All paths compute
/// the same values.
///
/// ```
/// use reflow::layer::{count_parameters, Layer};
/// use reflow::nn::{Activation, BatchNorm2d, Conv2d, Conv2dConfig, ConvBn};
/// use ndarray::Array4;
///
/// let conv = Conv2d::new(Conv2dConfig::new(3, 8, 3).padding(1))?;
/// let unit = ConvBn::new("conv1", conv, "bn1", BatchNorm2d::new(8, 1e-5), Activation::Relu)?;
/// assert_eq!(count_parameters(&unit), 8 * 27 + 16);
/// assert_eq!(unit.forward(&Array4::zeros((1, 3, 5, 5)))?.dim(), (1, 8, 5, 5));
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConvBn {
    conv_name: String,
    conv: Conv2d,
    bn_name: String,
    bn: BatchNorm2d,
    activation: Activation,
}

impl ConvBn {
    /// Joins `conv` and `bn` (which must have as many channels as `conv` outputs),
    /// followed by `activation`.
    pub fn new(
        conv_name: impl Into<String>,
        conv: Conv2d,
        bn_name: impl Into<String>,
        bn: BatchNorm2d,
        activation: Activation,
    ) -> Result<Self> {
        if conv.config().out_channels != bn.channels() {
            return Err(Error::invalid(
                "ConvBn",
                format!(
                    "the convolution outputs {} channels, the batch norm has {}",
                    conv.config().out_channels,
                    bn.channels()
                ),
            ));
        }
        Ok(ConvBn {
            conv_name: conv_name.into(),
            conv,
            bn_name: bn_name.into(),
            bn,
            activation,
        })
    }

    /// The convolution.
    pub fn conv(&self) -> &Conv2d {
        &self.conv
    }

    /// The batch norm.
    pub fn bn(&self) -> &BatchNorm2d {
        &self.bn
    }

    /// The activation after the batch norm.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// Whether the observer wants the convolution's output (the batch norm's input),
    /// which only the unfused path materialises.
    fn conv_output_observed(&self, probe: &mut Probe<'_>) -> bool {
        probe.scoped(&self.conv_name, |p| p.wants(LayerKind::Conv, Site::Output))
            || probe.scoped(&self.bn_name, |p| {
                p.wants(LayerKind::BatchNorm, Site::Input)
            })
    }

    /// Calibration mode for a pass that nobody observes, leaving the batch norm's
    /// output to whatever reads it next: the convolution of `x` (mapped by `input` as
    /// it is read, when given) with the batch's statistics folded into the running
    /// statistics, and the map that normalises it (and applies the activation).
    pub(crate) fn train_pending(
        &mut self,
        x: &Tensor4,
        input: Option<&ChannelMap>,
        probe: &mut Probe<'_>,
    ) -> Result<Pending> {
        self.train_unit(x, input, self.activation, probe)
    }

    /// [`ConvBn::train_pending`], with `activation` in the map.
    fn train_unit(
        &mut self,
        x: &Tensor4,
        input: Option<&ChannelMap>,
        activation: Activation,
        probe: &mut Probe<'_>,
    ) -> Result<Pending> {
        let (raw, moments) =
            probe.scoped(&self.conv_name, |p| self.conv.run_with_moments(x, input, p))?;
        require_batch_statistics(probe.child_path(&self.bn_name), &raw)?;
        let (n, _, h, w) = raw.dim();
        let map = self
            .bn
            .absorb(&moments, n * h * w, probe.update(), activation);
        Ok(Pending {
            raw,
            map: Some(map),
        })
    }

    fn activate_in_place(&self, mut y: Tensor4) -> Tensor4 {
        let activation = self.activation;
        if activation != Activation::Identity {
            y.par_mapv_inplace(|v| activation.apply(v));
        }
        y
    }
}

impl Layer for ConvBn {
    type Input = Tensor4;
    type Output = Tensor4;

    fn blocked(&self) -> Option<&dyn BlockedLayer> {
        self.conv.blocked_kind().map(|_| self as &dyn BlockedLayer)
    }

    fn forward_with(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        if self.conv_output_observed(probe) {
            let y = probe.scoped(&self.conv_name, |p| self.conv.forward_with(x, p))?;
            let y = probe.scoped(&self.bn_name, |p| self.bn.forward_with(&y, p))?;
            return Ok(self.activate_in_place(y));
        }
        // The batch norm's output is wanted: fuse it, show it, then apply the
        // activation.
        let bn_output_observed = probe.scoped(&self.bn_name, |p| {
            p.wants(LayerKind::BatchNorm, Site::Output)
        });
        let (scale, shift) = self.bn.eval_affine();
        let epilogue = Epilogue {
            scale: Some(&scale),
            shift: Some(&shift),
            activation: match bn_output_observed {
                true => Activation::Identity,
                false => self.activation,
            },
        };
        let y = probe.scoped(&self.conv_name, |p| self.conv.run_fused(x, p, &epilogue))?;
        if !bn_output_observed {
            return Ok(y);
        }
        probe.scoped(&self.bn_name, |p| {
            emit4(p, LayerKind::BatchNorm, Site::Output, &y)
        });
        Ok(self.activate_in_place(y))
    }

    fn forward_train(&mut self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        if self.conv_output_observed(probe) {
            let y = probe.scoped(&self.conv_name, |p| self.conv.forward_train(x, p))?;
            let y = probe.scoped(&self.bn_name, |p| self.bn.forward_train(&y, p))?;
            return Ok(self.activate_in_place(y));
        }
        // The convolution gathers the batch statistics as it writes its output, which
        // the batch norm then normalises in place.
        let bn_output_observed = probe.scoped(&self.bn_name, |p| {
            p.wants(LayerKind::BatchNorm, Site::Output)
        });
        let activation = match bn_output_observed {
            true => Activation::Identity,
            false => self.activation,
        };
        let y = self
            .train_unit(x, None, activation, probe)?
            .into_tensor(probe.exec().threads());
        if !bn_output_observed {
            return Ok(y);
        }
        probe.scoped(&self.bn_name, |p| {
            emit4(p, LayerKind::BatchNorm, Site::Output, &y)
        });
        Ok(self.activate_in_place(y))
    }
}

impl ConvBn {
    /// Whether the eval pass on blocks can add a residual and apply the residual
    /// block's activation as it stores: a blocked kernel other than the depthwise one,
    /// and no activation of its own.
    pub(crate) fn fuses_residual(&self) -> bool {
        self.activation == Activation::Identity
            && matches!(self.conv.blocked_kind(), Some(k) if k != BlockedKind::Depthwise)
    }

    /// The eval pass on blocks: `activation(bn(conv(x)))`, or, with `add = (r, post)`,
    /// `post(bn(conv(x)) + r)` (for a unit that [`ConvBn::fuses_residual`]). The batch
    /// norm, the residual and the activation are applied as the kernel stores.
    pub(crate) fn forward_blocked_add(
        &self,
        x: Value<'_>,
        add: Option<(&BlockedTensor, Activation)>,
        pass: &mut Pass<'_, '_>,
    ) -> Result<BlockedTensor> {
        let kind = self
            .conv
            .blocked_kind()
            .expect("the caller checked that a blocked kernel computes the convolution");
        let (scale, shift) = self.bn.eval_affine();
        let epilogue = Epilogue {
            scale: Some(&scale),
            shift: Some(&shift),
            activation: add.map_or(self.activation, |(_, post)| post),
        };
        let residual = add.map(|(r, _)| r);
        let kernels = pass.kernels();
        let conv = &self.conv;
        pass.scoped(&self.conv_name, |pass| match x {
            // A direct kernel reads NCHW as it is: no reorder.
            Value::Input(t) if kind.reads_nchw() => {
                let t = t.as_standard_layout();
                let input = BlockedInput::nchw(t.view());
                conv.run_blocked(kind, input, &epilogue, residual, kernels, pass.probe())
            }
            Value::Plain(AnyTensor::Nchw(t)) if kind.reads_nchw() => {
                let t = t.as_standard_layout();
                let input = BlockedInput::nchw(t.view());
                conv.run_blocked(kind, input, &epilogue, residual, kernels, pass.probe())
            }
            x => {
                let x = x.into_blocked(pass)?;
                let input = BlockedInput::Blocked(&x);
                conv.run_blocked(kind, input, &epilogue, residual, kernels, pass.probe())
            }
        })
    }
}

impl BlockedLayer for ConvBn {
    fn forward_blocked<'a>(&self, x: Value<'a>, pass: &mut Pass<'_, '_>) -> Result<Value<'a>> {
        let y = self.forward_blocked_add(x, None, pass)?;
        Ok(Value::Blocked(Cow::Owned(y)))
    }
}

impl Params for ConvBn {
    fn visit(&self, v: &mut Visitor<'_>) {
        v.child(&self.conv_name, &self.conv);
        v.child(&self.bn_name, &self.bn);
    }

    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        v.child(&self.conv_name, &mut self.conv);
        v.child(&self.bn_name, &mut self.bn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{ActivationView, Observer, Tap};
    use crate::nn::Conv2dConfig;
    use ndarray::Array4;

    /// Keeps copies of the taps it wants.
    struct Wants(Site, Vec<Vec<f32>>);
    impl Observer for Wants {
        fn wants(&self, tap: &Tap<'_>) -> bool {
            tap.kind == LayerKind::BatchNorm && tap.site == self.0
        }
        fn observe(&mut self, _: &Tap<'_>, a: ActivationView<'_>) {
            self.1.push(a.data.to_vec());
        }
    }

    #[test]
    fn fused_and_unfused_paths_agree() {
        for (bias, act) in [
            (false, Activation::Relu),
            (true, Activation::Identity),
            (true, Activation::Hardswish),
            (false, Activation::Silu),
            (true, Activation::Relu6),
        ] {
            let conv = Conv2d::new(Conv2dConfig::new(3, 4, 3).padding(1).bias(bias)).unwrap();
            let mut unit = ConvBn::new("c", conv, "b", BatchNorm2d::new(4, 1e-3), act).unwrap();
            let mut i = 0.0f32;
            unit.visit_params_mut(&mut |p| {
                p.data.iter_mut().for_each(|v| {
                    i += 0.37;
                    *v = i.sin() + if p.name == "b.running_var" { 1.5 } else { 0.0 };
                })
            });
            let x = Array4::from_shape_fn((2, 3, 6, 5), |(a, b, c, d)| {
                ((a + 2 * b + c * d) as f32).cos()
            });
            let fused = unit.forward(&x).unwrap();
            let mut input = Wants(Site::Input, vec![]);
            let unfused = unit.forward_with(&x, &mut Probe::new(&mut input)).unwrap();
            let mut output = Wants(Site::Output, vec![]);
            let shown = unit.forward_with(&x, &mut Probe::new(&mut output)).unwrap();
            for other in [&unfused, &shown] {
                let err = (&fused - other)
                    .mapv(f32::abs)
                    .fold(0.0f32, |m, &v| m.max(v));
                assert!(err < 1e-5, "bias {bias} {act}: {err}");
            }
            let nonnegative = matches!(act, Activation::Relu | Activation::Relu6);
            assert_eq!(nonnegative, fused.iter().all(|&v| v >= 0.0));
            // The activation is applied, as the separate layers would apply it.
            let separate = unit
                .bn()
                .forward(&unit.conv().forward(&x).unwrap())
                .unwrap()
                .mapv(|v| act.apply(v));
            let err = (&fused - &separate)
                .mapv(f32::abs)
                .fold(0.0f32, |m, &v| m.max(v));
            assert!(err < 1e-5, "bias {bias} {act}: {err}");
            // The batch norm's output is shown before the ReLU, as the layers compute it.
            let bn_out = unit
                .bn()
                .forward(&unit.conv().forward(&x).unwrap())
                .unwrap();
            assert_eq!((input.1.len(), output.1.len()), (1, 1));
            let err = bn_out
                .iter()
                .zip(&output.1[0])
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err < 1e-5, "bias {bias} {act}: {err}");
        }
    }

    #[test]
    fn fused_and_unfused_calibration_agree() {
        let conv = Conv2d::new(Conv2dConfig::new(3, 4, 3).padding(1).bias(true)).unwrap();
        let mut fused = ConvBn::new(
            "c",
            conv,
            "b",
            BatchNorm2d::new(4, 1e-5),
            Activation::Hardswish,
        )
        .unwrap();
        let mut i = 0.0f32;
        fused.visit_params_mut(&mut |p| {
            p.data.iter_mut().for_each(|v| {
                i += 0.41;
                *v = i.cos()
            })
        });
        let mut unfused = fused.clone();
        let x = Array4::from_shape_fn((3, 3, 7, 6), |(a, b, c, d)| {
            ((a * 5 + b + c * d) as f32).sin()
        });
        let update = crate::layer::NormUpdate::Ema { momentum: 0.3 };
        let y1 = fused
            .forward_train(&x, &mut Probe::none().with_update(update))
            .unwrap();
        let mut input = Wants(Site::Input, vec![]);
        let y2 = unfused
            .forward_train(&x, &mut Probe::new(&mut input).with_update(update))
            .unwrap();
        assert_eq!(input.1.len(), 1, "the unfused path ran");
        let err = (&y1 - &y2).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v));
        assert!(err < 1e-5, "{err}");
        let (a, b) = (fused.bn().running_var(), unfused.bn().running_var());
        assert!(a
            .iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() < 1e-6 * y.abs().max(1.0)));
        assert_eq!(fused.bn().num_batches_tracked(), 1);
    }

    #[test]
    fn mismatched_channels_are_rejected() {
        let conv = Conv2d::new(Conv2dConfig::new(3, 4, 3)).unwrap();
        assert!(ConvBn::new(
            "c",
            conv,
            "b",
            BatchNorm2d::new(5, 1e-5),
            Activation::Identity
        )
        .is_err());
    }
}
