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

/// `e^v` in `f32` without a library call, so that loops over it vectorise: `2^n · p(r)`
/// with `n = round(v / ln 2)`, `r = v − n ln 2` (in two parts) and a degree-6
/// polynomial for `e^r` on `|r| ≤ ln 2 / 2` (relative error below 4e-7). Inputs are
/// clamped to ±87.3 (beyond, `e^v` is outside the normal `f32` range); NaN stays NaN.
/// The rounding adds and subtracts 1.5 · 2²³ (round to nearest even, plain
/// arithmetic: `f32::round` is a library call on x86-64's baseline).
#[inline(always)]
fn exp(v: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0;
    let v = v.clamp(-87.3, 87.3);
    let t = v * LOG2E + ROUND;
    let n = t - ROUND;
    let r = v - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.666_666_7e-1
                    + r * (4.166_666_8e-2 + r * (8.333_452e-3 + r * 1.388_731_6e-3)))));
    // 2^n by the exponent bits: n is t's low mantissa bits (n in -126..=126).
    let n = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits((n.wrapping_add(127) as u32) << 23);
    p * scale
}

#[inline(always)]
fn hardswish(v: f32) -> f32 {
    v * relu6(v + 3.0) / 6.0
}

#[inline(always)]
fn hardsigmoid(v: f32) -> f32 {
    relu6(v + 3.0) / 6.0
}

#[inline(always)]
fn silu(v: f32) -> f32 {
    v / (1.0 + exp(-v))
}

#[inline(always)]
fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + exp(-v))
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
            Activation::Hardswish => hardswish(v),
            Activation::Hardsigmoid => hardsigmoid(v),
            Activation::Silu => silu(v),
            Activation::Sigmoid => sigmoid(v),
        }
    }

    /// Applies the function to every value, in place.
    #[inline(always)]
    pub fn apply_in_place(self, values: &mut [f32]) {
        self.map_in_place(values, 1.0, 0.0);
    }

    /// `values = f(values·a + b)`, in place (multiply, then add: every layer rounds its
    /// affine maps this way, so fused and separate passes agree to the bit).
    #[inline(always)]
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
            Activation::Hardswish => each!(hardswish),
            Activation::Hardsigmoid => each!(hardsigmoid),
            Activation::Silu => each!(silu),
            Activation::Sigmoid => each!(sigmoid),
        }
    }

    /// `to = f(from·a + b)`, value by value, as [`Activation::map_in_place`].
    #[inline(always)]
    pub(crate) fn map_into(self, from: &[f32], to: &mut [f32], a: f32, b: f32) {
        macro_rules! each {
            ($f:expr) => {
                to.iter_mut()
                    .zip(from)
                    .for_each(|(t, &v)| *t = $f(v * a + b))
            };
        }
        match self {
            Activation::Identity => each!(|v| v),
            Activation::Relu => each!(relu),
            Activation::Relu6 => each!(relu6),
            Activation::Hardswish => each!(hardswish),
            Activation::Hardsigmoid => each!(hardsigmoid),
            Activation::Silu => each!(silu),
            Activation::Sigmoid => each!(sigmoid),
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
                crate::Error::unknown("activation", s, names.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exponential_is_within_a_few_units_in_the_last_place() {
        let mut worst = 0.0f64;
        for i in -87_000..=87_000 {
            let v = i as f32 / 1000.0 + 0.000_37;
            let want = (v as f64).exp();
            worst = worst.max(((exp(v) as f64) - want).abs() / want);
        }
        assert!(worst < 4e-7, "relative error {worst:e}");
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(-1e4) > 0.0 && exp(1e4).is_finite());
        // SiLU and sigmoid at the ends of the range: no NaN from inf/inf.
        for v in [-1e30f32, -100.0, 100.0, 1e30] {
            assert!(Activation::Silu.apply(v).is_finite(), "{v}");
            assert!(Activation::Sigmoid.apply(v).is_finite(), "{v}");
        }
    }

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
