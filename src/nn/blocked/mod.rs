//! Eval passes on channel-blocked activations: the engine's layout (`docs/engine.md`).
//!
//! An unobserved eval pass of a bundled network keeps its feature maps in blocks of
//! sixteen channels ([`BlockedTensor`]) from the stem, which reads the NCHW images
//! directly, to the global pooling, which gives `[N, C]` directly. Each layer that has
//! a blocked form ([`BlockedLayer`], offered through [`Layer::blocked`]) reads and
//! writes blocks; a layer without one (a custom [`Layer`], or a bundled one without a
//! blocked kernel yet) gets its input reordered to NCHW and runs as it always does, and
//! the next blocked layer reorders its output back. [`Pass::reorders`] counts those
//! reorders, so that a slow path is never silent.
//!
//! Observed passes (taps, statistics) and calibration passes run on NCHW tensors, as
//! before: the observer sees NCHW activations.
//!
//! This module is the engine's interface to the bundled layers; it is public only
//! because [`Layer::blocked`] names it, and it may change in any release.

mod tensor;

pub use tensor::BlockedTensor;

use crate::error::{Error, Result};
use crate::layer::{Layer, Probe};
use crate::nn::kernels::{Isa, Kernels};
use crate::nn::layers::{input_as, layer_context};
use crate::nn::{AnyTensor, Rank, Tensor4};
use std::borrow::Cow;

/// An activation between two layers of a blocked pass.
#[derive(Debug)]
pub enum Value<'a> {
    /// A feature map in blocks, owned or borrowed (a residual block's input, which its
    /// body and shortcut both read).
    Blocked(Cow<'a, BlockedTensor>),
    /// The caller's NCHW input, borrowed: the stem reads it as it is.
    Input(&'a Tensor4),
    /// A tensor in its plain layout: NCHW, or a `[N, features]` matrix.
    Plain(AnyTensor),
}

impl<'a> Value<'a> {
    /// The feature map in blocks: reordered from NCHW when it is not (counted).
    pub(crate) fn into_blocked(self, pass: &mut Pass<'_, '_>) -> Result<Cow<'a, BlockedTensor>> {
        match self {
            Value::Blocked(b) => Ok(b),
            Value::Input(x) => Ok(Cow::Owned(pass.reorder(x))),
            Value::Plain(AnyTensor::Nchw(x)) => Ok(Cow::Owned(pass.reorder(&x))),
            Value::Plain(AnyTensor::Matrix(m)) => Err(Error::shape(
                layer_context(pass.probe),
                "a 4-d tensor",
                m.shape(),
            )),
        }
    }

    /// The tensor in its plain layout: reordered to NCHW when it is in blocks
    /// (counted), copied when it is the caller's input.
    pub(crate) fn into_plain(self, pass: &mut Pass<'_, '_>) -> AnyTensor {
        match self {
            Value::Blocked(b) => {
                pass.reorders += 1;
                AnyTensor::Nchw(b.to_nchw())
            }
            Value::Input(x) => AnyTensor::Nchw(x.clone()),
            Value::Plain(t) => t,
        }
    }

    /// The value, owning what it borrowed.
    pub(crate) fn into_owned(self) -> Value<'static> {
        match self {
            Value::Blocked(b) => Value::Blocked(Cow::Owned(b.into_owned())),
            Value::Input(x) => Value::Plain(AnyTensor::Nchw(x.clone())),
            Value::Plain(t) => Value::Plain(t),
        }
    }
}

/// What a blocked pass carries from layer to layer: the instruction set of its
/// kernels, the probe (for the running layer's path, which errors name) and the count
/// of reorders.
#[derive(Debug)]
pub struct Pass<'p, 'o> {
    kernels: Kernels,
    probe: &'p mut Probe<'o>,
    reorders: usize,
}

impl<'p, 'o> Pass<'p, 'o> {
    /// A pass on `kernels`, naming layers by `probe`'s path.
    pub(crate) fn new(kernels: Kernels, probe: &'p mut Probe<'o>) -> Self {
        Pass {
            kernels,
            probe,
            reorders: 0,
        }
    }

    /// The pass an unobserved eval call may take on this processor: `None` where the
    /// kernels have no vector instruction set (the NCHW engine's products are faster
    /// there) or an observer is attached (it sees NCHW activations).
    pub(crate) fn for_eval(probe: &'p mut Probe<'o>) -> Option<Self> {
        if !Pass::available(probe) {
            return None;
        }
        Isa::of(probe.exec()).kernels().map(|k| Pass::new(k, probe))
    }

    /// Whether [`Pass::for_eval`] gives a pass.
    pub(crate) fn available(probe: &Probe<'_>) -> bool {
        probe.schedule() == crate::layer::Schedule::Fused
            && Isa::of(probe.exec()).kernels().is_some()
    }

    /// The kernels' instruction set.
    pub(crate) fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// How many threads a layer may spread its work over (the probe's
    /// [`Exec`](crate::exec::Exec)).
    pub(crate) fn threads(&self) -> usize {
        self.probe.exec().threads()
    }

    /// The probe, for the running layer's path.
    pub(crate) fn probe(&mut self) -> &mut Probe<'o> {
        self.probe
    }

    /// How many tensors this pass has reordered between NCHW and blocks.
    pub fn reorders(&self) -> usize {
        self.reorders
    }

    /// Runs `f` with `name` appended to the path, as [`Probe::scoped`].
    pub(crate) fn scoped<R>(&mut self, name: &str, f: impl FnOnce(&mut Pass<'_, 'o>) -> R) -> R {
        // The probe's path is restored by `Probe::scoped`; the pass is borrowed back
        // around it.
        let Pass {
            kernels,
            probe,
            reorders,
        } = self;
        let (kernels, count) = (*kernels, *reorders);
        let (result, count) = probe.scoped(name, |p| {
            let mut inner = Pass {
                kernels,
                probe: p,
                reorders: count,
            };
            let r = f(&mut inner);
            (r, inner.reorders)
        });
        *reorders = count;
        result
    }

    /// `x` in blocks, counted as a reorder.
    fn reorder(&mut self, x: &Tensor4) -> BlockedTensor {
        self.reorders += 1;
        BlockedTensor::from_nchw(x)
    }
}

/// A layer's eval pass on blocked activations: what [`Layer::blocked`] offers.
pub trait BlockedLayer: Send + Sync {
    /// The eval pass of `x`: blocks in, blocks out for feature maps (or a plain
    /// tensor, for a layer that leaves the feature maps, such as global pooling).
    fn forward_blocked<'a>(&self, x: Value<'a>, pass: &mut Pass<'_, '_>) -> Result<Value<'a>>;
}

/// `layer`'s eval pass on `x`: its blocked form when it has one; else its NCHW pass,
/// its input reordered to NCHW first (counted).
pub(crate) fn forward_value<'a, L>(
    layer: &L,
    x: Value<'a>,
    pass: &mut Pass<'_, '_>,
) -> Result<Value<'a>>
where
    L: Layer + ?Sized,
    L::Input: Rank,
    L::Output: Rank,
{
    if let Some(blocked) = layer.blocked() {
        return blocked.forward_blocked(x, pass);
    }
    let context = layer_context(pass.probe);
    let y = match x {
        Value::Input(x) => {
            let input = input_as::<L::Input>(x, &context)?;
            layer.forward_with(&input, pass.probe)?
        }
        x => {
            let plain = x.into_plain(pass);
            let input = input_as::<L::Input>(&plain, &context)?;
            layer.forward_with(&input, pass.probe)?
        }
    };
    Ok(Value::Plain(y.into_any()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Params, Schedule, Visitor, VisitorMut};
    use crate::nn::kernels::every_kernels;
    use crate::nn::{Activation, AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, ConvBn};
    use crate::nn::{Dropout, Flatten, Linear, MaxPool2d, Residual, Sequential};
    use crate::nn::{SqueezeExcitation, Tensor2};
    use ndarray::Array4;

    /// A layer that only knows NCHW: `2x`.
    struct Double;

    impl Params for Double {
        fn visit(&self, _: &mut Visitor<'_>) {}
        fn visit_mut(&mut self, _: &mut VisitorMut<'_>) {}
    }

    impl Layer for Double {
        type Input = Tensor4;
        type Output = Tensor4;

        fn forward_with(&self, x: &Tensor4, _: &mut Probe<'_>) -> Result<Tensor4> {
            Ok(x * 2.0)
        }

        fn forward_train(&mut self, x: &Tensor4, p: &mut Probe<'_>) -> Result<Tensor4> {
            self.forward_with(x, p)
        }
    }

    fn unit(config: Conv2dConfig, activation: Activation) -> ConvBn {
        let bn = BatchNorm2d::new(config.out_channels, 1e-5);
        ConvBn::new("conv", Conv2d::new(config).unwrap(), "bn", bn, activation).unwrap()
    }

    /// Deterministic parameters, positive running variances.
    fn filled<P: Params>(mut p: P) -> P {
        let mut i = 0.0f32;
        p.visit_params_mut(&mut |t| {
            t.data.iter_mut().for_each(|v| {
                i += 0.37;
                *v = 0.5 * i.sin()
                    + if t.name.ends_with("running_var") {
                        1.5
                    } else {
                        0.0
                    };
            })
        });
        p
    }

    /// Every kind of layer a blocked pass meets: each blocked kernel, a residual whose
    /// add is fused and one whose add is a pass of its own, squeeze-excitation, and
    /// layers without a blocked form (a custom one, max pooling, a grouped
    /// convolution) between blocked ones.
    fn network() -> Sequential<Tensor4, Tensor2> {
        let c = Conv2dConfig::new;
        let fused = Sequential::new()
            .push("0", unit(c(20, 40, 1), Activation::Relu6))
            .push(
                "1",
                unit(c(40, 40, 3).padding(1).groups(40), Activation::Silu),
            )
            .push(
                "2",
                SqueezeExcitation::new(40, 8, Activation::Relu, Activation::Sigmoid).unwrap(),
            )
            .push("3", unit(c(40, 20, 1), Activation::Identity));
        let unfused = Sequential::new()
            .push("0", unit(c(20, 24, 3).padding(1), Activation::Identity))
            .push("1", Activation::Hardswish);
        let shortcut = Sequential::new().push("0", unit(c(20, 24, 1), Activation::Identity));
        filled(
            Sequential::new()
                .push(
                    "stem",
                    unit(c(3, 20, 3).stride(2).padding(1), Activation::Relu),
                )
                .push(
                    "a",
                    Residual::identity(fused).with_post(Activation::Identity),
                )
                .push("b", Residual::with_shortcut(unfused, "down", shortcut))
                .push("custom", Double)
                .push("c", unit(c(24, 24, 1), Activation::Hardswish))
                .push("pool", MaxPool2d::new(3, 2, 1).unwrap())
                .push(
                    "grouped",
                    unit(c(24, 32, 3).padding(1).groups(2), Activation::Relu),
                )
                .push(
                    "dw",
                    unit(
                        c(32, 32, 5).stride(2).padding(2).groups(32),
                        Activation::Relu6,
                    ),
                )
                .push("avgpool", AdaptiveAvgPool2d::global())
                .push("flatten", Flatten)
                .push("drop", Dropout::new(0.2).unwrap())
                .push("fc", Linear::new(32, 10, true)),
        )
    }

    #[test]
    fn a_blocked_pass_equals_the_nchw_pass_at_every_level_and_counts_its_reorders() {
        let net = network();
        let x = Array4::from_shape_fn((3, 3, 19, 17), |(n, c, h, w)| {
            ((n * 7 + c * 5 + h * 3 + w) as f32 * 0.41).sin()
        });
        let layered = Probe::none().with_schedule(Schedule::LayerByLayer);
        let want = net.forward_with(&x, &mut { layered }).unwrap();
        for kernels in every_kernels() {
            let mut probe = Probe::none();
            let mut pass = Pass::new(kernels, &mut probe);
            let y = net.forward_blocked(Value::Input(&x), &mut pass).unwrap();
            // Into the custom layer and back; into the grouped convolution and back.
            // The pooled features come out plain.
            assert_eq!(pass.reorders(), 4, "{kernels:?}");
            let y = y.into_plain(&mut pass).into_matrix().unwrap();
            let err = (&y - &want).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v));
            let scale = want.mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v));
            assert!(err <= 1e-5 * scale, "{kernels:?}: {err} of {scale}");
        }
    }

    #[test]
    fn a_blocked_pass_names_the_layer_of_a_wrong_input() {
        let net = network();
        let x = Array4::zeros((1, 4, 8, 8));
        let mut probe = Probe::none();
        let kernels = every_kernels()[0];
        let mut pass = Pass::new(kernels, &mut probe);
        let err = net
            .forward_blocked(Value::Input(&x), &mut pass)
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, Error::Shape { .. }) && text.contains("stem.conv"),
            "{text}"
        );
    }
}
