//! Kernels on channel-blocked activations: `[N][⌈C/16⌉][H][W][16]` ("NCHW16c"), the
//! sixteen channels of a block in the lanes of one [`Simd`] group and the channels past
//! `C` zero.
//!
//! In this layout every kernel keeps channels in lanes and never transposes:
//!
//! - [`pointwise`]: a 1×1 convolution is one product over all the positions of the
//!   image, in register blocks of two output blocks × up to 14 positions (AVX-512; 3
//!   at AVX2 and NEON), each input value broadcast once per block and each weight
//!   vector used by every position of it; the input channels are taken in chunks of
//!   [`CHUNK`] so that a chunk of the image and of the weights stay in cache;
//! - [`depthwise`]: one filter per channel, sixteen channels per vector, a row of
//!   outputs in registers, every tap one vector load of the input;
//! - [`to_blocked`] / [`from_blocked`]: the reorders at the boundaries with NCHW.
//!
//! Both kernels apply `y = relu?(y·scale + shift)` per output channel as they store.
//! They are the candidates that `docs/engine.md` measures against the NCHW engine.

use super::activation::activate;
use super::{Kernel, Kernels, Simd, LANES};
use crate::nn::runtime::Activation;
use rayon::prelude::*;

/// Input channels per pass of [`pointwise`]: 256 channels of 14 positions (14 KiB) and
/// of two output blocks' weights (32 KiB) stay in the level-1 and level-2 caches.
const CHUNK: usize = 256;

/// The shape of a channel-blocked tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Blocked {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Blocked {
    /// Blocks of sixteen channels, the last one padded with zero channels.
    pub(crate) fn blocks(&self) -> usize {
        self.c.div_ceil(LANES)
    }

    /// Values of the blocked tensor.
    pub(crate) fn len(&self) -> usize {
        self.n * self.blocks() * self.h * self.w * LANES
    }
}

/// `x` (`[N, C, H, W]`) into `y` in the blocked layout of `s`.
pub(crate) fn to_blocked(x: &[f32], s: Blocked, y: &mut [f32]) {
    let hw = s.h * s.w;
    assert!(x.len() == s.n * s.c * hw && y.len() == s.len());
    let per_block = hw * LANES;
    y.par_chunks_mut(per_block.max(1))
        .enumerate()
        .for_each(|(i, yb)| {
            let (n, cb) = (i / s.blocks(), i % s.blocks());
            let lanes = (s.c - cb * LANES).min(LANES);
            if lanes < LANES {
                yb.fill(0.0);
            }
            for l in 0..lanes {
                let plane = &x[(n * s.c + cb * LANES + l) * hw..][..hw];
                for (p, &v) in plane.iter().enumerate() {
                    yb[p * LANES + l] = v;
                }
            }
        });
}

/// `x` in the blocked layout of `s` into `y` (`[N, C, H, W]`).
pub(crate) fn from_blocked(x: &[f32], s: Blocked, y: &mut [f32]) {
    let hw = s.h * s.w;
    assert!(y.len() == s.n * s.c * hw && x.len() == s.len());
    y.par_chunks_mut(hw.max(1))
        .enumerate()
        .for_each(|(i, plane)| {
            let (n, c) = (i / s.c, i % s.c);
            let block = &x[((n * s.blocks() + c / LANES) * hw) * LANES..][..hw * LANES];
            for (p, v) in plane.iter_mut().enumerate() {
                *v = block[p * LANES + c % LANES];
            }
        });
}

/// What a kernel does to each output value as it stores it: per output channel,
/// `y = f(y·scale + shift + r)`, where `r` is the value at the same place of `residual`
/// (0 without one). `scale` and `shift` cover whole blocks (zeros past the channel
/// count); `residual` is blocked, of the output's shape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Store<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub activation: Activation,
    pub residual: Option<&'a [f32]>,
}

impl<'a> Store<'a> {
    /// The store of `len` output values from `offset`: the residual sliced to them.
    pub(crate) fn part(self, offset: usize, len: usize) -> Store<'a> {
        Store {
            residual: self.residual.map(|r| &r[offset..][..len]),
            ..self
        }
    }
}

/// `v·scale + shift + r`, `r` read at `residual` when there is one: the store's affine
/// map and residual. Its activation is a second sweep ([`activate_stored`]).
///
/// # Safety
/// `residual`, when given, points to sixteen readable values.
#[inline(always)]
pub(crate) unsafe fn finish<S: Simd>(
    s: S,
    v: S::V,
    (scale, shift): (S::V, S::V),
    residual: Option<*const f32>,
) -> S::V {
    let v = s.fma(v, scale, shift);
    match residual {
        // SAFETY: the caller's contract.
        Some(r) => s.add(v, unsafe { s.load_ptr(r) }),
        None => v,
    }
}

/// Applies `f` in place to the `count` vectors of sixteen values from `p`: the
/// store's activation, as a second sweep over a tile just stored (still in cache), so
/// that its code does not compete with the tile's accumulators for registers (inline,
/// it made the 1×1 kernel 2.4× slower).
///
/// # Safety
/// `p..p + 16·count` is readable and writable.
#[inline(always)]
pub(crate) unsafe fn activate_stored<S: Simd>(s: S, f: Activation, p: *mut f32, count: usize) {
    if f == Activation::Identity {
        return;
    }
    for i in 0..count {
        // SAFETY: the caller's contract.
        unsafe {
            let at = p.add(i * LANES);
            s.store_ptr(at, activate(s, f, s.load_ptr(at)));
        }
    }
}

/// The weights `[O, C]` of a 1×1 convolution as `[⌈O/16⌉][⌈C/16⌉·16][16]`, zeros for
/// the padding channels.
pub(crate) fn pack_pointwise(weight: &[f32], o: usize, c: usize) -> Vec<f32> {
    assert_eq!(weight.len(), o * c);
    let cin = c.div_ceil(LANES) * LANES;
    let mut packed = vec![0.0; o.div_ceil(LANES) * cin * LANES];
    for (oc, row) in weight.chunks_exact(c).enumerate() {
        let (ob, lane) = (oc / LANES, oc % LANES);
        for (ic, &v) in row.iter().enumerate() {
            packed[(ob * cin + ic) * LANES + lane] = v;
        }
    }
    packed
}

/// A 1×1 stride-1 convolution of `x` (blocked, shape `xs`) by `weights` (from
/// [`pack_pointwise`], `out` channels) into `y` (blocked, `out` channels, same size).
// The engine's plan will pass a call value instead (issue 27's next step).
#[allow(clippy::too_many_arguments)]
pub(crate) fn pointwise(
    kernels: Kernels,
    x: &[f32],
    xs: Blocked,
    weights: &[f32],
    out: usize,
    store: Store<'_>,
    y: &mut [f32],
    threads: usize,
) {
    let ys = Blocked { c: out, ..xs };
    let (hw, cin, ob) = (xs.h * xs.w, xs.blocks() * LANES, ys.blocks());
    assert!(x.len() == xs.len() && y.len() == ys.len());
    assert!(weights.len() == ob * cin * LANES);
    assert!(store.scale.len() == ob * LANES && store.shift.len() == ob * LANES);
    assert!(store.residual.is_none_or(|r| r.len() == y.len()));
    // Tasks: an image's output blocks in runs, enough of them for every thread; and
    // when the runs alone do not give each thread two tasks (one image, few blocks),
    // the positions in parts too.
    let per_image = if xs.n >= threads {
        1
    } else {
        (2 * threads).div_ceil(xs.n.max(1))
    };
    let run = ob.div_ceil(per_image).div_ceil(2) * 2;
    let run = run.clamp(1, ob.max(1));
    let runs = ob.div_ceil(run);
    let wanted = if threads > 1 && xs.n * runs < 2 * threads {
        (2 * threads).div_ceil((xs.n * runs).max(1))
    } else {
        1
    };
    // Parts of whole register tiles, at least two of them each.
    let part = hw.div_ceil(wanted).div_ceil(28).max(1) * 28;
    let parts = hw.div_ceil(part).max(1);
    let (yp, rp) = (
        SharedOut(y.as_mut_ptr()),
        store.residual.map(|r| SharedOut(r.as_ptr().cast_mut())),
    );
    each_index(xs.n * runs * parts, threads, |i| {
        let (n, rest) = (i / (runs * parts), i % (runs * parts));
        let (first, p0) = ((rest / parts) * run, (rest % parts) * part);
        let offset = (n * ob + first) * hw * LANES;
        // SAFETY: the task's blocks of image `n` are inside `y` and the residual, of
        // `y`'s shape.
        let residual = rp.map(|r| unsafe { r.at(offset) }.cast_const());
        kernels.run(PointwiseTask {
            x: &x[n * cin * hw..][..cin * hw],
            hw,
            cin,
            channels: xs.c,
            weights,
            blocks: first..(first + run).min(ob),
            positions: p0..(p0 + part).min(hw),
            store,
            // SAFETY: the task's blocks of image `n` are inside `y`; the tasks write
            // disjoint positions of them.
            y: unsafe { yp.at(offset) },
            residual,
        })
    });
}

/// A pointer that tasks write through, each to places of its own (or read through).
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub *mut f32);

impl SharedOut {
    /// The pointer `offset` values on.
    ///
    /// # Safety
    /// `offset` is inside the buffer.
    pub(crate) unsafe fn at(&self, offset: usize) -> *mut f32 {
        // SAFETY: the caller's contract.
        unsafe { self.0.add(offset) }
    }
}

// SAFETY: the users of `SharedOut` give each task places of its own to write.
unsafe impl Sync for SharedOut {}
// SAFETY: as above.
unsafe impl Send for SharedOut {}

/// Runs `task(i, chunk)` on every chunk, in parallel when there are several threads.
pub(crate) fn each_chunk(
    chunks: Vec<&mut [f32]>,
    threads: usize,
    task: impl Fn(usize, &mut [f32]) + Sync,
) {
    if threads > 1 {
        chunks
            .into_par_iter()
            .enumerate()
            .for_each(|(i, c)| task(i, c));
    } else {
        chunks.into_iter().enumerate().for_each(|(i, c)| task(i, c));
    }
}

/// Runs `task(i)` for every `i` below `count`, in parallel when there are several
/// threads.
pub(crate) fn each_index(count: usize, threads: usize, task: impl Fn(usize) + Sync + Send) {
    if threads > 1 {
        (0..count).into_par_iter().for_each(task);
    } else {
        (0..count).for_each(task);
    }
}

/// One image's output blocks `blocks` at `positions` of [`pointwise`], as a
/// [`Kernel`].
struct PointwiseTask<'a> {
    /// The image, `[cin/16][hw][16]`.
    x: &'a [f32],
    hw: usize,
    cin: usize,
    /// The input channels that are not padding: the sums skip the others.
    channels: usize,
    weights: &'a [f32],
    blocks: std::ops::Range<usize>,
    positions: std::ops::Range<usize>,
    /// Its residual is not read: `residual` is.
    store: Store<'a>,
    /// Output block `blocks.start` of the image, `[blocks.len()][hw][16]` from it; the
    /// task writes `positions` of each of its blocks.
    y: *mut f32,
    /// The same place of the residual.
    residual: Option<*const f32>,
}

impl Kernel for PointwiseTask<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let PointwiseTask {
            x,
            hw,
            cin,
            channels,
            weights,
            blocks,
            positions: range,
            store,
            y,
            residual,
        } = self;
        assert!(x.len() == cin * hw && range.end <= hw);
        let mut c0 = 0;
        // Passes over the channels that are not padding; at least one, so that an
        // image of no channel still gets its store.
        loop {
            let c1 = (c0 + CHUNK).min(channels);
            let pass = Pass {
                c: c0..c1,
                first: c0 == 0,
                last: c1 == channels,
            };
            let mut b = blocks.start;
            while b < blocks.end {
                let pair = b + 1 < blocks.end;
                // SAFETY: `b` (and `b + 1` for a pair) are output blocks of the task and
                // of the weights; the positions are the task's, of the image.
                unsafe {
                    let at = (b - blocks.start) * hw * LANES;
                    let yb = y.add(at);
                    let rb = residual.map(|r| r.add(at));
                    let args = (
                        x.as_ptr(),
                        hw,
                        cin,
                        weights.as_ptr(),
                        b,
                        &pass,
                        store,
                        (yb, rb),
                    );
                    let range = range.clone();
                    match (pair, S::PIXELS >= 28) {
                        (true, true) => positions::<S, 2, 14>(s, args, range),
                        (true, false) => positions::<S, 2, 3>(s, args, range),
                        (false, true) => positions::<S, 1, 14>(s, args, range),
                        (false, false) => positions::<S, 1, 3>(s, args, range),
                    }
                }
                b += if pair { 2 } else { 1 };
            }
            if pass.last {
                break;
            }
            c0 = c1;
        }
    }
}

/// Which input channels one pass sums, and whether it starts or ends the sums.
struct Pass {
    c: std::ops::Range<usize>,
    first: bool,
    last: bool,
}

type PointwiseArgs<'a> = (
    *const f32,
    usize,
    usize,
    *const f32,
    usize,
    &'a Pass,
    Store<'a>,
    (*mut f32, Option<*const f32>),
);

/// The positions `range` of the image for output blocks `b..b + B`, `T` positions at a
/// time, the rest in blocks of 8, 4, 2 and 1 (a block may not overlap the one before:
/// later passes add to what earlier ones stored).
///
/// # Safety
/// As [`tile`], for every position of `range`.
#[inline(always)]
unsafe fn positions<S: Simd, const B: usize, const T: usize>(
    s: S,
    args: PointwiseArgs<'_>,
    range: std::ops::Range<usize>,
) {
    // SAFETY: the caller's contract, passed on to `tile`.
    unsafe {
        let mut p = range.start;
        while p < range.end {
            let left = range.end - p;
            let step = if left >= T {
                tile::<S, B, T>(s, args, p);
                T
            } else if T > 8 && left >= 8 {
                tile::<S, B, 8>(s, args, p);
                8
            } else if left >= 4 && T > 4 {
                tile::<S, B, 4>(s, args, p);
                4
            } else if left >= 2 {
                tile::<S, B, 2>(s, args, p);
                2
            } else {
                tile::<S, B, 1>(s, args, p);
                1
            };
            p += step;
        }
    }
}

/// Output blocks `b..b + B` at positions `p..p + T`: the sums over the pass's input
/// channels added to `y` (or started from zero on the first pass), and the store
/// applied on the last pass.
///
/// # Safety
/// `x` is an image `[cin/16][hw][16]`, `w` the packed weights with blocks `b..b + B`,
/// `y` the output of block `b` (`[B][hw][16]` from it) and the residual's the same
/// place of the residual, `p + T <= hw`.
#[inline(always)]
unsafe fn tile<S: Simd, const B: usize, const T: usize>(
    s: S,
    (x, hw, cin, w, b, pass, store, (y, residual)): PointwiseArgs<'_>,
    p: usize,
) {
    // SAFETY: every pointer below stays inside the ranges of the caller's contract.
    unsafe {
        let mut acc = [[s.zero(); T]; B];
        if !pass.first {
            for (k, row) in acc.iter_mut().enumerate() {
                for (t, a) in row.iter_mut().enumerate() {
                    *a = s.load_ptr(y.add((k * hw + p + t) * LANES));
                }
            }
        }
        for c in pass.c.clone() {
            let (cb, lane) = (c / LANES, c % LANES);
            let xc = x.add((cb * hw + p) * LANES + lane);
            let wv: [S::V; B] =
                std::array::from_fn(|k| s.load_ptr(w.add(((b + k) * cin + c) * LANES)));
            for t in 0..T {
                let xv = s.splat(*xc.add(t * LANES));
                for (row, &wk) in acc.iter_mut().zip(&wv) {
                    row[t] = s.fma(wk, xv, row[t]);
                }
            }
        }
        for (k, row) in acc.iter().enumerate() {
            if !pass.last {
                for (t, &a) in row.iter().enumerate() {
                    s.store_ptr(y.add((k * hw + p + t) * LANES), a);
                }
                continue;
            }
            let at = (b + k) * LANES;
            let affine = (
                s.load_ptr(store.scale.as_ptr().add(at)),
                s.load_ptr(store.shift.as_ptr().add(at)),
            );
            for (t, &a) in row.iter().enumerate() {
                let o = (k * hw + p + t) * LANES;
                let r = residual.map(|r| r.add(o));
                s.store_ptr(y.add(o), finish(s, a, affine, r));
            }
        }
        if pass.last {
            for k in 0..B {
                activate_stored(s, store.activation, y.add((k * hw + p) * LANES), T);
            }
        }
    }
}

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

/// The window of a convolution on blocked planes: its kernel, stride and padding, and
/// the input and output sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    /// Input `[h, w]`.
    pub size: [usize; 2],
    /// Output `[ho, wo]`.
    pub out_size: [usize; 2],
}

impl Window {
    /// The output columns `lo..hi` whose windows read no padding column.
    pub(crate) fn inner_columns(&self) -> (usize, usize) {
        let ([_, w], [_, wo], [_, kw], [_, sw], [_, pw]) = (
            self.size,
            self.out_size,
            self.kernel,
            self.stride,
            self.padding,
        );
        let lo = pw.div_ceil(sw).min(wo);
        let hi = if w + pw >= kw {
            ((w + pw - kw) / sw + 1).min(wo)
        } else {
            0
        };
        (lo, hi.max(lo))
    }

    /// For output row `oy`: the input row of kernel row 0 (negative in the padding),
    /// and the kernel rows `r0..r1` that fall inside the image.
    pub(crate) fn rows(&self, oy: usize) -> (isize, usize, usize) {
        let ([h, _], [kh, _], [sh, _], [ph, _]) =
            (self.size, self.kernel, self.stride, self.padding);
        let top = (oy * sh) as isize - ph as isize;
        let r0 = (-top).clamp(0, kh as isize) as usize;
        let r1 = (h as isize - top).clamp(r0 as isize, kh as isize) as usize;
        (top, r0, r1)
    }
}

/// A depthwise convolution of `x` (blocked, shape `xs`) by `weights` (from
/// [`pack_depthwise`]) into `y` (blocked, the output size of `g`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise(
    kernels: Kernels,
    x: &[f32],
    xs: Blocked,
    weights: &[f32],
    g: Window,
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
    let task = |i: usize, yp: &mut [f32]| {
        let cb = i % blocks;
        kernels.run(DepthwisePlane {
            x: &x[i * plane_in..][..plane_in],
            w: &weights[cb * taps..][..taps],
            g,
            scale: &store.scale[cb * LANES..][..LANES],
            shift: &store.shift[cb * LANES..][..LANES],
            activation: store.activation,
            y: yp,
        })
    };
    each_chunk(y.chunks_mut(plane_out).collect(), threads, task);
}

/// One block of sixteen channels of one image of [`depthwise`], as a [`Kernel`].
struct DepthwisePlane<'a> {
    /// `[h][w][16]`.
    x: &'a [f32],
    /// `[kh][kw][16]`.
    w: &'a [f32],
    g: Window,
    scale: &'a [f32],
    shift: &'a [f32],
    activation: Activation,
    /// `[ho][wo][16]`.
    y: &'a mut [f32],
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
    assert!(p.x.len() == h * w * LANES && p.y.len() == ho * wo * LANES);
    assert!(p.w.len() == kh * kw * LANES);
    let scale = s.load(p.scale.try_into().expect("16 lanes"));
    let shift = s.load(p.shift.try_into().expect("16 lanes"));
    let row = DepthwiseRow {
        x: p.x.as_ptr(),
        w: p.w.as_ptr(),
        y: p.y.as_mut_ptr(),
        g,
        scale,
        shift,
        activation: p.activation,
    };
    // Columns `lo..hi` read no padding.
    let (lo, hi) = g.inner_columns();
    for oy in 0..ho {
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
    g: Window,
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
pub(crate) mod tests {
    use super::*;
    use crate::nn::kernels::every_kernels;

    /// `len` pseudo-random values in [−0.5, 0.5), the same for the same seed.
    pub(crate) fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut i = seed;
        (0..len)
            .map(|_| {
                i = i.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (i >> 9) as f32 / (1 << 23) as f32 - 0.5
            })
            .collect()
    }

    /// What a test's store does: scale, shift, activation and the NCHW residual.
    pub(crate) type Epilogue<'a> = (&'a [f32], &'a [f32], Activation, Option<&'a [f32]>);

    /// `f(conv(x)·scale + shift + r)` of NCHW `x` by the definition, the sums in f64.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reference(
        x: &[f32],
        [n, c, h, w]: [usize; 4],
        weight: &[f32],
        o: usize,
        groups: usize,
        g: Window,
        (scale, shift, f, residual): Epilogue<'_>,
    ) -> Vec<f32> {
        let ([kh, kw], [sh, sw], [ph, pw], [ho, wo]) = (g.kernel, g.stride, g.padding, g.out_size);
        let (cg, og) = (c / groups, o / groups);
        let mut y = vec![0.0; n * o * ho * wo];
        for img in 0..n {
            for oc in 0..o {
                let grp = oc / og;
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = 0f64;
                        for ic in 0..cg {
                            for r in 0..kh {
                                for k in 0..kw {
                                    let iy = (oy * sh + r) as isize - ph as isize;
                                    let ix = (ox * sw + k) as isize - pw as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xv = x[((img * c + grp * cg + ic) * h + iy as usize) * w
                                        + ix as usize];
                                    let wv = weight[((oc * cg + ic) * kh + r) * kw + k];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        let at = ((img * o + oc) * ho + oy) * wo + ox;
                        let v = acc as f32 * scale[oc] + shift[oc];
                        y[at] = f.apply(v + residual.map_or(0.0, |r| r[at]));
                    }
                }
            }
        }
        y
    }

    /// A test's epilogue: per output channel a scale around 1 and a shift (from
    /// `seeds`), and an NCHW residual of the output's shape, if any; as the reference
    /// and as the kernels' store take them.
    pub(crate) struct TestEpilogue {
        scale: Vec<f32>,
        shift: Vec<f32>,
        residual: Option<Vec<f32>>,
        /// Scale and shift padded to whole blocks, and the residual in blocks.
        store: (Vec<f32>, Vec<f32>, Option<Vec<f32>>),
    }

    impl TestEpilogue {
        pub(crate) fn new(ys: Blocked, seeds: (u32, u32), residual: Option<Vec<f32>>) -> Self {
            let scale: Vec<f32> = values(ys.c, seeds.0).iter().map(|v| v + 1.0).collect();
            let shift = values(ys.c, seeds.1);
            let store = (
                padded_to_blocks(&scale, ys.c),
                padded_to_blocks(&shift, ys.c),
                residual.as_ref().map(|r| blocks(r, ys)),
            );
            TestEpilogue {
                scale,
                shift,
                residual,
                store,
            }
        }

        /// As [`reference`] takes it, with the activation `f`.
        pub(crate) fn reference(&self, f: Activation) -> Epilogue<'_> {
            (&self.scale, &self.shift, f, self.residual.as_deref())
        }

        /// As the kernels take it, with the activation `f`.
        pub(crate) fn store(&self, f: Activation) -> Store<'_> {
            Store {
                scale: &self.store.0,
                shift: &self.store.1,
                activation: f,
                residual: self.store.2.as_deref(),
            }
        }
    }

    /// `v` (NCHW of shape `s`) in blocks.
    pub(crate) fn blocks(v: &[f32], s: Blocked) -> Vec<f32> {
        let mut b = vec![0.0; s.len()];
        to_blocked(v, s, &mut b);
        b
    }

    pub(crate) fn padded_to_blocks(v: &[f32], c: usize) -> Vec<f32> {
        let mut p = v.to_vec();
        p.resize(c.div_ceil(LANES) * LANES, 0.0);
        p
    }

    pub(crate) fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{what}: [{i}] {a} vs {b}"
            );
        }
    }

    #[test]
    fn reorders_are_inverse_and_pad_with_zeros() {
        let s = Blocked {
            n: 2,
            c: 19,
            h: 3,
            w: 5,
        };
        let x = values(2 * 19 * 15, 1);
        let mut b = vec![f32::NAN; s.len()];
        to_blocked(&x, s, &mut b);
        assert_eq!(b[((2 + 1) * 15 + 4) * LANES + 3], 0.0, "padding channel");
        assert_eq!(b[((2 + 1) * 15 + 4) * LANES + 2], x[(19 + 18) * 15 + 4]);
        let mut back = vec![0.0; x.len()];
        from_blocked(&b, s, &mut back);
        assert_eq!(back, x);
    }

    #[test]
    fn pointwise_matches_the_definition_at_every_level() {
        // Channel counts off the block, more input channels than one pass, an odd
        // number of output blocks, maps smaller and larger than a register block.
        // Every activation, with and without a residual.
        for (case, (n, c, o, h, w)) in [
            (2, 19, 40, 7, 7),
            (1, 300, 33, 3, 5),
            (3, 16, 16, 1, 1),
            (1, 1, 1, 14, 14),
            (2, 64, 48, 4, 4),
            (1, 24, 24, 9, 9),
            (2, 40, 20, 5, 5),
        ]
        .into_iter()
        .enumerate()
        {
            let f = Activation::ALL[case % Activation::ALL.len()];
            let residual = (case % 2 == 1).then(|| values(n * o * h * w, 10));
            let x = values(n * c * h * w, 2);
            let weight = values(o * c, 3);
            let g = Window {
                kernel: [1, 1],
                stride: [1, 1],
                padding: [0, 0],
                size: [h, w],
                out_size: [h, w],
            };
            let xs = Blocked { n, c, h, w };
            let ys = Blocked { c: o, ..xs };
            let epilogue = TestEpilogue::new(ys, (4, 5), residual);
            let want = reference(&x, [n, c, h, w], &weight, o, 1, g, epilogue.reference(f));
            let xb = blocks(&x, xs);
            let packed = pack_pointwise(&weight, o, c);
            for kernels in every_kernels() {
                for threads in [1, 2] {
                    let mut yb = vec![f32::NAN; ys.len()];
                    let store = epilogue.store(f);
                    pointwise(kernels, &xb, xs, &packed, o, store, &mut yb, threads);
                    let mut y = vec![0.0; want.len()];
                    from_blocked(&yb, ys, &mut y);
                    close(
                        &y,
                        &want,
                        &format!("{kernels:?} {n}x{c}->{o} {h}x{w} t{threads} {f}"),
                    );
                }
            }
        }
    }

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
            let g = Window {
                kernel: [k, k],
                stride: [st, st],
                padding: [pd, pd],
                size: [h, w],
                out_size: [ho, wo],
            };
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
