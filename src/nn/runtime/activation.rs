//! Element-wise activation functions, as data.

use std::fmt;
use std::str::FromStr;

/// An element-wise activation function, computed as PyTorch computes it on the CPU;
/// NaN stays NaN in every one.
///
/// It is data: a [`ConvBn`](crate::nn::ConvBn) applies it in the convolution's
/// epilogue (ReLU inside the vector kernels' store, the others on each image's output
/// while it is in cache), a [`Residual`](crate::nn::Residual) after its add, and as a
/// layer of its own it works on tensors of any rank.
///
/// ```
/// use reflow::nn::Activation;
///
/// assert_eq!(Activation::Relu6.apply(7.5), 6.0);
/// assert_eq!(Activation::Hardswish.apply(1.0), 1.0 * 4.0 / 6.0);
/// assert!(Activation::Relu.apply(f32::NAN).is_nan());
/// assert_eq!("silu".parse::<Activation>()?, Activation::Silu);
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Activation {
    /// `x`: no activation (a linear bottleneck's projection).
    #[default]
    Identity,
    /// `max(x, 0)`: `nn.ReLU`.
    Relu,
    /// `min(max(x, 0), 6)`: `nn.ReLU6`.
    Relu6,
    /// `x · min(max(x + 3, 0), 6) / 6`: `nn.Hardswish`.
    Hardswish,
    /// `min(max(x + 3, 0), 6) / 6`: `nn.Hardsigmoid`.
    Hardsigmoid,
    /// `x / (1 + e^−x)`: `nn.SiLU` (swish).
    Silu,
    /// `1 / (1 + e^−x)`: `nn.Sigmoid`.
    Sigmoid,
}

/// `max(v, 0)` as PyTorch's ReLU computes it: NaN stays NaN (`f32::max` would
/// return 0), and so on every kernel level (x86's `max(0, v)`, NEON's select).
#[inline(always)]
pub(crate) fn relu(v: f32) -> f32 {
    if 0.0 > v {
        0.0
    } else {
        v
    }
}

/// `min(max(v, 0), 6)`, NaN staying NaN (as `f32::clamp` keeps it).
#[inline(always)]
fn relu6(v: f32) -> f32 {
    v.clamp(0.0, 6.0)
}

impl Activation {
    /// Every activation, in declaration order.
    pub const ALL: [Activation; 7] = [
        Activation::Identity,
        Activation::Relu,
        Activation::Relu6,
        Activation::Hardswish,
        Activation::Hardsigmoid,
        Activation::Silu,
        Activation::Sigmoid,
    ];

    /// The function at `v`.
    #[inline(always)]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Activation::Identity => v,
            Activation::Relu => relu(v),
            Activation::Relu6 => relu6(v),
            Activation::Hardswish => v * relu6(v + 3.0) / 6.0,
            Activation::Hardsigmoid => relu6(v + 3.0) / 6.0,
            Activation::Silu => v / (1.0 + (-v).exp()),
            Activation::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        }
    }

    /// Applies the function to every value, in place.
    pub fn apply_in_place(self, values: &mut [f32]) {
        self.map_in_place(values, 1.0, 0.0);
    }

    /// `values = f(values·a + b)`, in place (multiply, then add: every layer rounds its
    /// affine maps this way, so fused and separate passes agree to the bit).
    pub(crate) fn map_in_place(self, values: &mut [f32], a: f32, b: f32) {
        // One loop per function, so that each is a plain (vectorisable) loop.
        macro_rules! each {
            ($f:expr) => {
                values.iter_mut().for_each(|v| *v = $f(*v * a + b))
            };
        }
        match self {
            Activation::Identity if (a, b) == (1.0, 0.0) => {}
            Activation::Identity => each!(|v| v),
            Activation::Relu => each!(relu),
            Activation::Relu6 => each!(relu6),
            other => each!(|v| other.apply(v)),
        }
    }

    /// `to = f(from·a + b)`, value by value, as [`Activation::map_in_place`].
    pub(crate) fn map_into(self, from: &[f32], to: &mut [f32], a: f32, b: f32) {
        let pairs = to.iter_mut().zip(from);
        match self {
            Activation::Identity => pairs.for_each(|(t, &v)| *t = v * a + b),
            Activation::Relu => pairs.for_each(|(t, &v)| *t = relu(v * a + b)),
            other => pairs.for_each(|(t, &v)| *t = other.apply(v * a + b)),
        }
    }

    /// PyTorch's lower-case name (`relu6`, `hardswish`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::Hardswish => "hardswish",
            Activation::Hardsigmoid => "hardsigmoid",
            Activation::Silu => "silu",
            Activation::Sigmoid => "sigmoid",
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Activation {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        Activation::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Activation::ALL.iter().map(|a| a.name()).collect();
                crate::Error::invalid(
                    "activation",
                    format!("\"{s}\" is none of {}", names.join(", ")),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_functions_match_their_definitions_and_keep_nan() {
        let cases = [-7.0f32, -3.0, -1.5, -0.0, 0.0, 0.5, 2.9, 3.0, 6.0, 8.25];
        for &x in &cases {
            let r6 = x.clamp(0.0, 6.0);
            let sig = (1.0 / (1.0 + (-(x as f64)).exp())) as f32;
            let want = [
                x,
                x.max(0.0),
                r6,
                x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
                (x + 3.0).clamp(0.0, 6.0) / 6.0,
                x * sig,
                sig,
            ];
            for (a, w) in Activation::ALL.into_iter().zip(want) {
                let got = a.apply(x);
                assert!(
                    (got - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "{a}({x}) = {got}, not {w}"
                );
            }
        }
        for a in Activation::ALL {
            assert!(a.apply(f32::NAN).is_nan(), "{a}");
            let mut v = [f32::NAN, 1.0];
            a.map_in_place(&mut v, 2.0, 1.0);
            assert!(v[0].is_nan() && v[1] == a.apply(3.0), "{a}");
            let mut to = [0.0; 2];
            a.map_into(&[f32::NAN, 1.0], &mut to, 2.0, 1.0);
            assert!(to[0].is_nan() && to[1] == a.apply(3.0), "{a}");
            assert_eq!(a.name().parse::<Activation>().unwrap(), a);
        }
        assert!("gelu".parse::<Activation>().is_err());
    }
}
