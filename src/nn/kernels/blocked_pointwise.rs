//! The 1×1 convolution on channel-blocked activations: one product over all the
//! positions of the image, in register blocks of two output blocks × up to 14
//! positions (AVX-512; one block × 6 at AVX2, NEON and portable), each input value
//! broadcast once per block and each weight vector used by every position of it, the
//! sixteen channels of an input block unrolled; the input channels are taken
//! in chunks of [`CHUNK`] so that a chunk of the image and of the weights stay in
//! cache. The store applies `y = f(y·scale + shift (+ residual))` per output channel.

use super::blocked::{activate_stored, each_index, finish, Blocked, SharedOut, Store};
use super::{Kernel, Kernels, Simd, LANES};

/// Input channels per pass of [`pointwise`]: 256 channels of 14 positions (14 KiB) and
/// of two output blocks' weights (32 KiB) stay in the level-1 and level-2 caches.
const CHUNK: usize = 256;

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
    // Tasks: fewer images than threads (the pass's team shares out each layer), every
    // output block of a part of the positions, so that a thread computes the same
    // positions from layer to layer and reads what it wrote (the team gives a thread
    // the same contiguous range of parts each time); more, an image's output blocks
    // in runs. When that does not give each thread two tasks, positions in parts too.
    let per_image = if xs.n >= threads {
        1
    } else {
        (2 * threads).div_ceil(xs.n.max(1))
    };
    let run = match xs.n < threads {
        true => ob,
        false => ob.div_ceil(per_image).div_ceil(2) * 2,
    };
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
                // Two output blocks at a time where the registers hold them (AVX-512:
                // 2 x 14 accumulators of 32); else one block of 6 positions, whose
                // accumulators, weights and broadcast fit AVX2's 16 registers (a vector
                // is two) and NEON's 32 (a vector is four). Two blocks of 3 did not fit:
                // they spilled and ran AVX2's 1x1 layers at a third of the peak.
                let pair = b + 1 < blocks.end && S::PIXELS >= 28;
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
                        (true, _) => positions::<S, 2, 14, 14>(s, args, range),
                        (false, true) => positions::<S, 1, 14, 14>(s, args, range),
                        (false, false) => positions::<S, 1, 6, 5>(s, args, range),
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
/// time. Where `U = T - 1` (else `U = T`) and the range splits into as many tiles of
/// `T` and `U` as it needs tiles of `T`, it does (a 7 × 7 map is four tiles of 6 and
/// five of 5 instead of eight of 6 and a lone position, whose two chains wait on the
/// multiply-add's latency); else the rest is done in blocks of 8, 4, 2 and 1 (a block
/// may not overlap the one before: later passes add to what earlier ones stored).
///
/// # Safety
/// As [`tile`], for every position of `range`.
#[inline(always)]
unsafe fn positions<S: Simd, const B: usize, const T: usize, const U: usize>(
    s: S,
    args: PointwiseArgs<'_>,
    range: std::ops::Range<usize>,
) {
    debug_assert!(U == T || U + 1 == T);
    // SAFETY: the caller's contract, passed on to `tile`.
    unsafe {
        let tiles = range.len().div_ceil(T);
        let mut p = range.start;
        if U < T && tiles * U <= range.len() {
            // `range.len() - tiles·U` tiles of T, the others of U.
            let long = range.len() - tiles * U;
            for i in 0..tiles {
                if i < long {
                    tile::<S, B, T>(s, args, p);
                    p += T;
                } else {
                    tile::<S, B, U>(s, args, p);
                    p += U;
                }
            }
            return;
        }
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

/// One input channel into a tile: its value at each of the `T` positions (`xc`, one
/// every `LANES` floats) times each of the `B` blocks' weights (`wc`, block `k`'s at
/// `wc + k·cin·LANES`). A function, not a closure: a closure does not inherit the
/// caller's instruction set, so where the optimiser declines to inline it (the dev
/// profile's 256 codegen units did) every multiply-add in it becomes a call.
///
/// # Safety
/// `wc` and `xc` point into the packed weights and the image as [`tile`]'s contract says.
#[inline(always)]
unsafe fn channel<S: Simd, const B: usize, const T: usize>(
    s: S,
    acc: &mut [[S::V; T]; B],
    wc: *const f32,
    cin: usize,
    xc: *const f32,
) {
    // SAFETY: the caller's contract.
    unsafe {
        let mut wv = [s.zero(); B];
        for (k, v) in wv.iter_mut().enumerate() {
            *v = s.load_ptr(wc.add(k * cin * LANES));
        }
        for t in 0..T {
            let xv = s.splat(*xc.add(t * LANES));
            for (row, &wk) in acc.iter_mut().zip(&wv) {
                row[t] = s.fma(wk, xv, row[t]);
            }
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
        // Whole input blocks with the sixteen lanes unrolled (their offsets constants:
        // no address arithmetic per channel), then the channels of a last, partial
        // block one at a time.
        let (start, end) = (pass.c.start, pass.c.end);
        let whole = start + (end - start) / LANES * LANES;
        let mut c = start;
        while c < whole {
            let xb = x.add(((c / LANES) * hw + p) * LANES);
            for lane in 0..LANES {
                let wc = w.add((b * cin + c + lane) * LANES);
                channel::<S, B, T>(s, &mut acc, wc, cin, xb.add(lane));
            }
            c += LANES;
        }
        for c in whole..end {
            let xc = x.add(((c / LANES) * hw + p) * LANES + c % LANES);
            channel::<S, B, T>(s, &mut acc, w.add((b * cin + c) * LANES), cin, xc);
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

#[cfg(test)]
mod tests {
    use super::super::blocked::from_blocked;
    use super::super::blocked::tests::{blocks, close, reference, values, TestEpilogue};
    use super::super::geometry::Geometry;
    use super::*;
    use crate::nn::kernels::every_kernels;
    use crate::nn::runtime::Activation;

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
            let g =
                Geometry::window(c, [1, 1], [1, 1], [0, 0], [h, w], [h, w]).with_channels(c, o, 1);
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
}
