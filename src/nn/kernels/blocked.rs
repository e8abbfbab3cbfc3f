//! The channel-blocked layout: `[N][⌈C/16⌉][H][W][16]` ("NCHW16c"), the sixteen
//! channels of a block in the lanes of one [`Simd`] group and the channels past `C`
//! zero, and what its kernels share.
//!
//! In this layout every kernel keeps channels in lanes and never transposes. This
//! file has the layout ([`Blocked`], the reorders [`to_blocked`] / [`from_blocked`] at
//! the boundaries with NCHW), the store every
//! kernel ends with ([`Store`], [`finish`]: `y = f(y·scale + shift (+ residual))` per
//! output channel) and the task runners; the kernels are its siblings:
//! `blocked_pointwise` (1×1), `blocked_depthwise`, `blocked_direct` (any window),
//! `blocked_winograd` (3×3), `blocked_sparse` (pruned weights), `blocked_pool` and
//! `blocked_map`. `docs/engine.md` measures them against the NCHW engine.

use super::activation::activate;
use super::{Simd, LANES};
use crate::nn::runtime::{team, Activation};
use rayon::prelude::*;

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

/// `x` (`[N, C, H, W]`) into `y` in the blocked layout of `s`, on the pass's team or
/// rayon's threads ([`each_chunk`]).
pub(crate) fn to_blocked(x: &[f32], s: Blocked, y: &mut [f32]) {
    let hw = s.h * s.w;
    assert!(x.len() == s.n * s.c * hw && y.len() == s.len());
    let per_block = hw * LANES;
    let blocks = y.chunks_mut(per_block.max(1)).collect();
    each_chunk(blocks, rayon::current_num_threads(), |i, yb| {
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

/// `x` in the blocked layout of `s` into `y` (`[N, C, H, W]`), as [`to_blocked`].
pub(crate) fn from_blocked(x: &[f32], s: Blocked, y: &mut [f32]) {
    let hw = s.h * s.w;
    assert!(y.len() == s.n * s.c * hw && x.len() == s.len());
    let planes = y.chunks_mut(hw.max(1)).collect();
    each_chunk(planes, rayon::current_num_threads(), |i, plane| {
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

/// The chunks of [`each_chunk`] as the team's tasks see them, each taking its own.
struct Slots<T>(*mut T);

impl<T> Slots<T> {
    /// Slot `i`.
    ///
    /// # Safety
    /// `i` is inside the slots.
    unsafe fn at(&self, i: usize) -> *mut T {
        // SAFETY: the caller's contract.
        unsafe { self.0.add(i) }
    }
}

// SAFETY: each task takes a slot of its own.
unsafe impl<T> Sync for Slots<T> {}

/// Runs `task(i, chunk)` on every chunk, in parallel when there are several threads:
/// on the team this thread leads, or on rayon's threads outside a team (a team's
/// worker runs its nested work itself).
pub(crate) fn each_chunk(
    mut chunks: Vec<&mut [f32]>,
    threads: usize,
    task: impl Fn(usize, &mut [f32]) + Sync,
) {
    if threads > 1 && team::leads(chunks.len()) {
        let slots = Slots(chunks.as_mut_ptr());
        team::each(chunks.len(), &|i| {
            // SAFETY: the team runs each index once: slot `i` is this task's alone, and
            // `chunks` outlives the job.
            let chunk: &mut [f32] = unsafe { &mut **slots.at(i) };
            task(i, chunk);
        });
    } else if threads > 1 && !team::active() {
        chunks
            .into_par_iter()
            .enumerate()
            .for_each(|(i, c)| task(i, c));
    } else {
        chunks.into_iter().enumerate().for_each(|(i, c)| task(i, c));
    }
}

/// Runs `task(i)` for every `i` below `count`, in parallel when there are several
/// threads, as [`each_chunk`].
pub(crate) fn each_index(count: usize, threads: usize, task: impl Fn(usize) + Sync + Send) {
    if threads > 1 && team::each(count, &task) {
        // Done on the pass's team.
    } else if threads > 1 && !team::active() {
        (0..count).into_par_iter().for_each(task);
    } else {
        (0..count).for_each(task);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::nn::kernels::geometry::Geometry;

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
        g: Geometry,
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
}
