//! Dense k×k convolutions (one group) that write channel-blocked outputs, reading a
//! blocked input or an NCHW one: the network's stem reads its 1- or 3-channel images
//! as they come, without a reorder (as MLAS's NCHW-input kernel does).
//!
//! A register tile is two output blocks × up to 14 output columns of one row (3 at
//! AVX2 and NEON). For each input channel and tap, the two weight vectors are loaded
//! once and each input value is broadcast once, so a tile does `2·T` multiply-adds per
//! `2 + T` loads. Columns whose windows read padding go one at a time, skipping the
//! taps outside.

use super::blocked::{each_chunk, finish, Blocked, Store, Window};
use super::{Kernel, Kernels, Simd, LANES};

/// How the input of [`direct`] is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InputLayout {
    /// `[N, C, H, W]`.
    Nchw,
    /// `[N][⌈C/16⌉][H][W][16]`.
    Blocked,
}

impl InputLayout {
    /// Values per image of an input of shape `xs`.
    fn image_len(self, xs: Blocked) -> usize {
        match self {
            InputLayout::Nchw => xs.c * xs.h * xs.w,
            InputLayout::Blocked => xs.blocks() * xs.h * xs.w * LANES,
        }
    }

    /// Where channel `c`'s value at `(0, 0)` is in an image of `[h, w]`, and the
    /// distance between neighbouring columns.
    #[inline(always)]
    fn channel(self, c: usize, [h, w]: [usize; 2]) -> (usize, usize) {
        match self {
            InputLayout::Nchw => (c * h * w, 1),
            InputLayout::Blocked => ((c / LANES) * h * w * LANES + c % LANES, LANES),
        }
    }
}

/// The weights `[O, C, kh, kw]` as `[⌈O/16⌉][C][kh][kw][16]`, zeros for the padding
/// output channels.
pub(crate) fn pack_direct(weight: &[f32], o: usize, c: usize, kernel: [usize; 2]) -> Vec<f32> {
    let taps = kernel[0] * kernel[1];
    assert_eq!(weight.len(), o * c * taps);
    let mut packed = vec![0.0; o.div_ceil(LANES) * c * taps * LANES];
    for (oc, filter) in weight.chunks_exact(c * taps).enumerate() {
        let (ob, lane) = (oc / LANES, oc % LANES);
        for (i, &v) in filter.iter().enumerate() {
            packed[(ob * c * taps + i) * LANES + lane] = v;
        }
    }
    packed
}

/// The convolution of `x` (shape `xs`, laid out as `layout`) by `weights` (from
/// [`pack_direct`], `out` channels) over the window `g`, into `y` (blocked, `out`
/// channels of the output size of `g`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn direct(
    kernels: Kernels,
    x: &[f32],
    (xs, layout): (Blocked, InputLayout),
    weights: &[f32],
    out: usize,
    g: Window,
    store: Store<'_>,
    y: &mut [f32],
    threads: usize,
) {
    let ys = Blocked {
        c: out,
        h: g.out_size[0],
        w: g.out_size[1],
        ..xs
    };
    let (image, taps, ob) = (layout.image_len(xs), g.kernel[0] * g.kernel[1], ys.blocks());
    let plane = ys.h * ys.w * LANES;
    assert!([xs.h, xs.w] == g.size && x.len() == xs.n * image && y.len() == ys.len());
    assert!(weights.len() == ob * xs.c * taps * LANES);
    assert!(store.scale.len() == ob * LANES && store.shift.len() == ob * LANES);
    assert!(store.residual.is_none_or(|r| r.len() == y.len()));
    // Tasks: an image's output blocks in runs, enough of them for every thread.
    let per_image = if xs.n >= threads {
        1
    } else {
        threads.div_ceil(xs.n.max(1))
    };
    let run = ob.div_ceil(per_image).clamp(1, ob.max(1));
    let tasks = ob.div_ceil(run);
    let task = |i: usize, yt: &mut [f32]| {
        let (n, first) = (i / tasks, (i % tasks) * run);
        let offset = (n * ob + first) * plane;
        kernels.run(DirectTask {
            x: &x[n * image..][..image],
            layout,
            c: xs.c,
            weights,
            g,
            blocks: first..(first + run).min(ob),
            store: store.part(offset, yt.len()),
            y: yt,
        });
    };
    let mut chunks: Vec<&mut [f32]> = Vec::with_capacity(xs.n * tasks);
    for yn in y.chunks_mut(ob * plane) {
        chunks.extend(yn.chunks_mut(run * plane));
    }
    each_chunk(chunks, threads, task);
}

/// One image's output blocks `blocks` of [`direct`], as a [`Kernel`].
struct DirectTask<'a> {
    x: &'a [f32],
    layout: InputLayout,
    c: usize,
    weights: &'a [f32],
    g: Window,
    blocks: std::ops::Range<usize>,
    /// Its residual, if any, is sliced as `y`.
    store: Store<'a>,
    /// The output blocks `blocks`, `[blocks.len()][ho][wo][16]`.
    y: &'a mut [f32],
}

impl Kernel for DirectTask<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let plane = self.g.out_size[0] * self.g.out_size[1] * LANES;
        assert!(self.y.len() == self.blocks.len() * plane);
        let mut b = self.blocks.start;
        while b < self.blocks.end {
            let pair = b + 1 < self.blocks.end;
            let at = (b - self.blocks.start) * plane;
            let tile = Tile {
                x: self.x.as_ptr(),
                layout: self.layout,
                c: self.c,
                w: self.weights.as_ptr(),
                b,
                g: self.g,
                store: self.store,
                // SAFETY: block `b` (and `b + 1` for a pair) are in the task's output.
                y: unsafe { self.y.as_mut_ptr().add(at) },
                residual: self.store.residual.map(|r| r[at..].as_ptr()),
            };
            match (pair, S::PIXELS >= 28) {
                (true, true) => rows::<S, 2, 14>(s, &tile),
                (true, false) => rows::<S, 2, 3>(s, &tile),
                (false, true) => rows::<S, 1, 14>(s, &tile),
                (false, false) => rows::<S, 1, 3>(s, &tile),
            }
            b += if pair { 2 } else { 1 };
        }
    }
}

/// What the tiles of output blocks `b..b + B` of one image share.
struct Tile<'a> {
    x: *const f32,
    layout: InputLayout,
    c: usize,
    w: *const f32,
    b: usize,
    g: Window,
    store: Store<'a>,
    /// Block `b`'s output, `[B][ho][wo][16]`.
    y: *mut f32,
    /// The same place of the residual.
    residual: Option<*const f32>,
}

/// Every output row of blocks `b..b + B`: the inner columns in tiles of `T`, 8, 4, 2
/// and 1, the padding's columns one at a time.
#[inline(always)]
fn rows<S: Simd, const B: usize, const T: usize>(s: S, tile: &Tile<'_>) {
    let (lo, hi) = tile.g.inner_columns();
    let wo = tile.g.out_size[1];
    for oy in 0..tile.g.out_size[0] {
        // SAFETY: `columns` is given inner columns only; `ox < wo` for both.
        unsafe {
            for ox in (0..lo).chain(hi..wo) {
                tile.columns::<S, B, 1>(s, oy, ox, false);
            }
            let mut ox = lo;
            while ox < hi {
                let left = hi - ox;
                ox += if left >= T {
                    tile.columns::<S, B, T>(s, oy, ox, true);
                    T
                } else if T > 8 && left >= 8 {
                    tile.columns::<S, B, 8>(s, oy, ox, true);
                    8
                } else if T > 4 && left >= 4 {
                    tile.columns::<S, B, 4>(s, oy, ox, true);
                    4
                } else if left >= 2 {
                    tile.columns::<S, B, 2>(s, oy, ox, true);
                    2
                } else {
                    tile.columns::<S, B, 1>(s, oy, ox, true);
                    1
                };
            }
        }
    }
}

impl Tile<'_> {
    /// Output columns `ox..ox + T` of row `oy`, blocks `b..b + B`.
    ///
    /// # Safety
    /// `ox + T ≤ wo`, `oy < ho`; when `inner`, every window of the columns lies inside
    /// the image's columns (else `T` is 1 and the taps outside are skipped).
    #[inline(always)]
    unsafe fn columns<S: Simd, const B: usize, const T: usize>(
        &self,
        s: S,
        oy: usize,
        ox: usize,
        inner: bool,
    ) {
        let g = self.g;
        let ([h, w], [ho, wo], [kh, kw], [_, sw], [_, pw]) =
            (g.size, g.out_size, g.kernel, g.stride, g.padding);
        let (top, r0, r1) = g.rows(oy);
        let taps = kh * kw;
        let mut acc = [[s.zero(); T]; B];
        for ci in 0..self.c {
            let (at, col) = self.layout.channel(ci, [h, w]);
            // SAFETY: rows `r0..r1` and the columns checked or inner are inside the
            // image; the weights of blocks `b..b + B` exist.
            unsafe {
                let wc = self.w.add((self.b * self.c + ci) * taps * LANES);
                for r in r0..r1 {
                    let row = self.x.add(at + (top + r as isize) as usize * w * col);
                    for k in 0..kw {
                        let ix = (ox * sw + k) as isize - pw as isize;
                        if !inner && !(0..w as isize).contains(&ix) {
                            continue;
                        }
                        let wv: [S::V; B] = std::array::from_fn(|j| {
                            s.load_ptr(wc.add((j * self.c * taps + r * kw + k) * LANES))
                        });
                        let xp = row.offset(ix * col as isize);
                        for t in 0..T {
                            let xv = s.splat(*xp.add(t * sw * col));
                            for (a, &wj) in acc.iter_mut().zip(&wv) {
                                a[t] = s.fma(wj, xv, a[t]);
                            }
                        }
                    }
                }
            }
        }
        let plane = ho * wo * LANES;
        for (j, a) in acc.iter().enumerate() {
            let lanes = (self.b + j) * LANES;
            // SAFETY: the store's vectors cover every output block; the outputs (and the
            // residual's values) at `(oy, ox + t)` of block `b + j` exist.
            unsafe {
                let affine = (
                    s.load_ptr(self.store.scale.as_ptr().add(lanes)),
                    s.load_ptr(self.store.shift.as_ptr().add(lanes)),
                );
                for (t, &v) in a.iter().enumerate() {
                    let o = j * plane + (oy * wo + ox + t) * LANES;
                    let r = self.residual.map(|r| r.add(o));
                    let v = finish(s, v, affine, self.store.activation, r);
                    s.store_ptr(self.y.add(o), v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::blocked::tests::{close, padded_to_blocks, reference, values};
    use super::super::blocked::{from_blocked, to_blocked};
    use super::*;
    use crate::nn::kernels::every_kernels;
    use crate::nn::runtime::Activation;

    #[test]
    fn direct_matches_the_definition_at_every_level_from_either_layout() {
        // The stem (3 channels, stride 2), one channel, channels off the block, more
        // output blocks than a pair, maps smaller than a tile, no padding, 1×1 strided,
        // a rectangular kernel.
        for (case, (n, c, o, [h, w], [kh, kw], st, pd)) in [
            (2, 3, 32, [17, 19], [3, 3], 2, 1),
            (1, 1, 8, [5, 30], [3, 3], 1, 1),
            (1, 20, 40, [9, 9], [3, 3], 1, 1),
            (2, 16, 48, [4, 3], [3, 3], 2, 1),
            (1, 5, 16, [7, 7], [5, 5], 1, 0),
            (1, 24, 20, [8, 8], [1, 1], 2, 0),
            (1, 3, 17, [6, 11], [1, 3], 1, 1),
        ]
        .into_iter()
        .enumerate()
        {
            let out = |len: usize, k: usize| (len + 2 * pd - k) / st + 1;
            let g = Window {
                kernel: [kh, kw],
                stride: [st, st],
                padding: [pd, pd],
                size: [h, w],
                out_size: [out(h, kh), out(w, kw)],
            };
            let f = Activation::ALL[case % Activation::ALL.len()];
            let xs = Blocked { n, c, h, w };
            let ys = Blocked {
                c: o,
                h: g.out_size[0],
                w: g.out_size[1],
                ..xs
            };
            let residual = (case % 2 == 0).then(|| values(n * o * ys.h * ys.w, 11));
            let x = values(n * c * h * w, 12);
            let weight = values(o * c * kh * kw, 13);
            let scale: Vec<f32> = values(o, 14).iter().map(|v| v + 1.0).collect();
            let shift = values(o, 15);
            let epilogue = (&scale[..], &shift[..], f, residual.as_deref());
            let want = reference(&x, [n, c, h, w], &weight, o, 1, g, epilogue);
            let mut xb = vec![0.0; xs.len()];
            to_blocked(&x, xs, &mut xb);
            let rb = residual.as_ref().map(|r| {
                let mut rb = vec![0.0; ys.len()];
                to_blocked(r, ys, &mut rb);
                rb
            });
            let packed = pack_direct(&weight, o, c, [kh, kw]);
            let (sc, sf) = (padded_to_blocks(&scale, o), padded_to_blocks(&shift, o));
            let store = Store {
                scale: &sc,
                shift: &sf,
                activation: f,
                residual: rb.as_deref(),
            };
            for kernels in every_kernels() {
                for (input, layout) in [(&x, InputLayout::Nchw), (&xb, InputLayout::Blocked)] {
                    for threads in [1, 2] {
                        let mut yb = vec![f32::NAN; ys.len()];
                        let xin = (xs, layout);
                        direct(kernels, input, xin, &packed, o, g, store, &mut yb, threads);
                        let mut y = vec![0.0; want.len()];
                        from_blocked(&yb, ys, &mut y);
                        let what = format!("{kernels:?} {layout:?} case {case} t{threads} {f}");
                        close(&y, &want, &what);
                    }
                }
            }
        }
    }
}
