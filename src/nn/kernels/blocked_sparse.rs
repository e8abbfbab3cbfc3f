//! Sparse convolutions on channel-blocked activations (see [`super::blocked`]): any
//! kernel size, stride, padding and groups, with only the non-zero weights multiplied.
//!
//! Unstructured sparsity gives each output channel its own input channels and taps, so
//! the vector lanes hold positions, not channels (Elsen et al., CVPR 2020; XNNPACK's
//! `f32-spmm`). The kernel works in three steps:
//!
//! 1. **Planes.** The blocked input is transposed, sixteen positions × sixteen channels
//!    at a time in registers, into one zero-padded plane per channel, the images of the
//!    batch one after the other ([`Planes`]). With a stride, each plane is split into
//!    its stride phases (the even and odd rows and columns for a stride of 2), so that
//!    every tap of every output position is a fixed offset from the position: output
//!    `q` reads plane value `q + offset(channel, tap)` for each non-zero weight. The
//!    positions of the padding (and, with a stride, past the last output) are computed
//!    too and never stored.
//! 2. **Sums.** Positions are cut into tiles of 64 (four vectors). For each output
//!    channel, every non-zero weight is one broadcast and four multiply-adds of the
//!    plane's values at its offset. The input channels are taken in chunks whose
//!    values for one tile fit the level-1 cache; the partial sums wait in a tile of
//!    `[output channel][64]` between chunks.
//! 3. **Store.** Sixteen output channels × sixteen positions are transposed back into
//!    blocks, and the store (scale, shift, residual, activation) is applied.
//!
//! The weights are packed once ([`SparseConv`]): per chunk of input channels and per
//! output channel, its non-zeros as `(channel, tap)` and value.

use super::activation::activate;
use super::blocked::{each_index, finish, Blocked, SharedOut, Store};
use super::{Kernel, Kernels, Simd, LANES};
use crate::nn::runtime::{buffer, recycle_buffer, with_scratch};
use std::sync::{Arc, Mutex};

/// Vectors of positions per tile.
const VECTORS: usize = 4;
/// Positions per tile.
const TILE: usize = VECTORS * LANES;
/// The plane values that one tile reads in one chunk of input channels, at most: they
/// stay in the level-1 cache while every output channel reads them.
const CHUNK_BYTES: usize = 32 * 1024;
/// The non-zeros per output channel and chunk of input channels, on average, below
/// which chunks grow past the level-1 cache.
const ROW_NONZEROS: usize = 32;
/// The most taps a kernel may have (a non-zero's tap is kept in 8 bits).
const MAX_TAPS: usize = 256;

/// The convolution a [`SparseConv`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SparseShape {
    pub out: usize,
    pub inputs: usize,
    pub groups: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl SparseShape {
    fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }
}

/// The non-zero weights of a convolution, packed for [`sparse_conv`].
#[derive(Debug)]
pub(crate) struct SparseConv {
    shape: SparseShape,
    /// Input channels per chunk.
    chunk: usize,
    /// Output channels padded to whole blocks: the rows of each chunk.
    rows: usize,
    /// Row `o` of chunk `k` is `starts[k·rows + o]..starts[k·rows + o + 1]` of `keys`
    /// and `values`.
    starts: Vec<u32>,
    /// Per non-zero, `input channel << 8 | tap` (tap `ky·kw + kx`).
    keys: Vec<u32>,
    values: Vec<f32>,
    /// The non-zeros as the last call's planes read them (they depend on the input's
    /// size, which seldom changes): remade only for another size.
    entries: Mutex<Option<Arc<Entries>>>,
}

/// The non-zeros of a [`SparseConv`] for planes of one geometry: the key (values per
/// channel, and each tap's offset) and the entries.
#[derive(Debug)]
struct Entries {
    channel: usize,
    taps: Vec<usize>,
    entries: Vec<Entry>,
    /// The largest offset.
    farthest: usize,
}

impl Clone for SparseConv {
    fn clone(&self) -> Self {
        SparseConv {
            starts: self.starts.clone(),
            keys: self.keys.clone(),
            values: self.values.clone(),
            entries: Mutex::new(None),
            ..*self
        }
    }
}

impl SparseConv {
    /// The non-zeros of `weight` (`[out, inputs / groups, kh, kw]`), or `None` when the
    /// kernel has more than 256 taps or the counts overflow 32 bits.
    pub(crate) fn new(weight: &[f32], shape: SparseShape) -> Option<Self> {
        let taps = shape.taps();
        let (cg, og) = (shape.inputs / shape.groups, shape.out / shape.groups);
        assert_eq!(weight.len(), shape.out * cg * taps, "weight of the shape");
        if taps > MAX_TAPS || shape.inputs >= 1 << 24 || weight.len() >= u32::MAX as usize {
            return None;
        }
        // One tile's reads per input channel: each tap, its vectors of positions. A
        // chunk's reads fit the level-1 cache; but in sparser layers, a chunk gives
        // each output channel at least `ROW_NONZEROS` on average, so that the cost of
        // reloading its partial sums stays small.
        let per_channel = taps * TILE * std::mem::size_of::<f32>();
        let nonzeros = weight.iter().filter(|v| **v != 0.0).count();
        let per_row = nonzeros as f64 / (shape.out * shape.inputs).max(1) as f64;
        let sparse_chunk = (ROW_NONZEROS as f64 / per_row.max(f64::MIN_POSITIVE)).ceil();
        let chunk = (CHUNK_BYTES / per_channel)
            .max(sparse_chunk.min(shape.inputs as f64) as usize)
            .clamp(1, shape.inputs.max(1));
        let chunks = shape.inputs.div_ceil(chunk);
        let rows = shape.out.div_ceil(LANES) * LANES;
        let (mut starts, mut keys, mut values) = (vec![0u32], vec![], vec![]);
        for k in 0..chunks {
            let channels = k * chunk..((k + 1) * chunk).min(shape.inputs);
            for o in 0..rows {
                if o < shape.out {
                    let first = o / og * cg;
                    let mine = channels.start.max(first)..channels.end.min(first + cg);
                    for c in mine {
                        let row = &weight[(o * cg + c - first) * taps..][..taps];
                        for (t, &v) in row.iter().enumerate() {
                            if v != 0.0 {
                                keys.push((c as u32) << 8 | t as u32);
                                values.push(v);
                            }
                        }
                    }
                }
                starts.push(values.len() as u32);
            }
        }
        Some(SparseConv {
            shape,
            chunk,
            rows,
            starts,
            keys,
            values,
            entries: Mutex::new(None),
        })
    }

    /// The non-zero weights.
    pub(crate) fn nonzeros(&self) -> usize {
        self.values.len()
    }

    /// The non-zeros for planes laid out as `planes`: the last call's if they were
    /// the same, else made (and kept) anew.
    fn entries(&self, s: SparseShape, planes: Planes) -> Arc<Entries> {
        let taps: Vec<usize> = (0..s.taps())
            .map(|t| planes.tap(s, t / s.kernel[1], t % s.kernel[1]))
            .collect();
        let mut cached = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = cached
            .as_ref()
            .filter(|e| e.channel == planes.channel && e.taps == taps)
        {
            return Arc::clone(e);
        }
        // Each non-zero as its offset and value side by side: one stream to read.
        let entries: Vec<Entry> = (self.keys.iter().zip(&self.values))
            .map(|(&k, &value)| Entry {
                offset: ((k >> 8) as usize * planes.channel + taps[(k & 0xff) as usize]) as u32,
                value,
            })
            .collect();
        let farthest = entries.iter().map(|e| e.offset as usize).max().unwrap_or(0);
        let made = Arc::new(Entries {
            channel: planes.channel,
            taps,
            entries,
            farthest,
        });
        *cached = Some(Arc::clone(&made));
        made
    }

    fn chunks(&self) -> usize {
        self.shape.inputs.div_ceil(self.chunk)
    }
}

/// A non-zero weight as a tile reads it: where its input values are in the planes,
/// and its value.
#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: u32,
    value: f32,
}

/// Where [`sparse_conv`] puts the input: per channel, for each stride phase kept, a
/// zero-padded copy of the batch's values and copies of it shifted by one, two, …
/// columns, then slack for the reads past the last position.
///
/// A position `(img, y, x)` of a copy is `y · pitch + img · image_step + x`:
///
/// - kernels wider than one column (per phase) put the images **side by side** in each
///   row, rows of a whole number of vectors: then with the shifted copies every tap's
///   reads start on a whole vector (unaligned loads cost 45 % more), and on 7 × 7 maps
///   the rows are not mostly padding;
/// - the others put the images **one after the other**, rows unpadded.
#[derive(Debug, Clone, Copy)]
struct Planes {
    n: usize,
    /// The phases kept along the height and the width: the stride, or the kernel's
    /// size if smaller (a 1 × 1 kernel of stride 2 reads the even rows and columns
    /// only).
    phases: [usize; 2],
    /// Copies per phase: the kernel's columns that fall in one phase.
    shifts: usize,
    /// Rows and columns of one phase of one image.
    size: [usize; 2],
    pitch: usize,
    image_step: usize,
    /// Output positions computed: `0..positions`. Those past the output size (or
    /// between the images) are computed and not stored.
    positions: usize,
    /// Values of one copy, a whole number of vectors.
    copy: usize,
    /// Values per channel.
    channel: usize,
    out_size: [usize; 2],
}

impl Planes {
    fn new(s: SparseShape, xs: Blocked, out_size: [usize; 2]) -> Self {
        let padded = [xs.h + 2 * s.padding[0], xs.w + 2 * s.padding[1]];
        let phases = [s.stride[0].min(s.kernel[0]), s.stride[1].min(s.kernel[1])];
        let shifts = (s.kernel[1] - 1) / s.stride[1] + 1;
        let size = [
            padded[0].div_ceil(s.stride[0]),
            padded[1].div_ceil(s.stride[1]),
        ];
        let (pitch, image_step, positions, copy) = if shifts > 1 {
            let pitch = (xs.n * size[1]).next_multiple_of(LANES);
            (pitch, size[1], out_size[0] * pitch, size[0] * pitch)
        } else {
            let image = size[0] * size[1];
            let all = xs.n * image;
            (size[1], image, all, all.next_multiple_of(LANES))
        };
        // The farthest tap within a copy, and a vector past the last position.
        let slack = (s.kernel[0] - 1) / s.stride[0] * pitch + LANES;
        Planes {
            n: xs.n,
            phases,
            shifts,
            size,
            pitch,
            image_step,
            positions,
            copy,
            channel: (phases[0] * phases[1] * shifts * copy + slack).next_multiple_of(LANES),
            out_size,
        }
    }

    /// The offset from an output position to the value that tap `(ky, kx)` reads, in a
    /// channel's planes.
    fn tap(&self, s: SparseShape, ky: usize, kx: usize) -> usize {
        let phase = (ky % s.stride[0]) * self.phases[1] + kx % s.stride[1];
        (phase * self.shifts + kx / s.stride[1]) * self.copy + ky / s.stride[0] * self.pitch
    }

    /// Where the input's padded row `y`, column `x` of image `img` goes in a channel's
    /// unshifted copies, if its phase is kept.
    fn place(&self, s: SparseShape, img: usize, y: usize, x: usize) -> Option<usize> {
        let (a, b) = (y % s.stride[0], x % s.stride[1]);
        if a >= self.phases[0] || b >= self.phases[1] {
            return None;
        }
        let at = y / s.stride[0] * self.pitch + img * self.image_step + x / s.stride[1];
        Some((a * self.phases[1] + b) * self.shifts * self.copy + at)
    }

    /// The output's image, row and column at position `q`, if it is one of the
    /// output's.
    fn output(&self, q: usize) -> Option<(usize, usize, usize)> {
        let (img, y, x) = if self.shifts > 1 {
            let (y, rest) = (q / self.pitch, q % self.pitch);
            (rest / self.size[1], y, rest % self.size[1])
        } else {
            let (img, rest) = (q / self.image_step, q % self.image_step);
            (img, rest / self.size[1], rest % self.size[1])
        };
        (img < self.n && y < self.out_size[0] && x < self.out_size[1]).then_some((img, y, x))
    }
}

/// `y = store(conv(x))` for blocked `x` (shape `xs`) by the packed weights `w`, into
/// blocked `y` of `w`'s output channels and `out_size`; tiles of positions (and, when
/// they are few, blocks of output channels) spread over `threads`.
///
/// Returns `false`, having written nothing, when `x` holds a NaN or an infinity (the
/// dense kernels multiply them by the zero weights too, which a sparse kernel cannot
/// do: the caller runs a dense kernel) or when the planes would not be addressable in
/// 32 bits.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sparse_conv(
    kernels: Kernels,
    x: &[f32],
    xs: Blocked,
    w: &SparseConv,
    out_size: [usize; 2],
    store: Store<'_>,
    y: &mut [f32],
    threads: usize,
) -> bool {
    let s = w.shape;
    let ys = Blocked {
        c: s.out,
        h: out_size[0],
        w: out_size[1],
        ..xs
    };
    assert!(xs.c == s.inputs && x.len() == xs.len() && y.len() == ys.len());
    assert!(store.scale.len() == ys.blocks() * LANES && store.shift.len() == store.scale.len());
    assert!(store.residual.is_none_or(|r| r.len() == y.len()));
    if y.is_empty() {
        // No image, or no output position: nothing to compute.
        return true;
    }
    let planes = Planes::new(s, xs, out_size);
    let len = s.inputs * planes.channel;
    if len >= u32::MAX as usize {
        return false;
    }
    // The planes start on a cache line.
    let mut cols = buffer(len + LANES);
    let start = cols.as_ptr().align_offset(64).min(LANES);
    if !spread(
        kernels,
        x,
        xs,
        s,
        planes,
        &mut cols[start..][..len],
        threads,
    ) {
        recycle_buffer(cols);
        return false;
    }
    let made = w.entries(s, planes);
    let entries = &made.entries[..];
    // Every read stays inside the planes: a tile's vectors end at most 15 positions
    // past the last, which the slack after the farthest tap covers.
    assert!(made.farthest + planes.positions.next_multiple_of(LANES) <= len);
    // Tiles of positions; split the output blocks too when tiles are fewer than four
    // per thread.
    let tiles = planes.positions.div_ceil(TILE);
    let blocks = ys.blocks();
    let parts = if threads > 1 {
        (4 * threads).div_ceil(tiles).min(blocks)
    } else {
        1
    };
    let per_part = blocks.div_ceil(parts);
    let parts = blocks.div_ceil(per_part);
    let out = SharedOut(y.as_mut_ptr());
    let planes_values = &cols[start..][..len];
    each_index(tiles * parts, threads, |task| {
        let (t, part) = (task / parts, task % parts);
        let first = t * TILE;
        with_scratch(|scratch| {
            kernels.run(SparseTile {
                cols: planes_values,
                planes,
                w,
                entries,
                first,
                count: TILE.min(planes.positions - first),
                blocks: part * per_part..((part + 1) * per_part).min(blocks),
                store,
                y: out,
                ys,
                sums: &mut scratch.mapped,
            })
        })
    });
    recycle_buffer(cols);
    true
}

/// Writes `x`'s values into `cols` laid out as `planes`, the padding and the phases'
/// unused places zero. Returns whether every value is finite.
fn spread(
    kernels: Kernels,
    x: &[f32],
    xs: Blocked,
    s: SparseShape,
    planes: Planes,
    cols: &mut [f32],
    threads: usize,
) -> bool {
    let finite = std::sync::atomic::AtomicBool::new(true);
    let out = SharedOut(cols.as_mut_ptr());
    each_index(xs.blocks(), threads, |cb| {
        let channels = (cb * LANES)..((cb + 1) * LANES).min(xs.c);
        // SAFETY: block `cb` writes the planes of its own channels only, inside `cols`.
        let mine = unsafe {
            std::slice::from_raw_parts_mut(
                out.at(channels.start * planes.channel),
                channels.len() * planes.channel,
            )
        };
        let ok = kernels.run(Spread {
            x,
            xs,
            s,
            planes,
            block: cb,
            cols: mine,
        });
        if !ok {
            finite.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    });
    finite.into_inner()
}

/// One block of input channels of [`spread`], as a [`Kernel`].
struct Spread<'a> {
    x: &'a [f32],
    xs: Blocked,
    s: SparseShape,
    planes: Planes,
    block: usize,
    /// The planes of the block's channels.
    cols: &'a mut [f32],
}

impl Kernel for Spread<'_> {
    type Output = bool;

    #[inline(always)]
    fn run<S: Simd>(self, s: S) -> bool {
        let Spread {
            x,
            xs,
            s: shape,
            planes,
            block,
            cols,
        } = self;
        let channels = cols.len() / planes.channel;
        let [p0, p1] = shape.padding;
        // Images one after the other without padding are whole runs of positions.
        let whole = shape.padding == [0, 0] && planes.shifts == 1;
        // Every place that no input value reaches is zero: the slack, and with padding,
        // phases or images side by side, all of it.
        let filled = if whole && shape.stride == [1, 1] {
            xs.n * xs.h * xs.w
        } else {
            0
        };
        // (The shifted copies are made below from the first, wholly.)
        let (copy, phases) = (planes.copy, planes.phases[0] * planes.phases[1]);
        for c in 0..channels {
            let channel = &mut cols[c * planes.channel..][..planes.channel];
            for phase in 0..phases {
                channel[phase * planes.shifts * copy..][filled..copy].fill(0.0);
            }
            channel[phases * planes.shifts * copy..].fill(0.0);
        }
        let mut bad = s.zero();
        let image = |img: usize| &x[(img * xs.blocks() + block) * xs.h * xs.w * LANES..];
        if shape.stride == [1, 1] {
            // Sixteen positions at a time, transposed into sixteen channels, along runs
            // that are contiguous in both layouts: a row (with padding), else an image.
            let (runs, run) = if whole {
                (1, xs.h * xs.w)
            } else {
                (xs.h, xs.w)
            };
            for img in 0..xs.n {
                let x = image(img);
                for r in 0..runs {
                    let from = &x[r * run * LANES..][..run * LANES];
                    let to = planes
                        .place(shape, img, r + p0, p1)
                        .expect("stride 1 keeps its one phase");
                    for x0 in (0..run).step_by(LANES) {
                        let count = LANES.min(run - x0);
                        let mut v: [S::V; LANES] = std::array::from_fn(|i| {
                            let at = (x0 + i.min(count - 1)) * LANES;
                            s.load(from[at..][..LANES].try_into().expect("16 lanes"))
                        });
                        s.transpose(&mut v);
                        // The channels past the tensor's are not read: whatever they
                        // hold does not count.
                        for &v in &v[..channels] {
                            bad = s.fma(v, s.zero(), bad);
                        }
                        for (c, &v) in v.iter().enumerate().take(channels) {
                            let dst = &mut cols[c * planes.channel + to + x0..][..count];
                            // SAFETY: `dst` holds `count` values.
                            unsafe { s.store_first(dst.as_mut_ptr(), v, count) };
                        }
                    }
                }
            }
        } else {
            // With a stride, value by value into its phase.
            let mut finite = true;
            for img in 0..xs.n {
                let x = image(img);
                for r in 0..xs.h {
                    for col in 0..xs.w {
                        let Some(at) = planes.place(shape, img, r + p0, col + p1) else {
                            // Its phase is not read; NaN there reaches no output.
                            continue;
                        };
                        let from = &x[(r * xs.w + col) * LANES..][..channels];
                        for (c, &v) in from.iter().enumerate() {
                            finite &= v.is_finite();
                            cols[c * planes.channel + at] = v;
                        }
                    }
                }
            }
            if !finite {
                return false;
            }
        }
        // The shifted copies: copy `j` is the first `j` values on, zeros at its end.
        for c in 0..channels {
            for phase in 0..phases {
                let at = c * planes.channel + phase * planes.shifts * copy;
                for j in 1..planes.shifts {
                    cols.copy_within(at + j..at + copy, at + j * copy);
                    cols[at + (j + 1) * copy - j..at + (j + 1) * copy].fill(0.0);
                }
            }
        }
        let mut lanes = [0.0; LANES];
        s.store(&mut lanes, bad);
        lanes.iter().all(|v| *v == 0.0)
    }
}

/// Positions `first..first + count` of [`sparse_conv`], output blocks `blocks`, as a
/// [`Kernel`].
struct SparseTile<'a> {
    cols: &'a [f32],
    planes: Planes,
    w: &'a SparseConv,
    /// Each non-zero's offset in `cols`, and value.
    entries: &'a [Entry],
    first: usize,
    count: usize,
    blocks: std::ops::Range<usize>,
    store: Store<'a>,
    /// The output, of shape `ys`; this task writes only its positions and blocks.
    y: SharedOut,
    ys: Blocked,
    /// This thread's scratch for the partial sums.
    sums: &'a mut Vec<f32>,
}

impl Kernel for SparseTile<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        match self.count.div_ceil(LANES) {
            4 => sparse_tile::<S, 4>(s, self),
            3 => sparse_tile::<S, 3>(s, self),
            2 => sparse_tile::<S, 2>(s, self),
            _ => sparse_tile::<S, 1>(s, self),
        }
    }
}

/// [`SparseTile`] with `V` vectors of positions (the last one maybe partly past the
/// tile's positions: those lanes are computed and not stored).
#[inline(always)]
fn sparse_tile<S: Simd, const V: usize>(s: S, t: SparseTile<'_>) {
    let SparseTile {
        cols,
        planes,
        w,
        entries,
        first,
        count,
        blocks,
        store,
        y,
        ys,
        sums,
    } = t;
    let rows = (blocks.start * LANES)..(blocks.end * LANES);
    // Not zeroed: the first chunk writes every row's sums (zeros where it has no
    // non-zero) before any chunk reads them.
    if sums.len() < rows.len() * TILE {
        sums.resize(rows.len() * TILE, 0.0);
    }
    let base = cols[first..].as_ptr();
    // Two output channels at a time: eight independent sums with four vectors.
    for k in 0..w.chunks() {
        for i in (0..rows.len()).step_by(2) {
            let row = k * w.rows + rows.start + i;
            let [from, middle, to] = [0, 1, 2].map(|j| w.starts[row + j] as usize);
            if k > 0 && from == to {
                continue;
            }
            let (one, two) = sums[i * TILE..][..2 * TILE].split_at_mut(TILE);
            // The first chunk starts from zero (and writes the rows it has nothing for).
            let load = |sum: &[f32]| -> [S::V; V] {
                std::array::from_fn(|v| match k {
                    0 => s.zero(),
                    _ => s.load(sum[v * LANES..][..LANES].try_into().expect("16 lanes")),
                })
            };
            let (mut a, mut b) = (load(one), load(two));
            let (ra, rb) = (&entries[from..middle], &entries[middle..to]);
            let common = ra.len().min(rb.len());
            for (ea, eb) in ra[..common].iter().zip(&rb[..common]) {
                let (wa, wb) = (s.splat(ea.value), s.splat(eb.value));
                // SAFETY: every offset plus `first + V·16` is at most `cols.len()`: the
                // tile's vectors end before the plane's last position rounded up to
                // 16, and `sparse_conv` checked that the farthest offset from there is
                // inside `cols`.
                let (pa, pb) =
                    unsafe { (base.add(ea.offset as usize), base.add(eb.offset as usize)) };
                for v in 0..V {
                    // SAFETY: as above.
                    unsafe {
                        a[v] = s.fma(wa, s.load_ptr(pa.add(v * LANES)), a[v]);
                        b[v] = s.fma(wb, s.load_ptr(pb.add(v * LANES)), b[v]);
                    }
                }
            }
            for (acc, rest) in [(&mut a, &ra[common..]), (&mut b, &rb[common..])] {
                for e in rest {
                    let wv = s.splat(e.value);
                    // SAFETY: as above.
                    let p = unsafe { base.add(e.offset as usize) };
                    for (v, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: as above.
                        *acc = s.fma(wv, unsafe { s.load_ptr(p.add(v * LANES)) }, *acc);
                    }
                }
            }
            for (sum, acc) in [(one, a), (two, b)] {
                for (v, acc) in acc.iter().enumerate() {
                    s.store(
                        (&mut sum[v * LANES..][..LANES]).try_into().expect("16"),
                        *acc,
                    );
                }
            }
        }
    }
    // Where each position of the tile goes in the output's first block (`None` for
    // the positions computed and not stored); block `ob` is `ob · h · w · 16` on.
    let image = ys.h * ys.w * LANES;
    let places: [Option<usize>; TILE] = std::array::from_fn(|i| {
        let (img, oy, ox) = planes.output(first + i).filter(|_| i < count)?;
        Some(img * ys.blocks() * image + (oy * ys.w + ox) * LANES)
    });
    for (b, ob) in blocks.enumerate() {
        let scale = s.load(store.scale[ob * LANES..][..LANES].try_into().expect("16"));
        let shift = s.load(store.shift[ob * LANES..][..LANES].try_into().expect("16"));
        for v in 0..V {
            let mut lanes: [S::V; LANES] = std::array::from_fn(|lane| {
                let at = (b * LANES + lane) * TILE + v * LANES;
                s.load(sums[at..][..LANES].try_into().expect("16 lanes"))
            });
            s.transpose(&mut lanes);
            for (&value, place) in lanes.iter().zip(&places[v * LANES..][..LANES]) {
                let Some(place) = place else {
                    continue;
                };
                let o = place + ob * image;
                // SAFETY: position `(oy, ox)` of block `ob` belongs to this task alone,
                // and `o` is inside the output of shape `ys` (and the residual, of the
                // same shape).
                unsafe {
                    let residual = store.residual.map(|r| r.as_ptr().add(o));
                    let value = finish(s, value, (scale, shift), residual);
                    let value = activate(s, store.activation, value);
                    s.store_ptr(y.at(o), value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::blocked::tests::{blocks, close, reference, values, TestEpilogue};
    use super::super::blocked::{from_blocked, Window};
    use super::*;
    use crate::nn::kernels::every_kernels;
    use crate::nn::runtime::Activation;

    /// `weight` with about `1 − density` of its values zeroed, output channel 3's
    /// first row of taps zeroed.
    fn masked(len: usize, density: f32, seed: u32) -> Vec<f32> {
        let mut weight = values(len, seed);
        for v in weight.iter_mut() {
            if *v + 0.5 >= density {
                *v = 0.0;
            }
        }
        weight
    }

    #[test]
    fn sparse_conv_matches_the_definition_at_every_level() {
        // (n, c, o, groups, h, w, kernel, stride, padding, density): 1×1 as in
        // bottlenecks, positions off a tile; 3×3 with padding and stride 2; strided
        // 1×1; groups of whole and of partial blocks; depthwise; a 7×7 stem; one
        // output channel; an all-zero layer; more input channels than one chunk.
        let cases = [
            (2, 40, 35, 1, 7, 7, [1, 1], [1, 1], [0, 0], 0.2),
            (1, 16, 16, 1, 3, 3, [1, 1], [1, 1], [0, 0], 0.5),
            (3, 64, 1, 1, 5, 5, [1, 1], [1, 1], [0, 0], 0.1),
            (1, 24, 20, 1, 9, 8, [1, 1], [1, 1], [0, 0], 0.0),
            (2, 300, 48, 1, 2, 2, [1, 1], [1, 1], [0, 0], 0.3),
            (2, 24, 33, 1, 9, 11, [3, 3], [1, 1], [1, 1], 0.3),
            (1, 48, 32, 1, 14, 13, [3, 3], [2, 2], [1, 1], 0.2),
            (2, 32, 40, 1, 9, 9, [1, 1], [2, 2], [0, 0], 0.4),
            (1, 64, 64, 4, 8, 8, [3, 3], [1, 1], [1, 1], 0.3),
            (1, 32, 32, 2, 6, 7, [3, 3], [2, 2], [1, 1], 0.5),
            (2, 20, 20, 20, 7, 7, [3, 3], [1, 1], [1, 1], 0.7),
            (1, 3, 16, 1, 21, 19, [7, 7], [2, 2], [3, 3], 0.3),
            (1, 200, 24, 1, 5, 4, [3, 3], [1, 1], [2, 1], 0.1),
            (0, 16, 16, 1, 5, 5, [3, 3], [1, 1], [1, 1], 0.3),
        ];
        for (n, c, o, groups, h, w, kernel, stride, padding, density) in cases {
            let taps = kernel[0] * kernel[1];
            let weight = masked(o * c / groups * taps, density, 1);
            let shape = SparseShape {
                out: o,
                inputs: c,
                groups,
                kernel,
                stride,
                padding,
            };
            let packed = SparseConv::new(&weight, shape).expect("packs");
            let out_size = [
                (h + 2 * padding[0] - kernel[0]) / stride[0] + 1,
                (w + 2 * padding[1] - kernel[1]) / stride[1] + 1,
            ];
            let g = Window {
                kernel,
                stride,
                padding,
                size: [h, w],
                out_size,
            };
            let xs = Blocked { n, c, h, w };
            let ys = Blocked {
                n,
                c: o,
                h: out_size[0],
                w: out_size[1],
            };
            let x = values(n * c * h * w, 2);
            let residual = values(n * o * ys.h * ys.w, 3);
            let epilogue = TestEpilogue::new(ys, (4, 5), Some(residual));
            let xb = blocks(&x, xs);
            for f in [Activation::Relu, Activation::Silu] {
                let want = reference(
                    &x,
                    [n, c, h, w],
                    &weight,
                    o,
                    groups,
                    g,
                    epilogue.reference(f),
                );
                for kernels in every_kernels() {
                    for threads in [1, 2] {
                        let mut yb = vec![f32::NAN; ys.len()];
                        let store = epilogue.store(f);
                        assert!(sparse_conv(
                            kernels, &xb, xs, &packed, out_size, store, &mut yb, threads
                        ));
                        let mut got = vec![0.0; want.len()];
                        from_blocked(&yb, ys, &mut got);
                        let what = format!("{kernels:?} t{threads} {f:?} {n}x{c}->{o}/{groups} {h}x{w} k{kernel:?} s{stride:?} p{padding:?}");
                        close(&got, &want, &what);
                    }
                }
            }
        }
    }

    #[test]
    fn one_packing_serves_inputs_of_several_sizes() {
        // The non-zeros' offsets depend on the input's size: kept for the last one,
        // made anew for another.
        let shape = SparseShape {
            out: 20,
            inputs: 24,
            groups: 1,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
        };
        let weight = masked(20 * 24 * 9, 0.3, 1);
        let packed = SparseConv::new(&weight, shape).expect("packs");
        let kernels = *every_kernels().last().expect("a level");
        for (n, h, w) in [(1, 5, 5), (2, 7, 6), (1, 5, 5), (3, 5, 5)] {
            let g = Window {
                kernel: [3, 3],
                stride: [1, 1],
                padding: [1, 1],
                size: [h, w],
                out_size: [h, w],
            };
            let xs = Blocked { n, c: 24, h, w };
            let ys = Blocked { c: 20, ..xs };
            let x = values(n * 24 * h * w, 2);
            let epilogue = TestEpilogue::new(ys, (4, 5), None);
            let f = Activation::Identity;
            let want = reference(&x, [n, 24, h, w], &weight, 20, 1, g, epilogue.reference(f));
            let mut yb = vec![f32::NAN; ys.len()];
            let store = epilogue.store(f);
            assert!(sparse_conv(
                kernels,
                &blocks(&x, xs),
                xs,
                &packed,
                [h, w],
                store,
                &mut yb,
                1
            ));
            let mut got = vec![0.0; want.len()];
            from_blocked(&yb, ys, &mut got);
            close(&got, &want, &format!("{n}x{h}x{w}"));
        }
    }

    #[test]
    fn sparse_conv_declines_an_input_that_is_not_finite() {
        // NaN and infinities reach every output that the dense kernels' zero weights
        // multiply them into: the caller runs those instead.
        for (stride, bad) in [([1, 1], f32::NAN), ([2, 2], f32::INFINITY)] {
            let shape = SparseShape {
                out: 16,
                inputs: 16,
                groups: 1,
                kernel: [3, 3],
                stride,
                padding: [1, 1],
            };
            let packed = SparseConv::new(&masked(16 * 16 * 9, 0.3, 1), shape).expect("packs");
            let xs = Blocked {
                n: 1,
                c: 16,
                h: 6,
                w: 6,
            };
            let mut x = blocks(&values(16 * 36, 2), xs);
            x[LANES * 7 + 5] = bad;
            let out_size = [6 / stride[0], 6 / stride[1]];
            let ys = Blocked {
                c: 16,
                h: out_size[0],
                w: out_size[1],
                ..xs
            };
            let epilogue = TestEpilogue::new(ys, (4, 5), None);
            for kernels in every_kernels() {
                let mut y = vec![0.0; ys.len()];
                let store = epilogue.store(Activation::Identity);
                assert!(!sparse_conv(
                    kernels, &x, xs, &packed, out_size, store, &mut y, 1
                ));
            }
        }
    }
}
