//! A sparse 1×1 convolution on channel-blocked activations (see [`super::blocked`]):
//! the candidate that shows whether unstructured sparsity can share the blocked layout.
//!
//! Unstructured sparsity gives each output channel its own input channels, so the
//! vector lanes must hold positions, not channels (Elsen et al., CVPR 2020; XNNPACK's
//! `f32-spmm`). Here a tile of up to 64 positions (anywhere in the batch) is read from
//! the blocked input and transposed in registers, sixteen positions × sixteen
//! channels at a time, into a scratch of `[channel][positions]` rows; every output
//! channel then sums its non-zero weights times those rows, up to four vectors of
//! positions side by side, and sixteen output channels are transposed back into a block
//! of the output, the store fused. The transposes cost two per input and output
//! value; the products, one multiply-add per non-zero weight and position.

use super::activation::activate;
use super::blocked::{finish, Blocked, Store};
use super::{Kernel, Kernels, Simd, LANES};
use crate::nn::runtime::with_scratch;
use rayon::prelude::*;

/// Positions per tile: four vectors.
const TILE: usize = 4 * LANES;

/// The non-zero weights of a 1×1 convolution, row by row (compressed sparse rows over
/// the output channels).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SparseRows {
    /// Output channels.
    pub out: usize,
    /// Input channels.
    pub inputs: usize,
    /// Row `o` is `offsets[o]..offsets[o + 1]` of `channels` and `values`.
    pub offsets: Vec<u32>,
    pub channels: Vec<u32>,
    pub values: Vec<f32>,
}

impl SparseRows {
    /// The non-zeros of `weight` (`[out, inputs]`), each row in input order.
    pub(crate) fn new(weight: &[f32], out: usize, inputs: usize) -> Self {
        assert_eq!(weight.len(), out * inputs);
        let (mut offsets, mut channels, mut values) = (vec![0u32], vec![], vec![]);
        for row in weight.chunks_exact(inputs.max(1)) {
            for (c, &v) in row.iter().enumerate() {
                if v != 0.0 {
                    channels.push(c as u32);
                    values.push(v);
                }
            }
            offsets.push(values.len() as u32);
        }
        SparseRows {
            out,
            inputs,
            offsets,
            channels,
            values,
        }
    }
}

/// `y = store(w · x)` for blocked `x` (shape `xs`, `w.inputs` channels) into blocked
/// `y` (`w.out` channels, same size), tiles of positions spread over `threads`.
pub(crate) fn sparse_pointwise(
    kernels: Kernels,
    x: &[f32],
    xs: Blocked,
    w: &SparseRows,
    store: Store<'_>,
    y: &mut [f32],
    threads: usize,
) {
    let ys = Blocked { c: w.out, ..xs };
    assert!(xs.c == w.inputs && x.len() == xs.len() && y.len() == ys.len());
    assert!(store.scale.len() == ys.blocks() * LANES && store.shift.len() == store.scale.len());
    assert!(store.residual.is_none_or(|r| r.len() == y.len()));
    let positions = xs.n * xs.h * xs.w;
    let tiles = positions.div_ceil(TILE);
    // Tiles write disjoint positions of `y`; the pointer crosses threads as an integer.
    let y_at = y.as_mut_ptr() as usize;
    // The scratch is taken outside the kernel: a closure inside it would be compiled
    // for the baseline processor.
    let task = |t: usize| {
        with_scratch(|scratch| {
            kernels.run(SparseTile {
                x,
                xs,
                w,
                store,
                y: y_at as *mut f32,
                ys,
                first: t * TILE,
                count: TILE.min(positions - t * TILE),
                cols: &mut scratch.mapped,
            })
        })
    };
    if threads > 1 {
        (0..tiles).into_par_iter().for_each(task);
    } else {
        (0..tiles).for_each(task);
    }
}

/// Positions `first..first + count` of [`sparse_pointwise`], as a [`Kernel`].
struct SparseTile<'a> {
    x: &'a [f32],
    xs: Blocked,
    w: &'a SparseRows,
    store: Store<'a>,
    /// The output, of shape `ys`; this tile writes only its own positions.
    y: *mut f32,
    ys: Blocked,
    first: usize,
    count: usize,
    /// This thread's scratch for the transposed tile.
    cols: &'a mut Vec<f32>,
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

/// Where position `q` of the batch (image-major) starts in a blocked tensor of shape
/// `s`, in block `block`.
#[inline(always)]
fn at(s: Blocked, q: usize, block: usize) -> usize {
    let hw = s.h * s.w;
    ((q / hw * s.blocks() + block) * hw + q % hw) * LANES
}

/// [`SparseTile`] with `V` vectors of positions (the last one maybe partly past the
/// tile's positions: those lanes repeat its last position and are not stored).
#[inline(always)]
fn sparse_tile<S: Simd, const V: usize>(s: S, t: SparseTile<'_>) {
    let SparseTile {
        x,
        xs,
        w,
        store,
        y,
        ys,
        first,
        count,
        cols,
    } = t;
    let last = first + count - 1;
    let cin = xs.blocks() * LANES;
    {
        cols.clear();
        cols.resize(cin * V * LANES, 0.0);
        // Transpose the tile: `cols[c][v][16]` holds channel c at positions
        // `first + 16v..`.
        for v in 0..V {
            for cb in 0..xs.blocks() {
                let mut rows: [S::V; LANES] = std::array::from_fn(|r| {
                    let q = (first + v * LANES + r).min(last);
                    s.load(x[at(xs, q, cb)..][..LANES].try_into().expect("16 lanes"))
                });
                s.transpose(&mut rows);
                for (i, row) in rows.iter().enumerate() {
                    let c = cb * LANES + i;
                    let dst = &mut cols[(c * V + v) * LANES..][..LANES];
                    s.store(dst.try_into().expect("16 lanes"), *row);
                }
            }
        }
        let cols = &cols[..];
        for ob in 0..ys.blocks() {
            // Sixteen output channels × V vectors of positions.
            let mut out = [[s.zero(); LANES]; V];
            for lane in 0..LANES.min(w.out - ob * LANES) {
                let o = ob * LANES + lane;
                let row = w.offsets[o] as usize..w.offsets[o + 1] as usize;
                let mut acc = [s.zero(); V];
                let (channels, values) = (&w.channels[row.clone()], &w.values[row]);
                assert!(channels.iter().all(|&c| (c as usize) < cin));
                let at = cols.as_ptr();
                for (&c, &value) in channels.iter().zip(values) {
                    let wv = s.splat(value);
                    // SAFETY: `c < cin` (checked above): its row of `cols` holds V vectors.
                    let xc = unsafe { at.add(c as usize * V * LANES) };
                    for (v, a) in acc.iter_mut().enumerate() {
                        // SAFETY: as above.
                        *a = s.fma(wv, unsafe { s.load_ptr(xc.add(v * LANES)) }, *a);
                    }
                }
                for v in 0..V {
                    out[v][lane] = acc[v];
                }
            }
            let scale = s.load(store.scale[ob * LANES..][..LANES].try_into().expect("16"));
            let shift = s.load(store.shift[ob * LANES..][..LANES].try_into().expect("16"));
            for (v, rows) in out.iter_mut().enumerate() {
                s.transpose(rows);
                for (r, &row) in rows.iter().enumerate() {
                    let q = first + v * LANES + r;
                    if q > last {
                        break;
                    }
                    let o = at(ys, q, ob);
                    // SAFETY: position `q` of the output belongs to this tile alone, and
                    // `o` is inside the output of shape `ys` (and of the residual, of
                    // the same shape).
                    unsafe {
                        let residual = store.residual.map(|r| r.as_ptr().add(o));
                        let value = finish(s, row, (scale, shift), residual);
                        let value = activate(s, store.activation, value);
                        s.store_ptr(y.add(o), value);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::blocked::tests::values;
    use super::super::blocked::{from_blocked, pack_pointwise, pointwise, to_blocked};
    use super::*;
    use crate::nn::kernels::every_kernels;
    use crate::nn::runtime::Activation;

    #[test]
    fn sparse_pointwise_equals_the_dense_kernel_on_the_same_weights() {
        // Positions not a multiple of a tile or of 16, channels off the block, a row
        // with no non-zero, an all-zero layer, one output channel.
        for (n, c, o, h, w, density) in [
            (2, 40, 35, 7, 7, 0.2),
            (1, 16, 16, 3, 3, 0.5),
            (3, 64, 1, 5, 5, 0.1),
            (1, 24, 20, 9, 8, 0.0),
            (2, 300, 48, 2, 2, 0.3),
        ] {
            let mut weight = values(o * c, 1);
            for (i, v) in weight.iter_mut().enumerate() {
                if (*v + 0.5) >= density as f32 || i % c == 0 && i / c == 3 {
                    *v = 0.0;
                }
            }
            let x = values(n * c * h * w, 2);
            let xs = Blocked { n, c, h, w };
            let ys = Blocked { c: o, ..xs };
            let mut xb = vec![0.0; xs.len()];
            to_blocked(&x, xs, &mut xb);
            let scale: Vec<f32> = (0..ys.blocks() * LANES)
                .map(|i| 1.0 + i as f32 / 64.0)
                .collect();
            let shift: Vec<f32> = (0..ys.blocks() * LANES)
                .map(|i| i as f32 / 128.0 - 0.2)
                .collect();
            let store = Store {
                scale: &scale,
                shift: &shift,
                activation: Activation::Relu,
                residual: None,
            };
            let rows = SparseRows::new(&weight, o, c);
            for kernels in every_kernels() {
                let mut dense = vec![0.0; ys.len()];
                pointwise(
                    kernels,
                    &xb,
                    xs,
                    &pack_pointwise(&weight, o, c),
                    o,
                    store,
                    &mut dense,
                    1,
                );
                let mut sparse = vec![f32::NAN; ys.len()];
                sparse_pointwise(kernels, &xb, xs, &rows, store, &mut sparse, 2);
                let (mut a, mut b) = (vec![0.0; n * o * h * w], vec![0.0; n * o * h * w]);
                from_blocked(&dense, ys, &mut a);
                from_blocked(&sparse, ys, &mut b);
                for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        (p - q).abs() <= 1e-5 * (1.0 + p.abs()),
                        "{kernels:?} {n}x{c}->{o} {h}x{w}: [{i}] dense {p}, sparse {q}"
                    );
                }
            }
        }
    }
}
