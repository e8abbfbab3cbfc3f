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

use super::conv::Conv2dConfig;
use super::direct::{as_arrays, as_floats, avx512_available, store_channels};
use super::direct::{ImageCall, Line, Moments, LANES};
use std::cell::RefCell;

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

/// Whether Winograd's algorithm handles `config` on this processor: a 3×3 kernel,
/// stride 1, no dilation, one group, a multiple of 16 output channels, and 16 to 64
/// channels in and out (fewer input channels leave the transforms too large a share;
/// more make the transformed kernels too large to stay in cache).
pub(crate) fn applies(config: &Conv2dConfig) -> bool {
    config.kernel == [3, 3]
        && config.stride == [1, 1]
        && config.dilation == [1, 1]
        && config.groups == 1
        && config.out_channels.is_multiple_of(LANES)
        && (16..=64).contains(&config.in_channels)
        && config.out_channels <= 64
        && avx512_available()
}

/// The kernels `[O, C, 3, 3]` carried to the Winograd domain, `U = G g Gᵀ`, laid out
/// as `[O/16][ξ][C][16]`.
pub(crate) fn transform_weights(config: &Conv2dConfig, weight: &[f32]) -> Vec<f32> {
    let c_in = config.in_channels;
    let mut u = vec![0.0; config.out_channels * c_in * 16];
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

/// Per-thread working memory, grown as needed and reused across calls, in whole cache
/// lines.
struct Scratch {
    /// The transformed input of a block, `[ξ][C][TILE_STRIDE]` (ξ [`xi_stride`]
    /// apart).
    v: Vec<Line>,
    /// The products of a block, `[ξ][BLOCK]` vectors of 16 output channels.
    m: Vec<Line>,
    /// The output pixels of a block, by output row.
    pixels: Vec<Line>,
}

impl Scratch {
    /// The buffers for `c_in` input channels and tile rows of `tw` tiles, grown as
    /// needed: the transformed input, the products and the output pixels.
    fn buffers(
        &mut self,
        c_in: usize,
        tw: usize,
    ) -> (&mut [f32], &mut [[f32; LANES]], &mut [[f32; LANES]]) {
        // Two output rows of 2·tw pixels per tile row of a block.
        let rows_per_block = if tw <= BLOCK { BLOCK / tw } else { 1 };
        let pixels = 2 * rows_per_block * 2 * tw.min(BLOCK);
        for (buffer, len) in [
            (&mut self.v, 16 * xi_stride(c_in) / LANES),
            (&mut self.m, 16 * BLOCK),
            (&mut self.pixels, pixels),
        ] {
            buffer.resize(buffer.len().max(len), Line::default());
        }
        (
            as_floats(&mut self.v),
            as_arrays(&mut self.m),
            as_arrays(&mut self.pixels),
        )
    }
}

thread_local! {
    /// The current image mapped by a pending batch norm.
    static MAPPED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            v: Vec::new(),
            m: Vec::new(),
            pixels: Vec::new(),
        })
    };
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
    call: &ImageCall<'_>,
    x: &[f32],
    y: &mut [f32],
    moments: Option<&mut [(f64, f64)]>,
) {
    let ImageCall {
        config,
        weights: u,
        size: [h, w],
        out_size: [ho, wo],
        scale,
        shift,
        relu,
        input,
    } = *call;
    let [ph, pw] = config.padding;
    let c_in = config.in_channels;
    let out_blocks = config.out_channels / LANES;
    let (th, tw) = (ho.div_ceil(2), wo.div_ceil(2));
    assert_eq!(u.len(), out_blocks * 16 * c_in * LANES);
    assert_eq!(x.len(), c_in * h * w);
    let mut stats: Vec<Moments> = match moments {
        Some(_) => (0..out_blocks).map(|_| Moments::default()).collect(),
        None => Vec::new(),
    };
    let geometry = Geometry {
        c_in,
        size: [h, w],
        padding: [ph, pw],
    };
    MAPPED.with_borrow_mut(|mapped| {
        SCRATCH.with_borrow_mut(|scratch| {
            let (v, m, pixels) = scratch.buffers(c_in, tw);
            // A mapped input is mapped once, into this thread's copy of the image (in
            // cache for the transform, which reads each value about four times).
            let x = match input {
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
            for block in blocks(th, tw) {
                geometry.transform_input(x, &block, v);
                let tiles = block.tiles();
                for (kb, u) in u.chunks_exact(16 * c_in * LANES).enumerate() {
                    for xi in 0..16 {
                        let (v, u) = (&v[xi * xi_stride(c_in)..], &u[xi * c_in * LANES..]);
                        multiply(v, u, c_in, &mut m[xi * BLOCK..xi * BLOCK + tiles]);
                    }
                    let out = kb * LANES;
                    let epilogue = (&scale[out..out + LANES], &shift[out..out + LANES], relu);
                    let y = Output {
                        y: &mut *y,
                        first: out * ho * wo,
                        size: [ho, wo],
                    };
                    y.store(&block, m, pixels, epilogue, stats.get_mut(kb));
                }
            }
        })
    });
    if let Some(moments) = moments {
        for (kb, s) in stats.iter().enumerate() {
            for (lane, m) in moments[kb * LANES..(kb + 1) * LANES].iter_mut().enumerate() {
                *m = s.plane(lane);
            }
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
    fn store(
        self,
        block: &Block,
        m: &[[f32; LANES]],
        pixels: &mut [[f32; LANES]],
        epilogue: (&[f32], &[f32], bool),
        mut stats: Option<&mut Moments>,
    ) {
        let [ho, wo] = self.size;
        let mut j = 0;
        for (s, seg) in block.segments().enumerate() {
            let width = 2 * seg.len;
            let rows = &mut pixels[2 * s * width..2 * (s + 1) * width];
            for t in 0..seg.len {
                let [y00, y01, y10, y11] = transform_output(m, j);
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
                store_channels(run, epilogue, self.y, at, ho * wo, stats.as_deref_mut());
            }
        }
    }
}

/// Where the input transform finds its windows: in the image `[C, h, w]`, with
/// `padding` rows and columns of zeros around it that are never stored (the loads
/// leave those values zero).
struct Geometry {
    c_in: usize,
    size: [usize; 2],
    padding: [usize; 2],
}

impl Geometry {
    /// `V = Bᵀ d B` for every tile of `block` and input channel of `x`, into `v`, laid
    /// out `[ξ][C][TILE_STRIDE]` (ξ [`xi_stride`] apart) with the block's tiles in
    /// order.
    ///
    /// The tiles go 16 at a time, one vector each, from the pieces of tile rows that
    /// fall in those 16; a piece fills its lanes by masked loads of the values inside
    /// the image, so that the padding reads as zeros and every store fills one whole
    /// cache line.
    fn transform_input(&self, x: &[f32], block: &Block, v: &mut [f32]) {
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
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `applies` checked AVX-512F; each piece reads only the values its
            // masks select in the rows it marks, which lie inside the image (so inside
            // `x`); the stores are inside `v`.
            unsafe {
                avx512::transform_input(self, x, &pieces[..count], v, j0)
            };
        }
    }
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
/// accumulator per tile.
fn multiply(v: &[f32], u: &[f32], c_in: usize, m: &mut [[f32; LANES]]) {
    assert!(v.len() >= (c_in - 1) * TILE_STRIDE + m.len() && u.len() >= c_in * LANES);
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! dispatch {
            ($($N:literal),*) => {
                match m.len() {
                    // SAFETY: AVX-512F is checked by `applies`; the reads are in bounds
                    // (asserted above).
                    $($N => unsafe { avx512::multiply::<$N>(v, u, c_in, m) },)*
                    _ => unreachable!("blocks hold at most BLOCK tiles"),
                }
            };
        }
        dispatch!(
            1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
            25, 26, 27, 28
        );
    }
}

/// `Y = Aᵀ M A`: the 2 × 2 output pixels (row-major) of tile `j` from its 16
/// products `m[ξ·BLOCK + j]`.
fn transform_output(m: &[[f32; LANES]], j: usize) -> [[f32; LANES]; 4] {
    assert!(15 * BLOCK + j < m.len());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F is checked by `applies`; the reads are in bounds (asserted).
    unsafe {
        avx512::transform_output(m, j)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("Winograd's algorithm is only chosen on x86-64")
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{xi_stride, Geometry, Piece, BLOCK, LANES, TILE_STRIDE};
    use std::arch::x86_64::*;

    /// Lane `l` of `EVEN` / `ODD`: element `2l` / `2l + 1` of two registers.
    const EVEN: [i32; LANES] = {
        let mut idx = [0; LANES];
        let mut l = 0;
        while l < LANES {
            idx[l] = 2 * l as i32;
            l += 1;
        }
        idx
    };
    const ODD: [i32; LANES] = {
        let mut idx = EVEN;
        let mut l = 0;
        while l < LANES {
            idx[l] += 1;
            l += 1;
        }
        idx
    };

    /// The transformed windows of the 16 tiles whose lanes `pieces` fill, from the
    /// image `x`, stored at tile `j` of `v`.
    ///
    /// # Safety
    /// AVX-512F; the values each piece selects lie inside `x` in every channel; `v`
    /// holds 16 × [`xi_stride`] values and `j + 16 ≤ TILE_STRIDE`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transform_input(
        g: &Geometry,
        x: &[f32],
        pieces: &[Piece],
        v: &mut [f32],
        j: usize,
    ) {
        // SAFETY: arrays of 16 i32.
        let (even, odd) = unsafe {
            (
                _mm512_loadu_si512(EVEN.as_ptr().cast()),
                _mm512_loadu_si512(ODD.as_ptr().cast()),
            )
        };
        let [h, w] = g.size;
        let (x, out) = (x.as_ptr(), v.as_mut_ptr());
        for c in 0..g.c_in {
            // d[r][q]: window row r, column q, for 16 tiles (columns 2t + q).
            let mut d = [[_mm512_setzero_ps(); 4]; 4];
            for (r, dr) in d.iter_mut().enumerate() {
                let row = (c * h * w + r * w) as isize;
                let zero = _mm512_setzero_ps();
                let mut raw = [zero; 4];
                for piece in pieces.iter().filter(|p| p.rows & (1 << r) != 0) {
                    let p = x.wrapping_offset(piece.base + row);
                    for ((value, mask), offset) in
                        raw.iter_mut().zip(piece.masks).zip([0, 16, 2, 18])
                    {
                        // SAFETY: only the values of the mask are read, and they lie
                        // inside `x` (the caller's contract); the others may not.
                        *value =
                            unsafe { _mm512_mask_loadu_ps(*value, mask, p.wrapping_add(offset)) };
                    }
                }
                let [a, b, e, f] = raw;
                *dr = [
                    _mm512_permutex2var_ps(a, even, b),
                    _mm512_permutex2var_ps(a, odd, b),
                    _mm512_permutex2var_ps(e, even, f),
                    _mm512_permutex2var_ps(e, odd, f),
                ];
            }
            // Bᵀ d: combine rows.
            let bt = |x: [__m512; 4]| {
                [
                    _mm512_sub_ps(x[0], x[2]),
                    _mm512_add_ps(x[1], x[2]),
                    _mm512_sub_ps(x[2], x[1]),
                    _mm512_sub_ps(x[1], x[3]),
                ]
            };
            let col = |q: usize| bt([d[0][q], d[1][q], d[2][q], d[3][q]]);
            let e = [col(0), col(1), col(2), col(3)];
            // (Bᵀ d) B: combine columns; ξ = 4p + q.
            let rows: [[__m512; 4]; 4] =
                std::array::from_fn(|p| bt([e[0][p], e[1][p], e[2][p], e[3][p]]));
            for (p, row) in rows.into_iter().enumerate() {
                for (q, value) in row.into_iter().enumerate() {
                    let at = (4 * p + q) * xi_stride(g.c_in) + c * TILE_STRIDE + j;
                    // SAFETY: 16 values from `at`, inside `v` (the caller's contract).
                    unsafe { _mm512_storeu_ps(out.add(at), value) };
                }
            }
        }
    }

    /// `m[j] = Σ_c v[c·TILE_STRIDE + j] · u[c]` for `N` tiles: `N` accumulators, one
    /// vector of 16 output channels each.
    ///
    /// # Safety
    /// AVX-512F; `v` holds `(c_in − 1)·TILE_STRIDE + N` values, `u` `16·c_in`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn multiply<const N: usize>(
        v: &[f32],
        u: &[f32],
        c_in: usize,
        m: &mut [[f32; LANES]],
    ) {
        let mut acc = [_mm512_setzero_ps(); N];
        let (v, u) = (v.as_ptr(), u.as_ptr());
        for c in 0..c_in {
            // SAFETY: in bounds by the caller's contract.
            unsafe {
                let w = _mm512_loadu_ps(u.add(c * LANES));
                let row = v.add(c * TILE_STRIDE);
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*row.add(j)), w, *a);
                }
            }
        }
        for (a, out) in acc.iter().zip(m.iter_mut()) {
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), *a) };
        }
    }

    /// [`super::transform_output`].
    ///
    /// # Safety
    /// AVX-512F; `m` holds `15·BLOCK + j + 1` vectors.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transform_output(m: &[[f32; LANES]], j: usize) -> [[f32; LANES]; 4] {
        // SAFETY: in bounds by the caller's contract.
        let at = |xi: usize| unsafe { _mm512_loadu_ps(m.as_ptr().add(xi * BLOCK + j).cast()) };
        let (add, sub) = (_mm512_add_ps, _mm512_sub_ps);
        // Aᵀ M, rows 0 and 1.
        let s0: [__m512; 4] = std::array::from_fn(|q| add(add(at(q), at(4 + q)), at(8 + q)));
        let s1: [__m512; 4] = std::array::from_fn(|q| sub(sub(at(4 + q), at(8 + q)), at(12 + q)));
        // (Aᵀ M) A.
        let y = [
            add(add(s0[0], s0[1]), s0[2]),
            sub(sub(s0[1], s0[2]), s0[3]),
            add(add(s1[0], s1[1]), s1[2]),
            sub(sub(s1[1], s1[2]), s1[3]),
        ];
        let mut out = [[0.0f32; LANES]; 4];
        for (o, v) in out.iter_mut().zip(y) {
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), v) };
        }
        out
    }
}
