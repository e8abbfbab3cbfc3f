//! Layers that change values one by one, or not at all in eval mode: activations,
//! dropout, the identity. Each works on tensors of any rank.

use super::tensor::AnyTensor;
use crate::error::{Error, Result};
use crate::layer::{Layer, Params, Probe, Visitor, VisitorMut};
use crate::nn::blocked::{BlockedLayer, Pass, Value};
use crate::nn::kernels::blocked_map::add_activate;
use crate::nn::runtime::Activation;
use std::borrow::Cow;

/// Implements the parameter-free [`Layer`] over [`AnyTensor`] for a layer whose both
/// passes are `run(&self, x)`.
macro_rules! any_rank_layer {
    ($ty:ty) => {
        impl Params for $ty {
            fn visit(&self, _: &mut Visitor<'_>) {}
            fn visit_mut(&mut self, _: &mut VisitorMut<'_>) {}
        }

        impl Layer for $ty {
            type Input = AnyTensor;
            type Output = AnyTensor;

            fn blocked(&self) -> Option<&dyn BlockedLayer> {
                Some(self)
            }

            fn forward_with(&self, x: &AnyTensor, _: &mut Probe<'_>) -> Result<AnyTensor> {
                Ok(self.run(x))
            }

            fn forward_train(&mut self, x: &AnyTensor, _: &mut Probe<'_>) -> Result<AnyTensor> {
                Ok(self.run(x))
            }
        }
    };
}

/// As a layer, an activation has no parameters and reports no taps (its input and
/// output are the neighbouring layers' taps).
impl Activation {
    fn run(&self, x: &AnyTensor) -> AnyTensor {
        let mut y = x.clone();
        let f = *self;
        y.map_in_place(|v| f.apply_in_place(v));
        y
    }
}

any_rank_layer!(Activation);

impl BlockedLayer for Activation {
    fn forward_blocked<'a>(&self, x: Value<'a>, pass: &mut Pass<'_, '_>) -> Result<Value<'a>> {
        if *self == Activation::Identity {
            return Ok(x);
        }
        match x {
            Value::Blocked(b) => {
                let mut y = b.into_owned();
                let threads = pass.threads();
                add_activate(pass.kernels(), y.values_mut(), None, *self, threads);
                Ok(Value::Blocked(Cow::Owned(y)))
            }
            Value::Input(x) => Ok(Value::Plain(self.run(&AnyTensor::Nchw(x.clone())))),
            Value::Plain(mut t) => {
                let f = *self;
                t.map_in_place(|v| f.apply_in_place(v));
                Ok(Value::Plain(t))
            }
        }
    }
}

/// `nn.Dropout(p)`: the identity in eval mode, and in calibration mode too, where only
/// batch norms follow the batch (REFLOW changes no other behaviour of the network).
///
/// ```
/// use reflow::nn::Dropout;
///
/// assert_eq!(Dropout::new(0.2)?.p(), 0.2);
/// assert!(Dropout::new(1.0).is_err());
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    p: f64,
}

impl Dropout {
    /// Dropout with probability `p`, in [0, 1).
    pub fn new(p: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::out_of_range("dropout", format!("p = {p}"), "[0, 1)"));
        }
        Ok(Dropout { p })
    }

    /// The drop probability (used only in training, which reflow does not do).
    pub fn p(&self) -> f64 {
        self.p
    }

    fn run(&self, x: &AnyTensor) -> AnyTensor {
        x.clone()
    }
}

any_rank_layer!(Dropout);

impl BlockedLayer for Dropout {
    fn forward_blocked<'a>(&self, x: Value<'a>, _: &mut Pass<'_, '_>) -> Result<Value<'a>> {
        // The identity in eval mode.
        Ok(x)
    }
}

/// torchvision's `StochasticDepth(p, mode)`: drops whole residual branches (`"row"`)
/// or batches (`"batch"`) in training; the identity in eval mode and in calibration.
///
/// ```
/// use reflow::nn::StochasticDepth;
///
/// assert_eq!(StochasticDepth::new(0.2)?.p(), 0.2);
/// assert!(StochasticDepth::new(-0.1).is_err());
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StochasticDepth {
    p: f64,
}

impl StochasticDepth {
    /// Stochastic depth with drop probability `p`, in [0, 1).
    pub fn new(p: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::out_of_range(
                "stochastic depth",
                format!("p = {p}"),
                "[0, 1)",
            ));
        }
        Ok(StochasticDepth { p })
    }

    /// The drop probability (used only in training).
    pub fn p(&self) -> f64 {
        self.p
    }

    fn run(&self, x: &AnyTensor) -> AnyTensor {
        x.clone()
    }
}

any_rank_layer!(StochasticDepth);

impl BlockedLayer for StochasticDepth {
    fn forward_blocked<'a>(&self, x: Value<'a>, _: &mut Pass<'_, '_>) -> Result<Value<'a>> {
        // The identity in eval mode.
        Ok(x)
    }
}

/// `nn.Identity`: a placeholder layer that returns its input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Identity;

impl Identity {
    fn run(&self, x: &AnyTensor) -> AnyTensor {
        x.clone()
    }
}

any_rank_layer!(Identity);

impl BlockedLayer for Identity {
    fn forward_blocked<'a>(&self, x: Value<'a>, _: &mut Pass<'_, '_>) -> Result<Value<'a>> {
        // The identity in eval mode.
        Ok(x)
    }
}
