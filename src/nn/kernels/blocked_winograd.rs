//! Winograd's F(2×2, 3×3) on channel-blocked activations: 3 × 3 stride-1 convolutions
//! of one group in 16 multiplications per 2 × 2 outputs instead of 36.
//!
//! 1. Each 4 × 4 input tile (2 apart, the padding's values zero) of every block of
//!    sixteen channels is transformed, `V = Bᵀ d B`, into sixteen values ξ.
//! 2. For each ξ, the tiles' values are multiplied by the transformed weights
//!    `U = G g Gᵀ` of that ξ: one 1×1 convolution over the tiles, by the blocked 1×1
//!    kernel ([`pointwise`]).
//! 3. Each tile's sixteen products are transformed back, `Y = Aᵀ M A`, into its 2 × 2
//!    outputs, and the store (scale, shift, residual, activation) is applied to them.

use super::blocked::{activate_stored, each_chunk, each_index, finish, Blocked};
use super::blocked::{SharedOut, Store};
use super::blocked_pointwise::pointwise;
use super::{Kernel, Kernels, Simd, LANES};
use crate::nn::runtime::{buffer, recycle_buffer, Activation};

/// The sixteen transformed values of a tile, ξ = 4·row + column.
const XI: usize = 16;

/// The weights `[O, C, 3, 3]` in Winograd's domain, `U = G g Gᵀ`, packed as sixteen
/// sets of 1×1 weights, one per ξ: `[ξ][⌈O/16⌉][⌈C/16⌉·16][16]`.
pub(crate) fn pack_winograd(weight: &[f32], o: usize, c: usize) -> Vec<f32> {
    assert_eq!(weight.len(), o * c * 9);
    let cin = c.div_ceil(LANES) * LANES;
    let per_xi = o.div_ceil(LANES) * cin * LANES;
    let mut packed = vec![0.0; XI * per_xi];
    for oc in 0..o {
        for ic in 0..c {
            let g = &weight[(oc * c + ic) * 9..][..9];
            // G g: 4 × 3, then (G g) Gᵀ: 4 × 4, in f64.
            let mut gg = [[0f64; 3]; 4];
            for j in 0..3 {
                let (a, b, d) = (g[j] as f64, g[3 + j] as f64, g[6 + j] as f64);
                gg[0][j] = a;
                gg[1][j] = (a + b + d) / 2.0;
                gg[2][j] = (a - b + d) / 2.0;
                gg[3][j] = d;
            }
            for (i, row) in gg.iter().enumerate() {
                let [a, b, d] = *row;
                let u = [a, (a + b + d) / 2.0, (a - b + d) / 2.0, d];
                for (j, &v) in u.iter().enumerate() {
                    let xi = 4 * i + j;
                    let at = xi * per_xi + ((oc / LANES) * cin + ic) * LANES + oc % LANES;
                    packed[at] = v as f32;
                }
            }
        }
    }
    packed
}

/// The 3 × 3 stride-1 convolution of `x` (blocked, shape `xs`) with `padding`, by
/// `weights` (from [`pack_winograd`], `out` channels), into `y` (blocked, `out`
/// channels of `xs`'s size plus `2·padding − 2`).
///
/// With at least as many images as threads, each step runs over the whole batch (the
/// products over every image's tiles at once). With fewer, each thread takes a range
/// of an image's tiles through all three steps ([`part`]): what it transforms, it
/// multiplies and transforms back, and its tiles are the same from layer to layer.
#[allow(clippy::too_many_arguments)]
pub(crate) fn winograd(
    kernels: Kernels,
    x: &[f32],
    xs: Blocked,
    weights: &[f32],
    out: usize,
    padding: [usize; 2],
    store: Store<'_>,
    y: &mut [f32],
    threads: usize,
) {
    let (ho, wo) = (xs.h + 2 * padding[0] - 2, xs.w + 2 * padding[1] - 2);
    let ys = Blocked {
        c: out,
        h: ho,
        w: wo,
        ..xs
    };
    let tiles = Tiles {
        rows: ho.div_ceil(2),
        cols: wo.div_ceil(2),
        padding,
    };
    let count = tiles.rows * tiles.cols;
    assert!(x.len() == xs.len() && y.len() == ys.len());
    assert!(weights.len() == XI * ys.blocks() * xs.blocks() * LANES * LANES);
    assert!(store.scale.len() == ys.blocks() * LANES && store.shift.len() == store.scale.len());
    assert!(store.residual.is_none_or(|r| r.len() == y.len()));
    let conv = Winograd {
        kernels,
        x,
        xs,
        ys,
        weights,
        tiles,
        store,
        y: SharedOut(y.as_mut_ptr()),
        ones: vec![1.0; ys.blocks() * LANES],
        zeros: vec![0.0; ys.blocks() * LANES],
    };
    // By tiles, each thread reads every weight; by steps, the transformed tiles go from
    // thread to thread. Tiles when the weights are the smaller (or small anyway).
    let weight_bytes = std::mem::size_of_val(weights);
    let tile_bytes = XI * count * (xs.blocks() + ys.blocks()) * LANES * 4;
    let by_tiles = weight_bytes <= SMALL_WEIGHTS || 2 * weight_bytes <= tile_bytes;
    if threads > 1 && (1..threads).contains(&xs.n) && by_tiles {
        let per_image = threads.div_ceil(xs.n);
        let per_part = count.div_ceil(per_image).max(1);
        let parts = count.div_ceil(per_part);
        each_index(xs.n * parts, threads, |i| {
            let (image, p) = (i / parts, i % parts);
            let first = p * per_part;
            conv.part(image, first..(first + per_part).min(count));
        });
    } else {
        conv.whole(threads);
    }
}

/// Weights that every thread may read without cost: they stay in its level-2 cache.
const SMALL_WEIGHTS: usize = 512 * 1024;

/// The transformed tiles and products of one run of [`Winograd::part`], at most: they
/// stay in the level-2 cache between the steps.
const PART_BYTES: usize = 512 * 1024;

/// One call of [`winograd`]: its operands and output.
struct Winograd<'a> {
    kernels: Kernels,
    x: &'a [f32],
    xs: Blocked,
    ys: Blocked,
    weights: &'a [f32],
    tiles: Tiles,
    store: Store<'a>,
    /// The output, of shape `ys`: each task writes the outputs of its tiles.
    y: SharedOut,
    /// The products' scale and shift (one and zero per output channel).
    ones: Vec<f32>,
    zeros: Vec<f32>,
}

impl Winograd<'_> {
    /// The products of ξ: `vx` (of shape `vs`) by ξ's weights, into `mx`, with no
    /// store (the output transform applies `store`).
    fn products(&self, xi: usize, vx: &[f32], vs: Blocked, mx: &mut [f32]) {
        let plain = Store {
            scale: &self.ones,
            shift: &self.zeros,
            activation: Activation::Identity,
            residual: None,
        };
        let per_xi = self.weights.len() / XI;
        let wx = &self.weights[xi * per_xi..][..per_xi];
        pointwise(self.kernels, vx, vs, wx, self.ys.c, plain, mx, 1);
    }

    /// Every image's tiles, each step over the whole batch on `threads` threads.
    fn whole(&self, threads: usize) {
        let count = self.tiles.rows * self.tiles.cols;
        self.steps(0..self.xs.n, 0..count, threads);
    }

    /// Tiles `range` of image `image`, through the three steps on this thread, in runs
    /// whose transformed tiles and products stay in the level-2 cache.
    fn part(&self, image: usize, range: std::ops::Range<usize>) {
        let per_tile = XI * (self.xs.blocks() + self.ys.blocks()) * LANES * 4;
        let run = (PART_BYTES / per_tile).max(1);
        let mut first = range.start;
        while first < range.end {
            let end = (first + run).min(range.end);
            self.steps(image..image + 1, first..end, 1);
            first = end;
        }
    }

    /// Tiles `range` of images `images`, through the three steps, each on `threads`
    /// threads.
    fn steps(&self, images: std::ops::Range<usize>, range: std::ops::Range<usize>, threads: usize) {
        let (xs, ys, tiles) = (self.xs, self.ys, self.tiles);
        let len = range.len();
        // The transformed tiles, `[ξ][image][⌈C/16⌉][tile][16]`: for each ξ, a blocked
        // tensor of the images whose positions are the tiles.
        let vs = Blocked {
            n: images.len(),
            c: xs.c,
            h: 1,
            w: len,
        };
        let ms = Blocked { c: ys.c, ..vs };
        let mut v = buffer(XI * vs.len());
        let plane_in = xs.h * xs.w * LANES;
        let (first_in, first_out) = (images.start * xs.blocks(), images.start * ys.blocks());
        {
            // Each (image, block)'s tiles go to sixteen places, one per ξ.
            let v = SharedOut(v.as_mut_ptr());
            each_index(vs.n * xs.blocks(), threads, |p| {
                let plane = first_in + p;
                self.kernels.run(TransformIn {
                    x: &self.x[plane * plane_in..][..plane_in],
                    size: [xs.h, xs.w],
                    tiles,
                    range: range.clone(),
                    // SAFETY: plane `p`'s tiles of every ξ are written by this task
                    // alone.
                    v: unsafe { v.at(p * len * LANES) },
                    xi_stride: vs.len(),
                })
            });
        }
        // The products, one 1×1 convolution per ξ: one task per ξ, each product on
        // one thread, one fork-join for all sixteen.
        let mut m = buffer(XI * ms.len());
        let products = m[..XI * ms.len()].chunks_mut(ms.len().max(1)).collect();
        each_chunk(products, threads, |xi, mx| {
            self.products(xi, &v[xi * vs.len()..][..vs.len()], vs, mx)
        });
        recycle_buffer(v);
        // Back to outputs, with the store.
        each_index(ms.n * ys.blocks(), threads, |p| {
            self.out(
                first_out + p,
                &m[p * len * LANES..],
                ms.len(),
                range.clone(),
            )
        });
        recycle_buffer(m);
    }

    /// The output transform and store of tiles `range` of output plane `p` (image and
    /// block), from `m`, where the range's first tile of ξ = 0 is, the others
    /// `xi_stride` further for each ξ.
    fn out(&self, p: usize, m: &[f32], xi_stride: usize, range: std::ops::Range<usize>) {
        let ys = self.ys;
        let block = p % ys.blocks();
        let plane_out = ys.h * ys.w * LANES;
        self.kernels.run(TransformOut {
            m,
            xi_stride,
            tiles: self.tiles,
            range,
            size: [ys.h, ys.w],
            scale: &self.store.scale[block * LANES..][..LANES],
            shift: &self.store.shift[block * LANES..][..LANES],
            activation: self.store.activation,
            residual: self
                .store
                .residual
                .map(|r| &r[p * plane_out..][..plane_out]),
            // SAFETY: plane `p` is inside `y`; the task writes the outputs of its tiles
            // only, which no other task writes.
            y: unsafe { self.y.at(p * plane_out) },
        })
    }
}

/// The tiles of an output: `rows × cols` tiles of 2 × 2 outputs, read from the input
/// `padding` before the output's corner.
#[derive(Debug, Clone, Copy)]
struct Tiles {
    rows: usize,
    cols: usize,
    padding: [usize; 2],
}

/// The input transform of one block of one image.
struct TransformIn<'a> {
    /// `[h][w][16]`.
    x: &'a [f32],
    size: [usize; 2],
    tiles: Tiles,
    /// The tiles to transform.
    range: std::ops::Range<usize>,
    /// Where the range's first tile of ξ = 0 goes; ξ's tiles are `xi_stride` further
    /// for each ξ.
    v: *mut f32,
    xi_stride: usize,
}

impl Kernel for TransformIn<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let [h, w] = self.size;
        let [ph, pw] = self.tiles.padding;
        for tile in self.range.clone() {
            let (ty, tx) = (tile / self.tiles.cols, tile % self.tiles.cols);
            {
                // The 4 × 4 window, zeros outside the image.
                let mut d = [s.zero(); 16];
                for (i, row) in d.chunks_exact_mut(4).enumerate() {
                    let iy = (2 * ty + i) as isize - ph as isize;
                    if !(0..h as isize).contains(&iy) {
                        continue;
                    }
                    for (j, v) in row.iter_mut().enumerate() {
                        let ix = (2 * tx + j) as isize - pw as isize;
                        if (0..w as isize).contains(&ix) {
                            let at = (iy as usize * w + ix as usize) * LANES;
                            *v = s.load(self.x[at..at + LANES].try_into().expect("16 lanes"));
                        }
                    }
                }
                let v = transform_in(s, d);
                let tile = tile - self.range.start;
                for (xi, &value) in v.iter().enumerate() {
                    // SAFETY: tile `tile` of ξ is inside this plane's part of the buffer.
                    unsafe { s.store_ptr(self.v.add(xi * self.xi_stride + tile * LANES), value) };
                }
            }
        }
    }
}

/// `Bᵀ d B` of a 4 × 4 tile, row-major.
#[inline(always)]
fn transform_in<S: Simd>(s: S, d: [S::V; 16]) -> [S::V; 16] {
    // Bᵀ rows: [1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1].
    let mut t = [s.zero(); 16];
    for j in 0..4 {
        let (d0, d1, d2, d3) = (d[j], d[4 + j], d[8 + j], d[12 + j]);
        t[j] = s.sub(d0, d2);
        t[4 + j] = s.add(d1, d2);
        t[8 + j] = s.sub(d2, d1);
        t[12 + j] = s.sub(d1, d3);
    }
    let mut v = [s.zero(); 16];
    for i in 0..4 {
        let (t0, t1, t2, t3) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
        v[4 * i] = s.sub(t0, t2);
        v[4 * i + 1] = s.add(t1, t2);
        v[4 * i + 2] = s.sub(t2, t1);
        v[4 * i + 3] = s.sub(t1, t3);
    }
    v
}

/// The output transform and the store of one block of one image.
struct TransformOut<'a> {
    /// The products of this plane, from the range's first tile of ξ = 0; ξ's tiles
    /// are `xi_stride` further for each ξ.
    m: &'a [f32],
    xi_stride: usize,
    tiles: Tiles,
    /// The tiles to transform.
    range: std::ops::Range<usize>,
    /// The output `[ho, wo]`.
    size: [usize; 2],
    scale: &'a [f32],
    shift: &'a [f32],
    activation: Activation,
    /// This plane of the residual.
    residual: Option<&'a [f32]>,
    /// The plane `[ho][wo][16]`, of which the outputs of the range's tiles are
    /// written.
    y: *mut f32,
}

impl Kernel for TransformOut<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let [ho, wo] = self.size;
        let affine = (
            s.load(self.scale.try_into().expect("16 lanes")),
            s.load(self.shift.try_into().expect("16 lanes")),
        );
        let y = self.y;
        for tile in self.range.clone() {
            let (ty, tx) = (tile / self.tiles.cols, tile % self.tiles.cols);
            {
                let mut m = [s.zero(); 16];
                for (xi, mx) in m.iter_mut().enumerate() {
                    let at = xi * self.xi_stride + (tile - self.range.start) * LANES;
                    *mx = s.load(self.m[at..at + LANES].try_into().expect("16 lanes"));
                }
                let out = transform_out(s, m);
                for (i, row) in out.chunks_exact(2).enumerate() {
                    let oy = 2 * ty + i;
                    if oy >= ho {
                        continue;
                    }
                    for (j, &v) in row.iter().enumerate() {
                        let ox = 2 * tx + j;
                        if ox >= wo {
                            continue;
                        }
                        let o = (oy * wo + ox) * LANES;
                        let r = self.residual.map(|r| r[o..o + LANES].as_ptr());
                        // SAFETY: `o` is an output of this plane (of one of the range's
                        // tiles), and of its residual.
                        unsafe {
                            s.store_ptr(y.add(o), finish(s, v, affine, r));
                            activate_stored(s, self.activation, y.add(o), 1);
                        }
                    }
                }
            }
        }
    }
}

/// `Aᵀ m A` of a tile's sixteen products: its 2 × 2 outputs, row-major.
#[inline(always)]
fn transform_out<S: Simd>(s: S, m: [S::V; 16]) -> [S::V; 4] {
    // Aᵀ rows: [1, 1, 1, 0], [0, 1, −1, −1].
    let mut t = [s.zero(); 8];
    for j in 0..4 {
        let (m0, m1, m2, m3) = (m[j], m[4 + j], m[8 + j], m[12 + j]);
        t[j] = s.add(s.add(m0, m1), m2);
        t[4 + j] = s.sub(s.sub(m1, m2), m3);
    }
    let mut y = [s.zero(); 4];
    for i in 0..2 {
        let (t0, t1, t2, t3) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
        y[2 * i] = s.add(s.add(t0, t1), t2);
        y[2 * i + 1] = s.sub(s.sub(t1, t2), t3);
    }
    y
}

#[cfg(test)]
mod tests {
    use super::super::blocked::from_blocked;
    use super::super::blocked::tests::{blocks, close, reference, values, TestEpilogue};
    use super::super::geometry::Geometry;
    use super::*;
    use crate::nn::kernels::every_kernels;

    #[test]
    fn winograd_matches_the_definition_at_every_level() {
        // Odd output sizes (edge tiles with one row or column), channels off the block,
        // more than one pass of input channels, no padding, a map smaller than a tile.
        for (case, (n, c, o, h, w, p)) in [
            (2, 16, 16, 7, 7, 1),
            (1, 20, 40, 9, 6, 1),
            (2, 3, 17, 5, 8, 0),
            (1, 300, 16, 4, 4, 1),
            (1, 16, 32, 1, 1, 1),
            // One image on two threads: each takes a range of its tiles, through
            // every step (with and without a residual).
            (1, 16, 24, 7, 9, 1),
            (1, 40, 24, 9, 7, 1),
        ]
        .into_iter()
        .enumerate()
        {
            let (ho, wo) = (h + 2 * p - 2, w + 2 * p - 2);
            let g = Geometry::window(c, [3, 3], [1, 1], [p, p], [h, w], [ho, wo])
                .with_channels(c, o, 1);
            let f = Activation::ALL[(case + 1) % Activation::ALL.len()];
            let xs = Blocked { n, c, h, w };
            let ys = Blocked {
                c: o,
                h: ho,
                w: wo,
                ..xs
            };
            let residual = (case % 2 == 0).then(|| values(n * o * ho * wo, 31));
            let x = values(n * c * h * w, 32);
            let weight = values(o * c * 9, 33);
            let epilogue = TestEpilogue::new(ys, (34, 35), residual);
            let want = reference(&x, [n, c, h, w], &weight, o, 1, g, epilogue.reference(f));
            let xb = blocks(&x, xs);
            let packed = pack_winograd(&weight, o, c);
            let store = epilogue.store(f);
            for kernels in every_kernels() {
                for threads in [1, 2] {
                    let mut yb = vec![f32::NAN; ys.len()];
                    winograd(
                        kernels,
                        &xb,
                        xs,
                        &packed,
                        o,
                        [p, p],
                        store,
                        &mut yb,
                        threads,
                    );
                    let mut y = vec![0.0; want.len()];
                    from_blocked(&yb, ys, &mut y);
                    close(
                        &y,
                        &want,
                        &format!("{kernels:?} case {case} t{threads} {f}"),
                    );
                }
            }
        }
    }
}
