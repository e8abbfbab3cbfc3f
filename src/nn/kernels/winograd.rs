//! Winograd's F(2×2, 3×3) convolution, for 3×3 stride-1 convolutions of 16 to 64
//! channels on x86-64 processors with AVX-512F.
//!
//! Each 2×2 block of output pixels (a *tile*) is computed from the 4×4 input window
//! around it with 16 multiplications per input and output channel instead of 36: the
//! window `d` and the kernel `g` are carried to a 4×4 domain (`V = Bᵀ d B`,
//! `U = G g Gᵀ`), multiplied element by element and summed over the input channels
//! (`M = Σ_c U ⊙ V`: sixteen products of `[tiles × C]` by `[C × 16]`, one per element
//! ξ of the 4×4 domain), and carried back (`Y = Aᵀ M A`). The matrices are those of
//! Lavin and Gray, *Fast Algorithms for Convolutional Neural Networks* (2016):
//!
//! ```text
//! Bᵀ = [1  0 −1  0]     G = [ 1    0    0 ]     Aᵀ = [1  1  1  0]
//!      [0  1  1  0]         [ ½    ½    ½ ]          [0  1 −1 −1]
//!      [0 −1  1  0]         [ ½   −½    ½ ]
//!      [0  1  0 −1]         [ 0    0    1 ]
//! ```
//!
//! The kernels are transformed once (in `f64`, then rounded) and kept with the
//! convolution. The transforms only add and subtract (and halve, for `G`), so the
//! result differs from the direct sum by rounding alone, a few units in the last
//! place of the largest terms. The input windows are read straight from the image by
//! masked loads, so that the padding reads as zeros without a padded copy. Tiles are
//! processed in blocks of up to 28, whose products run in vector registers as in the
//! direct kernel; the output goes through the same epilogue (batch norm, ReLU,
//! calibration moments).

use super::direct::ImageCall;
use super::geometry::Geometry;
use super::store::{as_arrays, as_floats, store_channels, Affine, Moments};
use super::{Kernel, Kernels, Simd, LANES};
use crate::nn::runtime::{with_scratch, Line, Scratch};

/// Tiles per block: accumulators held in vector registers during a product.
const BLOCK: usize = 28;

/// Distance between input channels in the transformed input of a block: the block's
/// tiles, rounded up to whole vectors of 16 tiles (whole cache lines).
const TILE_STRIDE: usize = BLOCK.div_ceil(LANES) * LANES;

/// Distance between the elements ξ of the transformed input: one cache line more than
/// its `C` channels, so that the 16 stores of a transformed window do not all fall in
/// the same set of the level-1 cache (at 64 channels, `C·TILE_STRIDE` floats are a
/// multiple of 4 KiB).
fn xi_stride(c_in: usize) -> usize {
    c_in * TILE_STRIDE + LANES
}

/// Whether Winograd's F(2×2, 3×3) computes `g`: a 3×3 kernel, stride 1, no dilation.
pub(crate) fn computes(g: &Geometry) -> bool {
    g.kernel == [3, 3] && g.stride == [1, 1] && g.dilation == [1, 1] && g.suits_image_kernels()
}

/// The kernels `[O, C, 3, 3]` carried to the Winograd domain, `U = G g Gᵀ`, laid out
/// as `[O/16][ξ][C][16]`.
pub(crate) fn transform_weights(g: &Geometry, weight: &[f32]) -> Vec<f32> {
    let c_in = g.in_channels;
    assert_eq!(weight.len(), g.out_channels * c_in * 9);
    let mut u = vec![0.0; g.out_channels * c_in * 16];
    for (k, g) in weight.chunks_exact(9).enumerate() {
        let (o, c) = (k / c_in, k % c_in);
        let g: Vec<f64> = g.iter().map(|&v| v as f64).collect();
        // G·g, 4 × 3.
        let mut gg = [[0.0f64; 3]; 4];
        for col in 0..3 {
            let (a, b, d) = (g[col], g[3 + col], g[6 + col]);
            gg[0][col] = a;
            gg[1][col] = (a + b + d) / 2.0;
            gg[2][col] = (a - b + d) / 2.0;
            gg[3][col] = d;
        }
        // (G·g)·Gᵀ, 4 × 4.
        for (p, &[a, b, d]) in gg.iter().enumerate() {
            for (q, v) in [a, (a + b + d) / 2.0, (a - b + d) / 2.0, d]
                .into_iter()
                .enumerate()
            {
                let xi = 4 * p + q;
                u[(((o / LANES) * 16 + xi) * c_in + c) * LANES + o % LANES] = v as f32;
            }
        }
    }
    u
}

/// Winograd's buffers in this thread's scratch memory, grown as needed, for `c_in`
/// input channels and tile rows of `tw` tiles: the transformed input of a block,
/// `[ξ][C][TILE_STRIDE]` (ξ [`xi_stride`] apart); its products, `[ξ][BLOCK]` groups of
/// 16 output channels; its output pixels, by output row. All in whole cache lines.
fn buffers(
    [v, m, pixels]: &mut [Vec<Line>; 3],
    c_in: usize,
    tw: usize,
) -> (&mut [f32], &mut [[f32; LANES]], &mut [[f32; LANES]]) {
    // Two output rows of 2·tw pixels per tile row of a block.
    let rows_per_block = if tw <= BLOCK { BLOCK / tw } else { 1 };
    let pixel_count = 2 * rows_per_block * 2 * tw.min(BLOCK);
    for (buffer, len) in [
        (&mut *v, 16 * xi_stride(c_in) / LANES),
        (&mut *m, 16 * BLOCK),
        (&mut *pixels, pixel_count),
    ] {
        buffer.resize(buffer.len().max(len), Line::default());
    }
    (as_floats(v), as_arrays(m), as_arrays(pixels))
}

/// A run of tiles in one tile row: row `row`, columns `col..col + len`.
#[derive(Debug, Clone, Copy)]
struct Segment {
    row: usize,
    col: usize,
    len: usize,
}

/// At most [`BLOCK`] tiles: the same columns `col..col + len` of the tile rows
/// `row..row + rows` (whole rows, or a piece of one row).
#[derive(Debug, Clone, Copy)]
struct Block {
    row: usize,
    rows: usize,
    col: usize,
    len: usize,
}

impl Block {
    fn tiles(&self) -> usize {
        self.rows * self.len
    }

    /// The block's tiles, row by row.
    fn segments(&self) -> impl Iterator<Item = Segment> + '_ {
        (self.row..self.row + self.rows).map(|row| Segment {
            row,
            col: self.col,
            len: self.len,
        })
    }
}

/// The blocks of a `th × tw` tile grid: as many whole tile rows as fit in [`BLOCK`]
/// tiles, else pieces of one row.
fn blocks(th: usize, tw: usize) -> impl Iterator<Item = Block> {
    let rows = (BLOCK / tw.max(1)).max(1);
    (0..th).step_by(rows).flat_map(move |row| {
        (0..tw).step_by(BLOCK).map(move |col| Block {
            row,
            rows: rows.min(th - row),
            col,
            len: BLOCK.min(tw - col),
        })
    })
}

/// Convolves one image `x` `[C, h, w]` (mapped by `call.input` as it is read, when
/// given) into `y` `[O, ho, wo]` with the kernels transformed by
/// [`transform_weights`], then applies the epilogue; fills `moments` (`[O]`), when
/// given, with each output plane's mean and sum of squared deviations from it before
/// the ReLU.
pub(crate) fn image(
    kernels: Kernels,
    call: &ImageCall<'_>,
    x: &[f32],
    y: &mut [f32],
    moments: Option<&mut [(f64, f64)]>,
) {
    call.check(x, y, moments.as_deref());
    let g = call.geometry;
    assert!(computes(g), "{g:?}");
    assert_eq!(call.weights.len(), g.out_channels * 16 * g.in_channels);
    let ([h, w], [_, wo]) = (g.size, g.out_size);
    let (c_in, out_blocks) = (g.in_channels, g.out_channels / LANES);
    let mut stats: Vec<Moments> = match moments {
        Some(_) => (0..out_blocks).map(|_| Moments::default()).collect(),
        None => Vec::new(),
    };
    with_scratch(|scratch| {
        let Scratch { mapped, lines, .. } = scratch;
        let (v, m, pixels) = buffers(lines, c_in, wo.div_ceil(2));
        // A mapped input is mapped once, into this thread's copy of the image (in
        // cache for the transform, which reads each value about four times).
        let x = match call.input {
            None => x,
            Some(map) => {
                mapped.resize(x.len(), 0.0);
                let planes = mapped.chunks_exact_mut(h * w).zip(x.chunks_exact(h * w));
                for (ch, (to, from)) in planes.enumerate() {
                    map.map_plane(ch, from, to);
                }
                &mapped[..]
            }
        };
        let work = Work {
            v,
            m,
            pixels,
            stats: &mut stats,
        };
        kernels.run(Blocks { call, x, y, work })
    });
    if let Some(moments) = moments {
        for (kb, st) in stats.iter().enumerate() {
            for (lane, m) in moments[kb * LANES..(kb + 1) * LANES].iter_mut().enumerate() {
                *m = st.plane(lane);
            }
        }
    }
}

/// The working memory of one image: the transformed input, the products, the output
/// pixels of a block, and the moments of each block of 16 output channels (empty
/// when not asked for).
struct Work<'a> {
    v: &'a mut [f32],
    m: &'a mut [[f32; LANES]],
    pixels: &'a mut [[f32; LANES]],
    stats: &'a mut [Moments],
}

/// [`image`] with its working memory, as a [`Kernel`].
struct Blocks<'a> {
    call: &'a ImageCall<'a>,
    x: &'a [f32],
    y: &'a mut [f32],
    work: Work<'a>,
}

impl Kernel for Blocks<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        blocks_on(s, self.call, self.x, self.y, self.work)
    }
}

/// [`image`] on the instruction set of `s`. Everything it calls is inlined into
/// [`Simd::vectorize`], compiled for that instruction set.
#[inline(always)]
fn blocks_on<S: Simd>(s: S, call: &ImageCall<'_>, x: &[f32], y: &mut [f32], work: Work<'_>) {
    let g = call.geometry;
    let [ho, wo] = g.out_size;
    let c_in = g.in_channels;
    let (th, tw) = (ho.div_ceil(2), wo.div_ceil(2));
    let windows = Windows {
        c_in,
        size: g.size,
        padding: g.padding,
    };
    let Work {
        v,
        m,
        pixels,
        stats,
    } = work;
    for block in blocks(th, tw) {
        windows.transform_input(s, x, &block, v);
        let tiles = block.tiles();
        for (kb, u) in call.weights.chunks_exact(16 * c_in * LANES).enumerate() {
            for xi in 0..16 {
                let (v, u) = (&v[xi * xi_stride(c_in)..], &u[xi * c_in * LANES..]);
                multiply(s, v, u, c_in, &mut m[xi * BLOCK..xi * BLOCK + tiles]);
            }
            let out = kb * LANES;
            let map = Affine::of(call.scale, call.shift, out, call.relu);
            let y = Output {
                y: &mut *y,
                first: out * ho * wo,
                size: [ho, wo],
            };
            y.store(s, &block, m, pixels, map, stats.get_mut(kb));
        }
    }
}

/// Where a block's outputs go: the planes of 16 output channels from offset `first` of
/// `y`, each `size` = `[ho, wo]`.
struct Output<'a> {
    y: &'a mut [f32],
    first: usize,
    size: [usize; 2],
}

impl Output<'_> {
    /// `Y = Aᵀ M A` for every tile of `block` (products `m`), laid out by output row in
    /// `pixels`, then stored row by row through the epilogue (and `stats`), without
    /// the rows and columns past the output's edge.
    #[inline(always)]
    fn store<S: Simd>(
        self,
        s: S,
        block: &Block,
        m: &[[f32; LANES]],
        pixels: &mut [[f32; LANES]],
        map: Affine<'_>,
        mut stats: Option<&mut Moments>,
    ) {
        let [ho, wo] = self.size;
        let mut j = 0;
        for (k, seg) in block.segments().enumerate() {
            let width = 2 * seg.len;
            let rows = &mut pixels[2 * k * width..2 * (k + 1) * width];
            for t in 0..seg.len {
                let [y00, y01, y10, y11] = transform_output(s, m, j);
                rows[2 * t] = y00;
                rows[2 * t + 1] = y01;
                rows[width + 2 * t] = y10;
                rows[width + 2 * t + 1] = y11;
                j += 1;
            }
            let (col, cols) = (2 * seg.col, (2 * seg.len).min(wo - 2 * seg.col));
            for dr in 0..2.min(ho - 2 * seg.row) {
                let at = self.first + (2 * seg.row + dr) * wo + col;
                let run = &rows[dr * width..dr * width + cols];
                store_channels(s, run, map, self.y, at, ho * wo, stats.as_deref_mut());
            }
        }
    }
}

/// Where the input transform finds its windows: in the image `[C, h, w]`, with
/// `padding` rows and columns of zeros around it that are never stored (the loads
/// leave those values zero).
struct Windows {
    c_in: usize,
    size: [usize; 2],
    padding: [usize; 2],
}

impl Windows {
    /// `V = Bᵀ d B` for every tile of `block` and input channel of `x`, into `v`, laid
    /// out `[ξ][C][TILE_STRIDE]` (ξ [`xi_stride`] apart) with the block's tiles in
    /// order.
    ///
    /// The tiles go 16 at a time, one lane each, from the pieces of tile rows that
    /// fall in those 16; a piece fills its lanes by masked loads of the values inside
    /// the image, so that the padding reads as zeros and every store fills one whole
    /// cache line.
    #[inline(always)]
    fn transform_input<S: Simd>(&self, s: S, x: &[f32], block: &Block, v: &mut [f32]) {
        let ([h, w], [ph, pw]) = (self.size, self.padding);
        assert!(v.len() >= 16 * xi_stride(self.c_in) && x.len() == self.c_in * h * w);
        let tiles = block.tiles();
        for j0 in (0..tiles).step_by(LANES) {
            let mut pieces = [Piece::default(); LANES];
            let mut count = 0;
            let mut start = 0;
            for seg in block.segments() {
                let (lo, hi) = (start.max(j0), (start + seg.len).min(j0 + LANES));
                if lo < hi {
                    // Lanes l0..l1 hold the segment's tiles from lo − start; lane l's
                    // window starts at image column `first + 2l`, row `top`.
                    let (l0, l1) = (lo - j0, hi - j0);
                    let first = 2 * (seg.col + lo - start) as isize - 2 * l0 as isize - pw as isize;
                    let top = 2 * seg.row as isize - ph as isize;
                    // Value i of the vectors a, b, e, f (starting at columns first,
                    // first + 16, first + 2, first + 18) is used when its lane (i / 2,
                    // 8 + i / 2) is in l0..l1, and read when its column is inside.
                    let mask = |offset: isize, lanes: usize| {
                        (0..LANES).fold(0u16, |m, i| {
                            let lane = (lanes + i) / 2;
                            let col = first + offset + i as isize;
                            let used = (l0..l1).contains(&lane) && (0..w as isize).contains(&col);
                            m | (u16::from(used) << i)
                        })
                    };
                    let rows = (0..4).fold(0u8, |m, r| {
                        m | (u8::from((0..h as isize).contains(&(top + r as isize))) << r)
                    });
                    pieces[count] = Piece {
                        base: top * w as isize + first,
                        masks: [mask(0, 0), mask(16, 16), mask(2, 0), mask(18, 16)],
                        rows,
                    };
                    count += 1;
                }
                start += seg.len;
            }
            assert!(j0 + LANES <= TILE_STRIDE);
            // SAFETY: each piece reads only the values its masks select in the rows it
            // marks, which lie inside the image (so inside `x`); the stores are inside
            // `v` (asserted above).
            unsafe { self.transform_pieces(s, x, &pieces[..count], v, j0) };
        }
    }

    /// The transformed windows of the 16 tiles whose lanes `pieces` fill, from the
    /// image `x`, stored at tile `j` of `v`.
    ///
    /// # Safety
    /// The values each piece selects lie inside `x` in every channel; `v` holds
    /// 16 × [`xi_stride`] values and `j + 16 ≤ TILE_STRIDE`.
    #[inline(always)]
    unsafe fn transform_pieces<S: Simd>(
        &self,
        s: S,
        x: &[f32],
        pieces: &[Piece],
        v: &mut [f32],
        j: usize,
    ) {
        let [h, w] = self.size;
        let (x, out) = (x.as_ptr(), v.as_mut_ptr());
        // The pieces' masks in the instruction set's form, made once for all channels.
        let mut masks = [[s.mask(0); 4]; LANES];
        for (m, piece) in masks.iter_mut().zip(pieces) {
            #[allow(clippy::needless_range_loop)]
            for k in 0..4 {
                m[k] = s.mask(piece.masks[k]);
            }
        }
        for c in 0..self.c_in {
            // d[r][q]: window row r, column q, for 16 tiles (columns 2t + q).
            let mut d = [[s.zero(); 4]; 4];
            for (r, dr) in d.iter_mut().enumerate() {
                let row = (c * h * w + r * w) as isize;
                let mut raw = [s.zero(); 4];
                for (piece, masks) in pieces.iter().zip(&masks) {
                    if piece.rows & (1 << r) == 0 {
                        continue;
                    }
                    let p = x.wrapping_offset(piece.base + row);
                    for k in 0..4 {
                        let at = p.wrapping_add([0, 16, 2, 18][k]);
                        // SAFETY: only the values of the mask are read, and they lie
                        // inside `x` (the caller's contract); the others may not.
                        raw[k] = unsafe { s.mask_load(raw[k], masks[k], at) };
                    }
                }
                let [a, b, e, f] = raw;
                let ((d0, d1), (d2, d3)) = (s.deinterleave(a, b), s.deinterleave(e, f));
                *dr = [d0, d1, d2, d3];
            }
            // Bᵀ d: combine rows; e[q] is column q of Bᵀ d.
            let mut e = [[s.zero(); 4]; 4];
            for (q, e) in e.iter_mut().enumerate() {
                *e = bt(s, [d[0][q], d[1][q], d[2][q], d[3][q]]);
            }
            // (Bᵀ d) B: combine columns; ξ = 4p + q.
            #[allow(clippy::needless_range_loop)]
            for p in 0..4 {
                let row = bt(s, [e[0][p], e[1][p], e[2][p], e[3][p]]);
                for (q, value) in row.into_iter().enumerate() {
                    let at = (4 * p + q) * xi_stride(self.c_in) + c * TILE_STRIDE + j;
                    // SAFETY: 16 values from `at`, inside `v` (the caller's contract).
                    unsafe { s.store_ptr(out.add(at), value) };
                }
            }
        }
    }
}

/// `Bᵀ x` for a column `x` of four rows (or, on rows, `x B`).
#[inline(always)]
fn bt<S: Simd>(s: S, x: [S::V; 4]) -> [S::V; 4] {
    [
        s.sub(x[0], x[2]),
        s.add(x[1], x[2]),
        s.sub(x[2], x[1]),
        s.sub(x[1], x[3]),
    ]
}

/// The tiles of one tile row that fall in a vector of 16: row `r` of lane `l`'s
/// window starts at `base + r·w + 2l` in channel 0 (it may lie outside the image);
/// `masks` select the values of the vectors `a`, `b`, `e`, `f` (16 values from `0`,
/// `16`, `2`, `18` past `base + r·w`) that belong to the piece and lie inside the
/// image, and bit `r` of `rows` whether window row `r` does.
#[derive(Debug, Clone, Copy, Default)]
struct Piece {
    base: isize,
    masks: [u16; 4],
    rows: u8,
}

/// `m[j] = Σ_c v[c·TILE_STRIDE + j] · u[c]` for the tiles `j` of `m` (at most
/// [`BLOCK`]): one element ξ of the Winograd domain, 16 output channels, with one
/// accumulator per tile, [`Simd::PIXELS`] tiles at a time.
#[inline(always)]
fn multiply<S: Simd>(s: S, v: &[f32], u: &[f32], c_in: usize, m: &mut [[f32; LANES]]) {
    assert!(v.len() >= (c_in - 1) * TILE_STRIDE + m.len() && u.len() >= c_in * LANES);
    for (k, m) in m.chunks_mut(S::PIXELS).enumerate() {
        let v = &v[k * S::PIXELS..];
        macro_rules! dispatch {
            ($($N:literal),*) => {
                match m.len() {
                    $($N => {
                        // SAFETY: the reads are in bounds (asserted above).
                        unsafe { multiply_n::<S, $N>(s, v, u, c_in, m) }
                    })*
                    _ => unreachable!("at most PIXELS tiles"),
                }
            };
        }
        if S::PIXELS >= BLOCK {
            dispatch!(
                1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
                24, 25, 26, 27, 28
            );
        } else {
            dispatch!(1, 2, 3, 4, 5, 6);
        }
    }
}

/// [`multiply`] of `N` tiles: `N` accumulators, one group of 16 output channels each.
///
/// # Safety
/// `v` holds `(c_in − 1)·TILE_STRIDE + N` values, `u` `16·c_in`.
#[inline(always)]
unsafe fn multiply_n<S: Simd, const N: usize>(
    s: S,
    v: &[f32],
    u: &[f32],
    c_in: usize,
    m: &mut [[f32; LANES]],
) {
    let mut acc = [s.zero(); N];
    let (v, u) = (v.as_ptr(), u.as_ptr());
    for c in 0..c_in {
        // SAFETY: in bounds by the caller's contract.
        unsafe {
            let w = s.load_ptr(u.add(c * LANES));
            let row = v.add(c * TILE_STRIDE);
            // Index loops over the constant size unroll, so the accumulators stay
            // in registers.
            #[allow(clippy::needless_range_loop)]
            for j in 0..N {
                acc[j] = s.fma(s.splat(*row.add(j)), w, acc[j]);
            }
        }
    }
    for j in 0..N {
        s.store(&mut m[j], acc[j]);
    }
}

/// `Y = Aᵀ M A`: the 2 × 2 output pixels (row-major) of tile `j` from its 16
/// products `m[ξ·BLOCK + j]`.
#[inline(always)]
fn transform_output<S: Simd>(s: S, m: &[[f32; LANES]], j: usize) -> [[f32; LANES]; 4] {
    // Aᵀ M, rows 0 and 1.
    let (mut s0, mut s1) = ([s.zero(); 4], [s.zero(); 4]);
    for q in 0..4 {
        let (m0, m1) = (s.load(&m[q * BLOCK + j]), s.load(&m[(4 + q) * BLOCK + j]));
        let (m2, m3) = (
            s.load(&m[(8 + q) * BLOCK + j]),
            s.load(&m[(12 + q) * BLOCK + j]),
        );
        s0[q] = s.add(s.add(m0, m1), m2);
        s1[q] = s.sub(s.sub(m1, m2), m3);
    }
    // (Aᵀ M) A.
    let y = [
        s.add(s.add(s0[0], s0[1]), s0[2]),
        s.sub(s.sub(s0[1], s0[2]), s0[3]),
        s.add(s.add(s1[0], s1[1]), s1[2]),
        s.sub(s.sub(s1[1], s1[2]), s1[3]),
    ];
    let mut out = [[0.0f32; LANES]; 4];
    for (o, v) in out.iter_mut().zip(y) {
        s.store(o, v);
    }
    out
}
