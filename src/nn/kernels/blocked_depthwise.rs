//! The depthwise convolution on channel-blocked activations: one filter per channel,
//! sixteen channels per vector, a row of outputs in registers, every tap one vector
//! load of the input. The store applies `y = f(y·scale + shift)` per channel.

use super::blocked::{activate_stored, each_index, finish, Blocked, SharedOut, Store};
use super::geometry::Geometry;
use super::{Kernel, Kernels, Simd, LANES};
use crate::nn::runtime::Activation;

/// The weights `[C, 1, kh, kw]` of a depthwise convolution as `[⌈C/16⌉][kh][kw][16]`.
pub(crate) fn pack_depthwise(weight: &[f32], c: usize, kernel: [usize; 2]) -> Vec<f32> {
    let taps = kernel[0] * kernel[1];
    assert_eq!(weight.len(), c * taps);
    let mut packed = vec![0.0; c.div_ceil(LANES) * taps * LANES];
    for (ch, filter) in weight.chunks_exact(taps).enumerate() {
        for (k, &v) in filter.iter().enumerate() {
            packed[((ch / LANES) * taps + k) * LANES + ch % LANES] = v;
        }
    }
    packed
}

/// A depthwise convolution of `x` (blocked, shape `xs`) by `weights` (from
/// [`pack_depthwise`]) into `y` (blocked, the output size of `g`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise(
    kernels: Kernels,
    x: &[f32],
    xs: Blocked,
    weights: &[f32],
    g: Geometry,
    store: Store<'_>,
    y: &mut [f32],
    threads: usize,
) {
    let blocks = xs.blocks();
    let (plane_in, plane_out) = (xs.h * xs.w * LANES, g.out_size[0] * g.out_size[1] * LANES);
    let taps = g.kernel[0] * g.kernel[1] * LANES;
    assert!([xs.h, xs.w] == g.size && x.len() == xs.len());
    assert!(y.len() == xs.n * blocks * plane_out && weights.len() == blocks * taps);
    assert!(
        store.residual.is_none(),
        "a depthwise store adds no residual"
    );
    // Fewer images than threads: the planes in bands of output rows too, band-major,
    // so that each thread takes about the same rows of every plane (the positions
    // the 1×1 kernels around it give it).
    let planes = xs.n * blocks;
    let ho = g.out_size[0];
    let bands = match threads > 1 && (1..threads).contains(&xs.n) {
        true => threads.div_ceil(xs.n).min(ho.max(1)),
        false => 1,
    };
    let per_band = ho.div_ceil(bands).max(1);
    let out = SharedOut(y.as_mut_ptr());
    each_index(planes * bands, threads, |i| {
        let (band, p) = (i / planes.max(1), i % planes.max(1));
        let cb = p % blocks;
        kernels.run(DepthwisePlane {
            x: &x[p * plane_in..][..plane_in],
            w: &weights[cb * taps..][..taps],
            g,
            scale: &store.scale[cb * LANES..][..LANES],
            shift: &store.shift[cb * LANES..][..LANES],
            activation: store.activation,
            rows: band * per_band..((band + 1) * per_band).min(ho),
            // SAFETY: plane `p` is inside `y`; the task writes rows `rows` of it, which
            // no other task writes.
            y: unsafe { out.at(p * plane_out) },
        })
    });
}

/// One block of sixteen channels of one image of [`depthwise`], as a [`Kernel`].
struct DepthwisePlane<'a> {
    /// `[h][w][16]`.
    x: &'a [f32],
    /// `[kh][kw][16]`.
    w: &'a [f32],
    g: Geometry,
    scale: &'a [f32],
    shift: &'a [f32],
    activation: Activation,
    /// The output rows to compute.
    rows: std::ops::Range<usize>,
    /// The output plane `[ho][wo][16]`, of which rows `rows` are written.
    y: *mut f32,
}

impl Kernel for DepthwisePlane<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        if S::PIXELS >= 28 {
            depthwise_plane::<S, 14>(s, self)
        } else {
            depthwise_plane::<S, 3>(s, self)
        }
    }
}

/// [`DepthwisePlane`] with up to `T` output pixels of a row in registers. Columns whose
/// window lies inside the image go in blocks of `T`, 8, 4, 2 and 1 without checks;
/// the others (the padding's) one at a time, skipping the taps outside.
#[inline(always)]
fn depthwise_plane<S: Simd, const T: usize>(s: S, p: DepthwisePlane<'_>) {
    let g = p.g;
    let ([h, w], [ho, wo]) = (g.size, g.out_size);
    let [kh, kw] = g.kernel;
    assert!(p.x.len() == h * w * LANES && p.rows.end <= ho);
    assert!(p.w.len() == kh * kw * LANES);
    let scale = s.load(p.scale.try_into().expect("16 lanes"));
    let shift = s.load(p.shift.try_into().expect("16 lanes"));
    let row = DepthwiseRow {
        x: p.x.as_ptr(),
        w: p.w.as_ptr(),
        y: p.y,
        g,
        scale,
        shift,
        activation: p.activation,
    };
    // Columns `lo..hi` read no padding.
    let (lo, hi) = g.inner_columns();
    for oy in p.rows {
        // The kernel rows `r0..r1` fall inside the image.
        let (top, r0, r1) = g.rows(oy);
        let rows = (oy, top, r0, r1);
        // SAFETY: the rows are the image's; `columns` checks the padding's columns
        // and `lo..hi` read inside the image.
        unsafe {
            for ox in (0..lo).chain(hi..wo) {
                row.checked(s, rows, ox);
            }
            let mut ox = lo;
            while ox < hi {
                let left = hi - ox;
                ox += if left >= T {
                    row.columns::<T>(s, rows, ox);
                    T
                } else if T > 8 && left >= 8 {
                    row.columns::<8>(s, rows, ox);
                    8
                } else if T > 4 && left >= 4 {
                    row.columns::<4>(s, rows, ox);
                    4
                } else if left >= 2 {
                    row.columns::<2>(s, rows, ox);
                    2
                } else {
                    row.columns::<1>(s, rows, ox);
                    1
                };
            }
        }
    }
}

/// What every output row of one depthwise plane shares.
struct DepthwiseRow<S: Simd> {
    x: *const f32,
    w: *const f32,
    y: *mut f32,
    g: Geometry,
    scale: S::V,
    shift: S::V,
    activation: Activation,
}

impl<S: Simd> DepthwiseRow<S> {
    #[inline(always)]
    fn finish(&self, s: S, v: S::V) -> S::V {
        // SAFETY: no residual.
        unsafe { finish(s, v, (self.scale, self.shift), None) }
    }

    /// Output pixel `(oy, ox)`, checking every tap's column.
    ///
    /// # Safety
    /// Kernel rows `r0..r1` read image rows `top + r`; `(oy, ox)` is an output pixel.
    #[inline(always)]
    unsafe fn checked(&self, s: S, (oy, top, r0, r1): (usize, isize, usize, usize), ox: usize) {
        let g = self.g;
        let ([_, w], [_, wo], [_, kw], [_, sw], [_, pw]) =
            (g.size, g.out_size, g.kernel, g.stride, g.padding);
        let mut acc = s.zero();
        for r in r0..r1 {
            let iy = (top + r as isize) as usize;
            for k in 0..kw {
                let ix = (ox * sw + k) as isize - pw as isize;
                if (0..w as isize).contains(&ix) {
                    // SAFETY: `(iy, ix)` is inside the image, `(r, k)` a tap.
                    unsafe {
                        let xv = s.load_ptr(self.x.add((iy * w + ix as usize) * LANES));
                        let wv = s.load_ptr(self.w.add((r * kw + k) * LANES));
                        acc = s.fma(wv, xv, acc);
                    }
                }
            }
        }
        // SAFETY: `(oy, ox)` is an output pixel.
        unsafe {
            let y = self.y.add((oy * wo + ox) * LANES);
            s.store_ptr(y, self.finish(s, acc));
            activate_stored(s, self.activation, y, 1);
        }
    }

    /// Output pixels `(oy, ox..ox + T)`, whose windows lie inside the image's columns.
    ///
    /// # Safety
    /// As [`DepthwiseRow::checked`], and `ox * sw ≥ pw`, `(ox + T − 1)·sw + kw ≤ w + pw`,
    /// `ox + T ≤ wo`.
    #[inline(always)]
    unsafe fn columns<const T: usize>(
        &self,
        s: S,
        (oy, top, r0, r1): (usize, isize, usize, usize),
        ox: usize,
    ) {
        let g = self.g;
        let ([_, w], [_, wo], [_, kw], [_, sw], [_, pw]) =
            (g.size, g.out_size, g.kernel, g.stride, g.padding);
        let mut acc = [s.zero(); T];
        for r in r0..r1 {
            let iy = (top + r as isize) as usize;
            for k in 0..kw {
                // SAFETY: the caller's columns and rows are inside the image.
                unsafe {
                    let wv = s.load_ptr(self.w.add((r * kw + k) * LANES));
                    let row = self.x.add((iy * w + ox * sw + k - pw) * LANES);
                    for (t, a) in acc.iter_mut().enumerate() {
                        *a = s.fma(wv, s.load_ptr(row.add(t * sw * LANES)), *a);
                    }
                }
            }
        }
        for (t, &a) in acc.iter().enumerate() {
            // SAFETY: `ox + t < wo`.
            unsafe { s.store_ptr(self.y.add((oy * wo + ox + t) * LANES), self.finish(s, a)) };
        }
        // SAFETY: the `T` outputs just stored.
        unsafe { activate_stored(s, self.activation, self.y.add((oy * wo + ox) * LANES), T) };
    }
}

#[cfg(test)]
mod tests {
    use super::super::blocked::from_blocked;
    use super::super::blocked::tests::{blocks, close, reference, values, TestEpilogue};
    use super::*;
    use crate::nn::kernels::every_kernels;
    use crate::nn::runtime::Activation;

    #[test]
    fn depthwise_matches_the_definition_at_every_level() {
        // 3×3 and 5×5, strides 1 and 2, maps narrower than a register block and wider,
        // channels off the block, no padding.
        for (n, c, h, w, k, st, pd) in [
            (2, 24, 7, 7, 3, 1, 1),
            (1, 16, 14, 30, 3, 2, 1),
            (1, 40, 9, 20, 5, 1, 2),
            (2, 16, 15, 15, 5, 2, 2),
            (1, 1, 5, 3, 3, 1, 0),
            (1, 32, 2, 2, 3, 1, 1),
        ] {
            let (ho, wo) = ((h + 2 * pd - k) / st + 1, (w + 2 * pd - k) / st + 1);
            let g = Geometry::window(c, [k, k], [st, st], [pd, pd], [h, w], [ho, wo]);
            let x = values(n * c * h * w, 6);
            let weight = values(c * k * k, 7);
            let xs = Blocked { n, c, h, w };
            let ys = Blocked { h: ho, w: wo, ..xs };
            let epilogue = TestEpilogue::new(ys, (8, 9), None);
            for f in [Activation::Identity, Activation::Relu6, Activation::Silu] {
                let want = reference(&x, [n, c, h, w], &weight, c, c, g, epilogue.reference(f));
                let xb = blocks(&x, xs);
                let packed = pack_depthwise(&weight, c, [k, k]);
                for kernels in every_kernels() {
                    let mut yb = vec![f32::NAN; ys.len()];
                    let store = epilogue.store(f);
                    depthwise(kernels, &xb, xs, &packed, g, store, &mut yb, 2);
                    let mut y = vec![0.0; want.len()];
                    from_blocked(&yb, ys, &mut y);
                    close(
                        &y,
                        &want,
                        &format!("{kernels:?} {c} {h}x{w} k{k} s{st} p{pd} {f}"),
                    );
                }
            }
        }
    }
}
