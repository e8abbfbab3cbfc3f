//! Max pooling on channel-blocked tensors: sixteen channels per vector, the padding
//! acting as −∞ (its taps are skipped), NaN propagating as in PyTorch.

use super::blocked::{each_chunk, Blocked};
use super::geometry::Geometry;
use super::{Kernel, Kernels, Simd, LANES};

/// The max pooling of `x` (blocked, shape `xs`) over the window `g` into `y` (blocked,
/// the output size of `g`).
pub(crate) fn max_pool(
    kernels: Kernels,
    x: &[f32],
    xs: Blocked,
    g: Geometry,
    y: &mut [f32],
    threads: usize,
) {
    let (plane_in, plane_out) = (xs.h * xs.w * LANES, g.out_size[0] * g.out_size[1] * LANES);
    assert!([xs.h, xs.w] == g.size && x.len() == xs.len());
    assert!(y.len() == xs.n * xs.blocks() * plane_out);
    if plane_out == 0 {
        return;
    }
    let task = |i: usize, y: &mut [f32]| {
        kernels.run(MaxPlane {
            x: &x[i * plane_in..][..plane_in],
            g,
            y,
        })
    };
    each_chunk(y.chunks_mut(plane_out).collect(), threads, task);
}

/// One block of one image.
struct MaxPlane<'a> {
    /// `[h][w][16]`.
    x: &'a [f32],
    g: Geometry,
    /// `[ho][wo][16]`.
    y: &'a mut [f32],
}

impl Kernel for MaxPlane<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let g = self.g;
        let ([_, w], [_, wo], [_, kw], [_, sw], [_, pw]) =
            (g.size, g.out_size, g.kernel, g.stride, g.padding);
        for (oy, row) in self.y.chunks_exact_mut(wo * LANES).enumerate() {
            let (top, r0, r1) = g.rows(oy);
            for (ox, out) in row.chunks_exact_mut(LANES).enumerate() {
                let mut best = s.splat(f32::NEG_INFINITY);
                for r in r0..r1 {
                    let iy = (top + r as isize) as usize;
                    for k in 0..kw {
                        let ix = (ox * sw + k) as isize - pw as isize;
                        if (0..w as isize).contains(&ix) {
                            let at = (iy * w + ix as usize) * LANES;
                            let v = s.load(self.x[at..at + LANES].try_into().expect("16 lanes"));
                            best = s.max_nan(best, v);
                        }
                    }
                }
                s.store(out.try_into().expect("16 lanes"), best);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::blocked::tests::values;
    use super::super::blocked::{from_blocked, to_blocked};
    use super::*;
    use crate::nn::kernels::every_kernels;

    #[test]
    fn max_pool_matches_the_definition_at_every_level() {
        // ResNet's 3×3 stride-2 pad-1 pool, a 2×2 stride-2 one, channels off the block,
        // a NaN.
        for (n, c, h, w, k, st, pd) in [
            (2, 20, 9, 11, 3, 2, 1),
            (1, 16, 8, 8, 2, 2, 0),
            (1, 3, 5, 4, 3, 1, 1),
        ] {
            let out = |len: usize| (len + 2 * pd - k) / st + 1;
            let g = Geometry::window(c, [k, k], [st, st], [pd, pd], [h, w], [out(h), out(w)]);
            let mut x = values(n * c * h * w, 21);
            x[5] = f32::NAN;
            let [ho, wo] = g.out_size;
            let mut want = vec![f32::NEG_INFINITY; n * c * ho * wo];
            for (p, plane) in want.chunks_mut(ho * wo).enumerate() {
                for oy in 0..ho {
                    for ox in 0..wo {
                        for r in 0..k {
                            for q in 0..k {
                                let iy = (oy * st + r) as isize - pd as isize;
                                let ix = (ox * st + q) as isize - pd as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let v = x[(p * h + iy as usize) * w + ix as usize];
                                let b = &mut plane[oy * wo + ox];
                                if v > *b || v.is_nan() {
                                    *b = v;
                                }
                            }
                        }
                    }
                }
            }
            let xs = Blocked { n, c, h, w };
            let ys = Blocked { h: ho, w: wo, ..xs };
            let mut xb = vec![0.0; xs.len()];
            to_blocked(&x, xs, &mut xb);
            for kernels in every_kernels() {
                let mut yb = vec![0.0; ys.len()];
                max_pool(kernels, &xb, xs, g, &mut yb, 2);
                let mut y = vec![0.0; want.len()];
                from_blocked(&yb, ys, &mut y);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y), bits(&want), "{kernels:?} {c} {h}x{w} k{k} s{st}");
            }
        }
    }
}
