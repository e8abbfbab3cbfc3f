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

use super::blocked::{each_index, finish, Blocked, SharedOut, Store};
use super::geometry::Geometry;
use super::{Kernel, Kernels, Simd, LANES};
use crate::nn::runtime::{buffer, recycle_buffer, with_scratch};
use std::sync::{Arc, Mutex};

mod planes;
mod tile;

use planes::{spread, Planes};
use tile::SparseTile;

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

/// The non-zero weights of a convolution, packed for [`sparse_conv`].
#[derive(Debug)]
pub(crate) struct SparseConv {
    /// Its channels, groups and window (the sizes are each call's).
    geometry: Geometry,
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
    /// The non-zeros of `weight` (`[out, in / groups, kh, kw]`) of a convolution of
    /// `shape`'s channels, groups and window (its sizes are each call's), or `None` when the
    /// kernel has more than 256 taps or the counts overflow 32 bits.
    pub(crate) fn new(weight: &[f32], shape: Geometry) -> Option<Self> {
        let taps = shape.taps();
        let (cg, og) = (
            shape.in_channels / shape.groups,
            shape.out_channels / shape.groups,
        );
        assert_eq!(
            weight.len(),
            shape.out_channels * cg * taps,
            "weight of the shape"
        );
        if taps > MAX_TAPS || shape.in_channels >= 1 << 24 || weight.len() >= u32::MAX as usize {
            return None;
        }
        // One tile's reads per input channel: each tap, its vectors of positions. A
        // chunk's reads fit the level-1 cache; but in sparser layers, a chunk gives
        // each output channel at least `ROW_NONZEROS` on average, so that the cost of
        // reloading its partial sums stays small.
        let per_channel = taps * TILE * std::mem::size_of::<f32>();
        let nonzeros = weight.iter().filter(|v| **v != 0.0).count();
        let per_row = nonzeros as f64 / (shape.out_channels * shape.in_channels).max(1) as f64;
        let sparse_chunk = (ROW_NONZEROS as f64 / per_row.max(f64::MIN_POSITIVE)).ceil();
        let chunk = (CHUNK_BYTES / per_channel)
            .max(sparse_chunk.min(shape.in_channels as f64) as usize)
            .clamp(1, shape.in_channels.max(1));
        let chunks = shape.in_channels.div_ceil(chunk);
        let rows = shape.out_channels.div_ceil(LANES) * LANES;
        let (mut starts, mut keys, mut values) = (vec![0u32], vec![], vec![]);
        for k in 0..chunks {
            let channels = k * chunk..((k + 1) * chunk).min(shape.in_channels);
            for o in 0..rows {
                if o < shape.out_channels {
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
            geometry: shape,
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
    fn entries(&self, s: Geometry, planes: Planes) -> Arc<Entries> {
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
        self.geometry.in_channels.div_ceil(self.chunk)
    }
}

/// A non-zero weight as a tile reads it: where its input values are in the planes,
/// and its value.
#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: u32,
    value: f32,
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
    let s = w.geometry.with_sizes([xs.h, xs.w], out_size);
    let ys = Blocked {
        c: s.out_channels,
        h: out_size[0],
        w: out_size[1],
        ..xs
    };
    assert!(xs.c == s.in_channels && x.len() == xs.len() && y.len() == ys.len());
    assert!(store.scale.len() == ys.blocks() * LANES && store.shift.len() == store.scale.len());
    assert!(store.residual.is_none_or(|r| r.len() == y.len()));
    if y.is_empty() {
        // No image, or no output position: nothing to compute.
        return true;
    }
    let planes = Planes::new(s, xs);
    let len = s.in_channels * planes.channel;
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

#[cfg(test)]
mod tests {
    use super::super::blocked::from_blocked;
    use super::super::blocked::tests::{blocks, close, reference, values, TestEpilogue};
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
        // bottlenecks, positions off a tile; 3×3 with padding (rows of whole vectors
        // and not) and stride 2; strided
        // 1×1; groups of whole and of partial blocks; depthwise; a 7×7 stem; one
        // output channel; an all-zero layer; more input channels than one chunk.
        let cases = [
            (2, 40, 35, 1, 7, 7, [1, 1], [1, 1], [0, 0], 0.2),
            (1, 16, 16, 1, 3, 3, [1, 1], [1, 1], [0, 0], 0.5),
            (3, 64, 1, 1, 5, 5, [1, 1], [1, 1], [0, 0], 0.1),
            (1, 24, 20, 1, 9, 8, [1, 1], [1, 1], [0, 0], 0.0),
            (2, 300, 48, 1, 2, 2, [1, 1], [1, 1], [0, 0], 0.3),
            (2, 24, 33, 1, 9, 11, [3, 3], [1, 1], [1, 1], 0.3),
            // Two 7 × 7 images side by side: rows not rounded to whole vectors.
            (2, 32, 24, 1, 7, 7, [3, 3], [1, 1], [1, 1], 0.2),
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
            let out_size = [
                (h + 2 * padding[0] - kernel[0]) / stride[0] + 1,
                (w + 2 * padding[1] - kernel[1]) / stride[1] + 1,
            ];
            let g = Geometry::window(c, kernel, stride, padding, [h, w], out_size)
                .with_channels(c, o, groups);
            let packed = SparseConv::new(&weight, g).expect("packs");
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
        let shape = Geometry::window(24, [3, 3], [1, 1], [1, 1], [0, 0], [0, 0]);
        let shape = shape.with_channels(24, 20, 1);
        let weight = masked(20 * 24 * 9, 0.3, 1);
        let packed = SparseConv::new(&weight, shape).expect("packs");
        let kernels = *every_kernels().last().expect("a level");
        for (n, h, w) in [(1, 5, 5), (2, 7, 6), (1, 5, 5), (3, 5, 5)] {
            let g = shape.with_sizes([h, w], [h, w]);
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
            let shape = Geometry::window(16, [3, 3], stride, [1, 1], [0, 0], [0, 0]);
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
