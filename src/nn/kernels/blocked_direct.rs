//! Dense k×k convolutions (one group) that write channel-blocked outputs, reading a
//! blocked input or an NCHW one: the network's stem reads its 1- or 3-channel images
//! as they come, without a reorder (as MLAS's NCHW-input kernel does).
//!
//! A register tile is two output blocks × up to 14 output columns of one row (3 at
//! AVX2 and NEON). For each input channel and tap, the two weight vectors are loaded
//! once and each input value is broadcast once, so a tile does `2·T` multiply-adds per
//! `2 + T` loads. Columns whose windows read padding go one at a time, skipping the
//! taps outside.

use super::blocked::{activate_stored, each_index, finish, Blocked, SharedOut, Store};
use super::geometry::Geometry;
use super::{Kernel, Kernels, Simd, LANES};
use crate::nn::runtime::{buffer, recycle_buffer, team};

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
///
/// With padding, the kernel runs on a copy of `x` with the padding's zeros in it: every
/// column is then inside the image, and every row is cut into whole register tiles
/// (on 14 × 14 maps, one tile of 14 instead of tiles of 8, 4, 1 and 1).
#[allow(clippy::too_many_arguments)]
pub(crate) fn direct(
    kernels: Kernels,
    x: &[f32],
    (xs, layout, groups): (Blocked, InputLayout, usize),
    weights: &[f32],
    out: usize,
    g: Geometry,
    store: Store<'_>,
    y: &mut [f32],
    threads: usize,
) {
    assert!(x.len() == xs.n * layout.image_len(xs));
    let padded = (g.padding != [0, 0]).then(|| pad(x, xs, layout, g.padding, threads));
    let (x, xs, g) = match &padded {
        Some((values, ps)) => {
            let g = Geometry {
                padding: [0, 0],
                size: [ps.h, ps.w],
                ..g
            };
            (&values[..ps.n * layout.image_len(*ps)], *ps, g)
        }
        None => (x, xs, g),
    };
    let ys = Blocked {
        c: out,
        h: g.out_size[0],
        w: g.out_size[1],
        ..xs
    };
    let (image, taps, ob) = (layout.image_len(xs), g.kernel[0] * g.kernel[1], ys.blocks());
    let plane = ys.h * ys.w * LANES;
    assert!([xs.h, xs.w] == g.size && x.len() == xs.n * image && y.len() == ys.len());
    // With groups, each group's input and output channels are whole blocks.
    let (gi, go) = (xs.c / groups.max(1), out / groups.max(1));
    assert!(groups == 1 || (gi % LANES == 0 && go % LANES == 0 && gi * groups == xs.c));
    assert!(weights.len() == ob * gi * taps * LANES);
    assert!(store.scale.len() == ob * LANES && store.shift.len() == ob * LANES);
    assert!(store.residual.is_none_or(|r| r.len() == y.len()));
    // Tasks: an image's output blocks in runs, enough of them for every thread; and
    // when the runs alone do not give each thread two tasks (one image, few blocks),
    // the output rows in parts too (of even counts: maps 7 wide take rows in pairs).
    let per_image = if xs.n >= threads {
        1
    } else {
        threads.div_ceil(xs.n.max(1))
    };
    let run = ob.div_ceil(per_image).clamp(1, ob.max(1));
    let tasks = ob.div_ceil(run);
    let wanted = if threads > 1 && xs.n * tasks < 2 * threads {
        (2 * threads).div_ceil((xs.n * tasks).max(1))
    } else {
        1
    };
    let part = ys.h.div_ceil(wanted).div_ceil(2).max(1) * 2;
    let parts = ys.h.div_ceil(part).max(1);
    // Where each (input channel, kernel row, kernel column) reads, from the input of the
    // window's top left corner: the tiles then sum over one flat list of taps, as the
    // 1×1 kernel sums over channels.
    let pos = layout.channel(0, [xs.h, xs.w]).1;
    let mut offsets = Vec::with_capacity(gi * taps);
    for ci in 0..gi {
        let at = layout.channel(ci, [xs.h, xs.w]).0;
        for r in 0..g.kernel[0] {
            for k in 0..g.kernel[1] {
                offsets.push(at + (r * xs.w + k) * pos);
            }
        }
    }
    let offsets = &offsets[..];
    let yp = SharedOut(y.as_mut_ptr());
    each_index(xs.n * tasks * parts, threads, |i| {
        let (n, rest) = (i / (tasks * parts), i % (tasks * parts));
        let (first, row) = ((rest / parts) * run, (rest % parts) * part);
        let blocks = first..(first + run).min(ob);
        let offset = (n * ob + first) * plane;
        kernels.run(DirectTask {
            x: &x[n * image..][..image],
            layout,
            offsets,
            group: (gi, go),
            weights,
            g,
            rows: row..(row + part).min(ys.h),
            store: store.part(offset, blocks.len() * plane),
            // SAFETY: the run's blocks of image `n` are inside `y`; the tasks write
            // disjoint rows of them.
            y: unsafe { yp.at(offset) },
            blocks,
        });
    });
    if let Some((values, _)) = padded {
        recycle_buffer(values);
    }
}

/// One image's output blocks `blocks` of [`direct`], as a [`Kernel`].
struct DirectTask<'a> {
    x: &'a [f32],
    layout: InputLayout,
    /// Each tap's input offset from the window's corner, `[C][kh][kw]`.
    offsets: &'a [usize],
    /// Input and output channels per group.
    group: (usize, usize),
    weights: &'a [f32],
    g: Geometry,
    blocks: std::ops::Range<usize>,
    /// The output rows it computes, of each block.
    rows: std::ops::Range<usize>,
    /// Its residual, if any, is sliced as `y`.
    store: Store<'a>,
    /// The output blocks `blocks`, `[blocks.len()][ho][wo][16]`, of which the task
    /// writes rows `rows` only.
    y: *mut f32,
}

impl Kernel for DirectTask<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let plane = self.g.out_size[0] * self.g.out_size[1] * LANES;
        assert!(self.rows.end <= self.g.out_size[0]);
        assert!(self
            .store
            .residual
            .is_none_or(|r| r.len() == self.blocks.len() * plane));
        let mut b = self.blocks.start;
        while b < self.blocks.end {
            // A pair of blocks of the same group.
            let (gi, go) = self.group;
            // Only where the registers hold two blocks' tiles (AVX-512): with AVX2's
            // and NEON's, one block of 6 columns fits, two of 3 spill (as in the 1x1
            // kernel).
            let pair = b + 1 < self.blocks.end
                && (b + 1) * LANES / go == b * LANES / go
                && S::PIXELS >= 28;
            // Where the group's input channels start.
            let shift = self.layout.channel((b * LANES / go) * gi, self.g.size).0;
            let at = (b - self.blocks.start) * plane;
            let tile = Tile {
                x: self.x.as_ptr(),
                pos: self.layout.channel(0, self.g.size).1,
                offsets: self.offsets,
                shift,
                w: self.weights.as_ptr(),
                b,
                g: self.g,
                store: self.store,
                // SAFETY: block `b` (and `b + 1` for a pair) are in the task's output.
                y: unsafe { self.y.add(at) },
                rows: self.rows.clone(),
                residual: self.store.residual.map(|r| r[at..].as_ptr()),
            };
            // The distance between neighbouring output columns' inputs, as a constant
            // for the common cases (blocks at stride 1 and 2) so that the tile's loads
            // use immediate offsets.
            let step = self.g.stride[1] * self.layout.channel(0, self.g.size).1;
            match (pair, S::PIXELS >= 28, step) {
                (true, _, 16) => rows::<S, 2, 14, 16>(s, &tile),
                (true, _, 32) => rows::<S, 2, 14, 32>(s, &tile),
                (true, _, _) => rows::<S, 2, 14, 0>(s, &tile),
                (false, true, 16) => rows::<S, 1, 14, 16>(s, &tile),
                (false, true, 32) => rows::<S, 1, 14, 32>(s, &tile),
                (false, true, _) => rows::<S, 1, 14, 0>(s, &tile),
                (false, false, 16) => rows::<S, 1, 6, 16>(s, &tile),
                (false, false, 32) => rows::<S, 1, 6, 32>(s, &tile),
                (false, false, _) => rows::<S, 1, 6, 0>(s, &tile),
            }
            b += if pair { 2 } else { 1 };
        }
    }
}

/// What the tiles of output blocks `b..b + B` of one image share.
struct Tile<'a> {
    x: *const f32,
    /// The distance between neighbouring positions of the input.
    pos: usize,
    /// Each tap's input offset from the window's corner, `[C][kh][kw]`, for the first
    /// group.
    offsets: &'a [usize],
    /// Where the group of blocks `b..b + B` starts, from the first group.
    shift: usize,
    w: *const f32,
    b: usize,
    g: Geometry,
    store: Store<'a>,
    /// Block `b`'s output, `[B][ho][wo][16]`.
    y: *mut f32,
    /// The output rows to compute.
    rows: std::ops::Range<usize>,
    /// The same place of the residual.
    residual: Option<*const f32>,
}

/// The tile's output rows of blocks `b..b + B`, in tiles of `T`, 8, 4, 2 and 1
/// columns; on maps 7 wide (and `T` = 14), pairs of rows in tiles of 2 × 7. `STEP`,
/// when not 0, is the distance between neighbouring output columns' inputs.
#[inline(always)]
fn rows<S: Simd, const B: usize, const T: usize, const STEP: usize>(s: S, tile: &Tile<'_>) {
    let wo = tile.g.out_size[1];
    let (mut oy, ho) = (tile.rows.start, tile.rows.end);
    if T == 14 && wo == 7 {
        while oy + 2 <= ho {
            // SAFETY: rows `oy..oy + 2`, all 7 columns, are inside the output.
            unsafe { tile.columns::<S, B, 14, 2, STEP>(s, oy, 0) };
            oy += 2;
        }
    }
    while oy < ho {
        let mut ox = 0;
        while ox < wo {
            let left = wo - ox;
            // SAFETY: each tile's columns are at most the `left` ones of row `oy`.
            ox += unsafe {
                if left >= T {
                    tile.columns::<S, B, T, 1, STEP>(s, oy, ox);
                    T
                } else if T > 8 && left >= 8 {
                    tile.columns::<S, B, 8, 1, STEP>(s, oy, ox);
                    8
                } else if T > 4 && left >= 4 {
                    tile.columns::<S, B, 4, 1, STEP>(s, oy, ox);
                    4
                } else if left >= 2 {
                    tile.columns::<S, B, 2, 1, STEP>(s, oy, ox);
                    2
                } else {
                    tile.columns::<S, B, 1, 1, STEP>(s, oy, ox);
                    1
                }
            };
        }
        oy += 1;
    }
}

impl Tile<'_> {
    /// The sums of the tile whose first and last rows' window corners are `corners`
    /// (`cols` columns each, `step` apart in the input), over every tap of every input
    /// channel, for blocks `b..b + B`.
    ///
    /// # Safety
    /// Every window of the tile is inside the image.
    #[inline(always)]
    unsafe fn sums<S: Simd, const B: usize, const T: usize, const R: usize>(
        &self,
        s: S,
        (first, second): (usize, usize),
        cols: usize,
        step: usize,
    ) -> [[S::V; T]; B] {
        let taps = self.offsets.len();
        let (x, w) = (self.x, self.w.wrapping_add(self.b * taps * LANES));
        let mut acc = [[s.zero(); T]; B];
        for (v, &offset) in self.offsets.iter().enumerate() {
            // SAFETY: the caller's windows are inside the image; the weights of blocks
            // `b..b + B` exist.
            unsafe {
                let mut wv = [s.zero(); B];
                for (j, wj) in wv.iter_mut().enumerate() {
                    *wj = s.load_ptr(w.add((j * taps + v) * LANES));
                }
                let (first, second) = (x.add(first + offset), x.add(second + offset));
                for t in 0..T {
                    // Columns of the first row, then of the second (R = 2).
                    let xp = if t < cols {
                        first.add(t * step)
                    } else {
                        second.add((t - cols) * step)
                    };
                    let xv = s.splat(*xp);
                    for (a, &wj) in acc.iter_mut().zip(&wv) {
                        a[t] = s.fma(wj, xv, a[t]);
                    }
                }
            }
        }
        acc
    }

    /// Output rows `oy..oy + R`, columns `ox..ox + T / R` of each, blocks `b..b + B`.
    ///
    /// # Safety
    /// The window has no padding; `oy + R ≤ ho`, `ox + T / R ≤ wo`; `STEP` is 0 or the
    /// distance between neighbouring output columns' inputs.
    #[inline(always)]
    unsafe fn columns<
        S: Simd,
        const B: usize,
        const T: usize,
        const R: usize,
        const STEP: usize,
    >(
        &self,
        s: S,
        oy: usize,
        ox: usize,
    ) {
        let g = self.g;
        let ([_, w], [ho, wo], [sh, sw]) = (g.size, g.out_size, g.stride);
        let (cols, pos) = (T / R, self.pos);
        let step = if STEP > 0 { STEP } else { sw * pos };
        // The window corners of the tile's first and last row.
        let corner = |i: usize| self.shift + ((oy + i) * sh * w + ox * sw) * pos;
        let (first, second) = (corner(0), corner(R - 1));
        // SAFETY: the windows of the tile's outputs are inside the image.
        let acc = unsafe { self.sums::<S, B, T, R>(s, (first, second), cols, step) };
        let plane = ho * wo * LANES;
        let at = |j: usize, t: usize| j * plane + ((oy + t / cols) * wo + ox + t % cols) * LANES;
        for (j, a) in acc.iter().enumerate() {
            let lanes = (self.b + j) * LANES;
            // SAFETY: the store's vectors cover every output block; the outputs (and the
            // residual's values) of the tile in block `b + j` exist.
            unsafe {
                let affine = (
                    s.load_ptr(self.store.scale.as_ptr().add(lanes)),
                    s.load_ptr(self.store.shift.as_ptr().add(lanes)),
                );
                for (t, &v) in a.iter().enumerate() {
                    let o = at(j, t);
                    let r = self.residual.map(|r| r.add(o));
                    s.store_ptr(self.y.add(o), finish(s, v, affine, r));
                }
            }
        }
        for j in 0..B {
            for i in 0..R {
                // SAFETY: the `cols` outputs of row `oy + i` of block `b + j` just stored.
                unsafe {
                    let y = self.y.add(at(j, i * cols));
                    activate_stored(s, self.store.activation, y, cols);
                }
            }
        }
    }
}

/// `x` (shape `xs`, laid out as `layout`) with `[ph, pw]` rows and columns of zeros
/// around each plane, in a pooled buffer, and its shape; on `threads` threads by planes
/// and, when planes are few (one image), by bands of rows: each thread then copies about
/// the rows it computes next.
fn pad(
    x: &[f32],
    xs: Blocked,
    layout: InputLayout,
    [ph, pw]: [usize; 2],
    threads: usize,
) -> (Vec<f32>, Blocked) {
    let ps = Blocked {
        h: xs.h + 2 * ph,
        w: xs.w + 2 * pw,
        ..xs
    };
    let (planes, lanes) = match layout {
        InputLayout::Nchw => (xs.n * xs.c, 1),
        InputLayout::Blocked => (xs.n * xs.blocks(), LANES),
    };
    let mut y = buffer(ps.n * layout.image_len(ps));
    let (row, prow) = (xs.w * lanes, ps.w * lanes);
    let (plane, pplane) = (xs.h * row, ps.h * prow);
    // Worth splitting from a few pages of copying up.
    let threads = if planes * pplane >= 1 << 14 || team::leads(2) {
        threads
    } else {
        1
    };
    let bands = match threads {
        1 => 1,
        _ => (2 * threads).div_ceil(planes.max(1)).min(ps.h.max(1)),
    };
    let per_band = ps.h.div_ceil(bands).max(1);
    let out = SharedOut(y.as_mut_ptr());
    each_index(planes * bands, threads, |i| {
        let (p, band) = (i / bands, i % bands);
        let src = &x[p * plane..][..plane];
        for r in band * per_band..((band + 1) * per_band).min(ps.h) {
            // SAFETY: row `r` of plane `p` is inside `y`, and this task's alone.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(out.at(p * pplane + r * prow), prow) };
            match r.checked_sub(ph).filter(|r| *r < xs.h) {
                Some(r) => {
                    dst[..pw * lanes].fill(0.0);
                    dst[pw * lanes..][..row].copy_from_slice(&src[r * row..][..row]);
                    dst[(pw + xs.w) * lanes..].fill(0.0);
                }
                None => dst.fill(0.0),
            }
        }
    });
    (y, ps)
}

#[cfg(test)]
mod tests {
    use super::super::blocked::from_blocked;
    use super::super::blocked::tests::{blocks, close, reference, values, TestEpilogue};
    use super::*;
    use crate::nn::kernels::every_kernels;
    use crate::nn::runtime::Activation;

    #[test]
    fn direct_matches_the_definition_at_every_level_from_either_layout() {
        // The stem (3 channels, stride 2), one channel, channels off the block, more
        // output blocks than a pair, maps smaller than a tile, no padding, 1×1 strided,
        // a rectangular kernel, a map 7 wide.
        for (case, (n, c, o, [h, w], [kh, kw], st, pd, groups)) in [
            (2, 3, 32, [17, 19], [3, 3], 2, 1, 1),
            (1, 1, 8, [5, 30], [3, 3], 1, 1, 1),
            (1, 20, 40, [9, 9], [3, 3], 1, 1, 1),
            (2, 16, 48, [4, 3], [3, 3], 2, 1, 1),
            (1, 5, 16, [7, 7], [5, 5], 1, 0, 1),
            (1, 24, 20, [8, 8], [1, 1], 2, 0, 1),
            (1, 3, 17, [6, 11], [1, 3], 1, 1, 1),
            // 7 wide: pairs of rows in one tile, and the odd row after them.
            (2, 20, 24, [7, 7], [3, 3], 1, 1, 1),
            // Groups of whole blocks: one block per group (RegNet), and two output
            // blocks per group of one input block, stride 2.
            (2, 48, 48, [7, 9], [3, 3], 1, 1, 3),
            (1, 32, 64, [9, 8], [3, 3], 2, 1, 2),
            // One plane large enough to pad in bands of rows on two threads.
            (1, 16, 16, [33, 31], [3, 3], 1, 1, 1),
        ]
        .into_iter()
        .enumerate()
        {
            let out = |len: usize, k: usize| (len + 2 * pd - k) / st + 1;
            let g = Geometry::window(
                c,
                [kh, kw],
                [st, st],
                [pd, pd],
                [h, w],
                [out(h, kh), out(w, kw)],
            )
            .with_channels(c, o, groups);
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
            let weight = values(o * (c / groups) * kh * kw, 13);
            let epilogue = TestEpilogue::new(ys, (14, 15), residual);
            let want = reference(
                &x,
                [n, c, h, w],
                &weight,
                o,
                groups,
                g,
                epilogue.reference(f),
            );
            let xb = blocks(&x, xs);
            let packed = pack_direct(&weight, o, c / groups, [kh, kw]);
            let store = epilogue.store(f);
            for kernels in every_kernels() {
                for (input, layout) in [(&x, InputLayout::Nchw), (&xb, InputLayout::Blocked)] {
                    for threads in [1, 2] {
                        let mut yb = vec![f32::NAN; ys.len()];
                        let xin = (xs, layout, groups);
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
