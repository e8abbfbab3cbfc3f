//! The activations on sixteen lanes, for the stores of the blocked kernels: the same
//! operations in the same order as [`Activation::apply`], so every level gives the
//! scalar function's value to the bit (for `exp`, the same polynomial and the same
//! two-part range reduction).

use super::Simd;
use crate::nn::runtime::Activation;

/// `f(v)`, lane by lane.
#[inline(always)]
pub(crate) fn activate<S: Simd>(s: S, f: Activation, v: S::V) -> S::V {
    match f {
        Activation::Identity => v,
        Activation::Relu => s.relu(v),
        Activation::Relu6 => s.clamp(v, 0.0, 6.0),
        Activation::Hardswish => {
            let gate = s.clamp(s.add(v, s.splat(3.0)), 0.0, 6.0);
            s.div(s.mul(v, gate), s.splat(6.0))
        }
        Activation::Hardsigmoid => s.div(s.clamp(s.add(v, s.splat(3.0)), 0.0, 6.0), s.splat(6.0)),
        Activation::Silu => {
            let e = exp(s, s.sub(s.zero(), v));
            s.div(v, s.add(s.splat(1.0), e))
        }
        Activation::Sigmoid => {
            let e = exp(s, s.sub(s.zero(), v));
            s.div(s.splat(1.0), s.add(s.splat(1.0), e))
        }
    }
}

/// `e^v` as the scalar activations compute it (`runtime::activation::exp`).
#[inline(always)]
fn exp<S: Simd>(s: S, v: S::V) -> S::V {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0;
    let v = s.clamp(v, -87.3, 87.3);
    let t = s.add(s.mul(v, s.splat(LOG2E)), s.splat(ROUND));
    let n = s.sub(t, s.splat(ROUND));
    let r = s.sub(
        s.sub(v, s.mul(n, s.splat(LN2_HI))),
        s.mul(n, s.splat(LN2_LO)),
    );
    // Horner's scheme, each step a multiply then an add, as the scalar code (no
    // closure: it might not inline into the vectorised context).
    let mut p = s.splat(1.388_731_6e-3);
    for c in [8.333_452e-3, 4.166_666_8e-2, 1.666_666_7e-1, 0.5, 1.0, 1.0] {
        p = s.add(s.splat(c), s.mul(r, p));
    }
    s.mul(p, s.pow2(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::kernels::{every_kernels, Kernel, LANES};

    struct Apply<'a>(Activation, &'a [f32]);

    impl Kernel for Apply<'_> {
        type Output = Vec<f32>;

        #[inline(always)]
        fn run<S: Simd>(self, s: S) -> Vec<f32> {
            let mut out = vec![0.0; self.1.len()];
            for (o, x) in out.chunks_exact_mut(LANES).zip(self.1.chunks_exact(LANES)) {
                let v = activate(s, self.0, s.load(x.try_into().unwrap()));
                s.store(o.try_into().unwrap(), v);
            }
            out
        }
    }

    #[test]
    fn every_level_computes_the_scalar_activations_to_the_bit() {
        let mut inputs: Vec<f32> = (-400..400).map(|i| i as f32 * 0.037).collect();
        inputs.extend([
            0.0,
            -0.0,
            3.0,
            -3.0,
            6.0,
            -6.0,
            87.0,
            -87.0,
            88.5,
            -88.5,
            1e30,
            -1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1e-30,
        ]);
        inputs.resize(inputs.len().div_ceil(LANES) * LANES, 0.5);
        for f in Activation::ALL {
            let want: Vec<f32> = inputs.iter().map(|&v| f.apply(v)).collect();
            for k in every_kernels() {
                let got = k.run(Apply(f, &inputs));
                for ((g, w), x) in got.iter().zip(&want).zip(&inputs) {
                    assert!(
                        g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                        "{f} at {x} on {k:?}: {g} against {w}"
                    );
                }
            }
        }
    }
}
