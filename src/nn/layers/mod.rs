//! The layers: what each computes, its parameters and its taps. How a convolution
//! computes is the engine's business ([`crate::nn::engine`]).

pub use activation::{Dropout, Identity, StochasticDepth};
pub use batch_norm::BatchNorm2d;
pub use conv::{Conv2d, Conv2dConfig};
pub use conv_bn::ConvBn;
pub use linear::Linear;
pub use pool::{AdaptiveAvgPool2d, Flatten, MaxPool2d};
pub use residual::Residual;
pub use sequential::Sequential;
pub use squeeze_excitation::SqueezeExcitation;
pub(crate) use tensor::input_as;
pub use tensor::{AnyTensor, Rank};

pub use crate::data::{Tensor2, Tensor4};
use crate::error::{Error, Result};
use crate::layer::{ActivationView, ConvWindow, LayerKind, Probe, Site, Visitor, VisitorMut};

/// A learnable tensor of a layer: row-major values and their shape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ParamTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl ParamTensor {
    pub fn filled(shape: &[usize], value: f32) -> Self {
        ParamTensor {
            shape: shape.to_vec(),
            data: vec![value; shape.iter().product()],
        }
    }
}

impl ParamTensor {
    /// Reports this weight and `bias` at the visitor's level.
    pub fn visit_with_bias(&self, bias: Option<&ParamTensor>, v: &mut Visitor<'_>) {
        v.weight_bias("", &self.shape, &self.data, bias.map(|b| &b.data[..]));
    }

    /// Mutable twin of [`ParamTensor::visit_with_bias`].
    pub fn visit_with_bias_mut(&mut self, bias: Option<&mut ParamTensor>, v: &mut VisitorMut<'_>) {
        v.weight_bias(
            "",
            &self.shape,
            &mut self.data,
            bias.map(|b| &mut b.data[..]),
        );
    }
}

/// Implements [`Params`](crate::layer::Params) and [`Layer`](crate::layer::Layer) for a
/// layer without batch norm whose two passes are the same inherent
/// `run(&self, x, probe)`: either without parameters (`stateless`) or with a
/// `weight: ParamTensor` and a `bias: Option<ParamTensor>` (`weight_bias`).
macro_rules! plain_layer {
    ($ty:ty, $input:ty, $output:ty, stateless) => {
        plain_layer!(@impl $ty, $input, $output, |_s, _v| {}, |_s, _v| {});
    };
    // As `stateless`, with the blocked form `$ty::blocked_form(&self)` offers.
    ($ty:ty, $input:ty, $output:ty, stateless, blocked) => {
        plain_layer!(
            @impl $ty, $input, $output, |_s, _v| {}, |_s, _v| {},
            fn blocked(&self) -> Option<&dyn $crate::nn::blocked::BlockedLayer> {
                self.blocked_form()
            }
        );
    };
    ($ty:ty, $input:ty, $output:ty, weight_bias) => {
        plain_layer!(
            @impl $ty, $input, $output,
            |s, v| s.weight.visit_with_bias(s.bias.as_ref(), v),
            |s, v| s.weight.visit_with_bias_mut(s.bias.as_mut(), v)
        );
    };
    // As above, then `$changed(&mut self)` (e.g. to drop values derived from the weights).
    ($ty:ty, $input:ty, $output:ty, weight_bias, then $changed:ident) => {
        plain_layer!(
            @impl $ty, $input, $output,
            |s, v| s.weight.visit_with_bias(s.bias.as_ref(), v),
            |s, v| {
                s.weight.visit_with_bias_mut(s.bias.as_mut(), v);
                s.$changed();
            }
        );
    };
    (@impl $ty:ty, $input:ty, $output:ty, |$s:ident, $v:ident| $visit:expr, |$sm:ident, $vm:ident| $visit_mut:expr $(, $extra:item)*) => {
        impl $crate::layer::Params for $ty {
            fn visit(&self, $v: &mut $crate::layer::Visitor<'_>) {
                let $s = self;
                $visit
            }

            fn visit_mut(&mut self, $vm: &mut $crate::layer::VisitorMut<'_>) {
                let $sm = self;
                $visit_mut
            }
        }

        impl $crate::layer::Layer for $ty {
            type Input = $input;
            type Output = $output;

            fn forward_with(
                &self,
                x: &$input,
                probe: &mut $crate::layer::Probe<'_>,
            ) -> $crate::error::Result<$output> {
                self.run(x, probe)
            }

            fn forward_train(
                &mut self,
                x: &$input,
                probe: &mut $crate::layer::Probe<'_>,
            ) -> $crate::error::Result<$output> {
                self.run(x, probe)
            }

            $($extra)*
        }
    };
}

mod activation;
mod batch_norm;
mod conv;
mod conv_bn;
mod linear;
mod pending;
mod pool;
mod residual;
mod sequential;
mod squeeze_excitation;
mod tensor;

/// Shows `x` to the probe's observer at `site`, if it wants it.
pub(crate) fn emit4(probe: &mut Probe<'_>, kind: LayerKind, site: Site, x: &Tensor4) {
    emit4_at(probe, kind, site, None, x)
}

/// [`emit4`] at a tap with a convolution's `window`.
pub(crate) fn emit4_at(
    probe: &mut Probe<'_>,
    kind: LayerKind,
    site: Site,
    window: Option<ConvWindow>,
    x: &Tensor4,
) {
    if probe.wants_at(kind, site, window) {
        let (n, c, h, w) = x.dim();
        let data = x.as_standard_layout();
        if let Some(act) = data
            .as_slice()
            .and_then(|s| ActivationView::new(s, n, c, h * w))
        {
            probe.emit_at(kind, site, window, act);
        }
    }
}

/// Shows the `[N, F]` matrix `x` to the probe's observer at `site`, if it wants it.
pub(crate) fn emit2(probe: &mut Probe<'_>, kind: LayerKind, site: Site, x: &Tensor2) {
    if probe.wants(kind, site) {
        let (n, f) = x.dim();
        let data = x.as_standard_layout();
        if let Some(act) = data
            .as_slice()
            .and_then(|s| ActivationView::new(s, n, f, 1))
        {
            probe.emit(kind, site, act);
        }
    }
}

/// Checks that `x` has `channels` channels, naming the running layer otherwise.
pub(crate) fn check_channels(probe: &Probe<'_>, x: &Tensor4, channels: usize) -> Result<()> {
    if x.dim().1 != channels {
        return Err(Error::shape(
            layer_context(probe),
            format!("[_, {channels}, _, _]"),
            x.shape(),
        ));
    }
    Ok(())
}

pub(crate) fn layer_context(probe: &Probe<'_>) -> String {
    if probe.path().is_empty() {
        "input".to_string()
    } else {
        probe.path().to_string()
    }
}

/// Output length of a convolution or pooling window along one axis, or `None` when the
/// window does not fit.
pub(crate) fn window_output_len(
    len: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Option<usize> {
    let span = dilation * (kernel - 1) + 1;
    let padded = len + 2 * padding;
    (padded >= span).then(|| (padded - span) / stride + 1)
}
