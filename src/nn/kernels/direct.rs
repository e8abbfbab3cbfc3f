//! Direct convolution for convolutions with few input channels, on x86-64 processors
//! with AVX-512F.
//!
//! im2col + GEMM moves a lot of data for the small channel counts of CIFAR-style
//! networks (16–64 channels). Here each output row is computed in blocks of up to 28
//! pixels × 16 output channels held in 28 vector registers: for every input channel and
//! kernel offset, one vector of 16 weights is multiplied by each pixel's input value
//! and accumulated. Narrow feature maps take several rows per block (2 × 14, 4 × 7), so
//! that every weight vector loaded feeds up to 28 multiply-adds. The input is read from
//! a zero-padded copy of the image; the weights are packed as `[O/16][C][kh][kw][16]`
//! (once, and kept with the convolution).
//!
//! The epilogue ([`store_channels`], shared with [`super::winograd`]) applies batch
//! norm and ReLU to each block, gathers the calibration moments when asked, and
//! transposes 16 pixels × 16 channels in registers to store whole runs of each
//! channel's plane.
//!
//! The sums run over the input channels and kernel offsets in the same order for every
//! output, and the result differs from the GEMM path only by rounding.

use super::geometry::Geometry;
use super::store::{as_arrays, store_channels, Affine, Moments};
use super::{Kernel, Kernels, Simd, LANES};
use crate::nn::runtime::{with_scratch, ChannelMap, Line};

/// Pixels per block at most (rows × columns): the accumulators of the widest
/// instruction set ([`Simd::PIXELS`]).
const BLOCK: usize = 28;

/// Zeros after the padded image, so that a kernel may read a vector or two past the
/// last row.
const SLACK: usize = 64;

/// Runs `f` on `x` (`[channels, h, w]`, mapped by `input` when given) laid out in
/// this thread's scratch memory as `[channels, hp, wp]` with `(ph, pw)` zero rows and columns
/// before it and zeros after it (then [`SLACK`] zeros).
pub(crate) fn padded<R>(
    x: &[f32],
    input: Option<&ChannelMap>,
    channels: usize,
    (h, w): (usize, usize),
    (ph, pw): (usize, usize),
    (hp, wp): (usize, usize),
    f: impl FnOnce(&[f32]) -> R,
) -> R {
    assert!(ph + h <= hp && pw + w <= wp && x.len() == channels * h * w);
    let plane = hp * wp;
    with_scratch(|scratch| {
        let layout = [channels, hp, wp, ph, pw, 0];
        let pad = scratch.padded.for_layout(layout, channels * plane + SLACK);
        for (ch, plane_in) in x.chunks_exact(h * w).enumerate() {
            for (i, row) in plane_in.chunks_exact(w).enumerate() {
                let at = ch * plane + (i + ph) * wp + pw;
                pad[at..at + w].copy_from_slice(row);
                if let Some(map) = input {
                    map.apply_to_plane(ch, &mut pad[at..at + w]);
                }
            }
        }
        f(pad)
    })
}

/// The weights `[O, C, kh, kw]` repacked as `[O/16][C][kh][kw][16]`.
pub(crate) fn pack(g: &Geometry, weight: &[f32]) -> Vec<f32> {
    let per_out = g.in_channels * g.kernel[0] * g.kernel[1];
    assert_eq!(weight.len(), g.out_channels * per_out);
    let mut packed = vec![0.0; weight.len()];
    for (o, filter) in weight.chunks_exact(per_out).enumerate() {
        let (block, lane) = (o / LANES, o % LANES);
        for (r, &v) in filter.iter().enumerate() {
            packed[(block * per_out + r) * LANES + lane] = v;
        }
    }
    packed
}

/// A call of a kernel that convolves image by image ([`image`], and
/// [`super::winograd::image`]): everything but the image, its output and the moments.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ImageCall<'a> {
    pub geometry: &'a Geometry,
    /// The weights in the order the kernel reads them.
    pub weights: &'a [f32],
    /// Per output channel, `y = relu?(y·scale + shift)`.
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub relu: bool,
    /// A pending batch norm's map, applied to the input as it is read.
    pub input: Option<&'a ChannelMap>,
}

impl ImageCall<'_> {
    /// Checks what every kernel relies on: a valid geometry, one scale and shift per
    /// output channel, an image `x` and an output `y` of the geometry's sizes, and
    /// one moment per output channel.
    pub(crate) fn check(&self, x: &[f32], y: &[f32], moments: Option<&[(f64, f64)]>) {
        let g = self.geometry;
        assert!(g.suits_image_kernels(), "{g:?}");
        assert!(self.scale.len() == g.out_channels && self.shift.len() == g.out_channels);
        assert_eq!(x.len(), g.in_channels * g.size[0] * g.size[1]);
        assert_eq!(y.len(), g.out_channels * g.out_size[0] * g.out_size[1]);
        assert!(moments.is_none_or(|m| m.len() == g.out_channels));
        assert!(self
            .input
            .is_none_or(|m| m.scale.len() == g.in_channels && m.shift.len() == g.in_channels));
    }
}

/// Convolves one image `x` `[C, h, w]` (mapped by `call.input` first, when given)
/// into `y` `[O, ho, wo]` with the weights packed by [`pack`] and applies the
/// epilogue; fills `moments` (`[O]`), when given, with each output plane's mean and
/// sum of squared deviations from it before the ReLU, gathered block by block as the
/// outputs are stored.
pub(crate) fn image(
    kernels: Kernels,
    call: &ImageCall<'_>,
    x: &[f32],
    y: &mut [f32],
    moments: Option<&mut [(f64, f64)]>,
) {
    call.check(x, y, moments.as_deref());
    let g = *call.geometry;
    assert_eq!(
        call.weights.len(),
        g.out_channels * g.in_channels * g.kernel[0] * g.kernel[1]
    );
    let ([h, w], [ph, pw]) = (g.size, g.padding);
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    padded(
        x,
        call.input,
        g.in_channels,
        (h, w),
        (ph, pw),
        (hp, wp),
        |pad| {
            kernels.run(Blocks {
                call,
                pad,
                y,
                moments,
            })
        },
    );
}

/// [`image`] of a padded image, as a [`Kernel`].
struct Blocks<'a, 'm> {
    call: &'a ImageCall<'a>,
    pad: &'a [f32],
    y: &'a mut [f32],
    moments: Option<&'m mut [(f64, f64)]>,
}

impl Kernel for Blocks<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        blocks_on(s, self.call, self.pad, self.y, self.moments)
    }
}

/// Block widths, widest first, and the most rows of a block, for `PIXELS`
/// accumulators.
fn block_shapes(pixels: usize) -> (&'static [usize], usize) {
    if pixels >= BLOCK {
        (&[28, 14, 7, 4, 2, 1], 4)
    } else {
        (&[6, 3, 2, 1], 3)
    }
}

/// [`image`] of the padded image `pad` on the instruction set of `s`. Everything it
/// calls is inlined into [`Simd::vectorize`], compiled for that instruction set.
#[inline(always)]
fn blocks_on<S: Simd>(
    s: S,
    call: &ImageCall<'_>,
    pad: &[f32],
    y: &mut [f32],
    mut moments: Option<&mut [(f64, f64)]>,
) {
    let g = *call.geometry;
    let [kh, kw] = g.kernel;
    let [ph, pw] = g.padding;
    let ([h, w], [ho, wo]) = (g.size, g.out_size);
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    let per_out = g.in_channels * kh * kw;
    let (widths, max_rows) = block_shapes(S::PIXELS);
    let tiles = Tiles {
        c_in: g.in_channels,
        plane: hp * wp,
        wp,
        kernel: g.kernel,
        dilation: g.dilation,
        stride: g.stride,
    };
    let mut lines = [Line::default(); BLOCK];
    let acc = as_arrays(&mut lines);
    // Block shape: n pixels of `rows` consecutive output rows, n from `widths`.
    let width = widths.iter().copied().find(|&n| n <= wo).unwrap_or(1);
    let rows = (S::PIXELS / width).clamp(1, max_rows);
    for (block, filters) in call.weights.chunks_exact(per_out * LANES).enumerate() {
        let out = block * LANES;
        let map = Affine::of(call.scale, call.shift, out, call.relu);
        let mut stats = moments.is_some().then(Moments::default);
        let mut oi = 0;
        while oi < ho {
            let r = if ho - oi >= rows { rows } else { 1 };
            let mut oj = 0;
            while oj < wo {
                let n = widths
                    .iter()
                    .copied()
                    .find(|&n| n <= (wo - oj).min(width))
                    .unwrap_or(1);
                let acc = &mut acc[..r * n];
                tiles.block(s, pad, filters, (oi, r), (oj, n), acc);
                // The block's pixels lie in one run of each channel's plane when it
                // spans whole rows (or is one row), else in one run per row.
                let at = (out * ho + oi) * wo + oj;
                let runs = if n == wo || r == 1 { 1 } else { r };
                let run = r * n / runs;
                for (k, pixels) in acc.chunks_exact(run).enumerate() {
                    let stats = stats.as_mut();
                    store_channels(s, pixels, map, y, at + k * wo, ho * wo, stats);
                }
                oj += n;
            }
            oi += r;
        }
        if let (Some(stats), Some(moments)) = (stats, moments.as_deref_mut()) {
            for (lane, m) in moments[out..out + LANES].iter_mut().enumerate() {
                *m = stats.plane(lane);
            }
        }
    }
}

/// What the kernel needs to find an input value in the padded image.
#[derive(Debug, Clone, Copy)]
struct Tiles {
    c_in: usize,
    plane: usize,
    wp: usize,
    kernel: [usize; 2],
    dilation: [usize; 2],
    stride: [usize; 2],
}

impl Tiles {
    /// The raw sums of `r` output rows from `oi`, pixels `oj..oj + n` of each, for 16
    /// output channels (`filters`, `[C][kh][kw][16]`), into `acc` (row-major `[r][n]`).
    #[inline(always)]
    fn block<S: Simd>(
        &self,
        s: S,
        pad: &[f32],
        filters: &[f32],
        (oi, r): (usize, usize),
        (oj, n): (usize, usize),
        acc: &mut [[f32; LANES]],
    ) {
        let [kh, kw] = self.kernel;
        let [dh, dw] = self.dilation;
        let [sh, sw] = self.stride;
        // Every read lies inside the padded image: the last one is at
        // (c_in − 1)·plane + ((oi + r − 1)·sh + (kh − 1)·dh)·wp + (oj + n − 1)·sw
        // + (kw − 1)·dw, which the padded image holds for every output pixel.
        let last = (self.c_in - 1) * self.plane
            + ((oi + r - 1) * sh + (kh - 1) * dh) * self.wp
            + (oj + n - 1) * sw
            + (kw - 1) * dw;
        assert!(last < pad.len() && filters.len() == self.c_in * kh * kw * LANES);
        assert_eq!(acc.len(), r * n);
        macro_rules! dispatch {
            ($(($R:literal, $N:literal)),*) => {
                match (sw, r, n) {
                    $((1, $R, $N) => {
                        // SAFETY: the reads are in bounds (asserted above).
                        unsafe { self.sums::<S, $R, $N, 1>(s, pad, filters, oi, oj, acc) }
                    })*
                    $((2, $R, $N) => {
                        // SAFETY: the reads are in bounds (asserted above).
                        unsafe { self.sums::<S, $R, $N, 2>(s, pad, filters, oi, oj, acc) }
                    })*
                    $((_, $R, $N) => {
                        // SAFETY: the reads are in bounds (asserted above).
                        unsafe { self.sums::<S, $R, $N, 0>(s, pad, filters, oi, oj, acc) }
                    })*
                    _ => {
                        for (k, a) in acc.chunks_exact_mut(1).enumerate() {
                            let (dr, j) = (k / n, k % n);
                            // SAFETY: one pixel of the block, in bounds as the block is.
                            unsafe { self.sums::<S, 1, 1, 0>(s, pad, filters, oi + dr, oj + j, a) }
                        }
                    }
                }
            };
        }
        if S::PIXELS >= BLOCK {
            dispatch!(
                (1, 28),
                (1, 14),
                (1, 7),
                (1, 4),
                (1, 2),
                (1, 1),
                (2, 14),
                (2, 7),
                (2, 4),
                (2, 2),
                (2, 1),
                (4, 7),
                (4, 4),
                (4, 2),
                (4, 1)
            );
        } else {
            dispatch!(
                (1, 6),
                (1, 3),
                (1, 2),
                (1, 1),
                (2, 3),
                (2, 2),
                (2, 1),
                (3, 2),
                (3, 1)
            );
        }
    }

    /// `R` rows × `N` pixels × 16 output channels, into `out` (`[R][N]`). `SW` is the
    /// horizontal stride when it is known at compile time (1 or 2: then the input
    /// values of a block sit at constant offsets from one address), 0 to read it from
    /// `self`.
    ///
    /// # Safety
    /// Every read (see [`Tiles::block`]) lies inside `pad` and `filters`.
    #[inline(always)]
    unsafe fn sums<S: Simd, const R: usize, const N: usize, const SW: usize>(
        &self,
        s: S,
        pad: &[f32],
        filters: &[f32],
        oi: usize,
        oj: usize,
        out: &mut [[f32; LANES]],
    ) {
        let [kh, kw] = self.kernel;
        let [dh, dw] = self.dilation;
        let [sh, sw] = self.stride;
        let sw = if SW == 0 { sw } else { SW };
        let mut acc = [[s.zero(); N]; R];
        let (p, f) = (pad.as_ptr(), filters.as_ptr());
        for c in 0..self.c_in {
            for ki in 0..kh {
                let row = c * self.plane + (oi * sh + ki * dh) * self.wp + oj * sw;
                for kj in 0..kw {
                    // SAFETY: in bounds by the caller's contract. (Index loops over
                    // the constant sizes unroll, so the accumulators stay in
                    // registers.)
                    unsafe {
                        let wv = s.load_ptr(f.add(((c * kh + ki) * kw + kj) * LANES));
                        #[allow(clippy::needless_range_loop)]
                        for dr in 0..R {
                            let src = p.add(row + dr * sh * self.wp + kj * dw);
                            for j in 0..N {
                                acc[dr][j] = s.fma(s.splat(*src.add(j * sw)), wv, acc[dr][j]);
                            }
                        }
                    }
                }
            }
        }
        for dr in 0..R {
            for j in 0..N {
                s.store(&mut out[dr * N + j], acc[dr][j]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::every_kernels;
    use super::*;

    /// The definition, for one image and no epilogue.
    fn reference(g: &Geometry, x: &[f32], weight: &[f32]) -> Vec<f32> {
        let ([h, w], [ho, wo]) = (g.size, g.out_size);
        let [kh, kw] = g.kernel;
        let mut y = vec![0.0f64; g.out_channels * ho * wo];
        for o in 0..g.out_channels {
            for i in 0..ho {
                for j in 0..wo {
                    let mut acc = 0.0f64;
                    for c in 0..g.in_channels {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let ih = (i * g.stride[0] + ki * g.dilation[0]) as isize
                                    - g.padding[0] as isize;
                                let iw = (j * g.stride[1] + kj * g.dilation[1]) as isize
                                    - g.padding[1] as isize;
                                if (0..h as isize).contains(&ih) && (0..w as isize).contains(&iw) {
                                    let xv = x[(c * h + ih as usize) * w + iw as usize];
                                    let wv = weight[((o * g.in_channels + c) * kh + ki) * kw + kj];
                                    acc += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                    }
                    y[(o * ho + i) * wo + j] = acc;
                }
            }
        }
        y.into_iter().map(|v| v as f32).collect()
    }

    #[test]
    fn every_instruction_set_computes_the_definition() {
        // Widths that take every block shape of both register budgets.
        let cases = [
            ([3, 3], [1, 1], [1, 1], [1, 1], [9, 31]),
            ([3, 3], [2, 2], [1, 1], [1, 1], [11, 13]),
            ([1, 3], [1, 3], [0, 2], [1, 2], [4, 17]),
            ([7, 7], [2, 2], [3, 3], [1, 1], [12, 10]),
        ];
        for (kernel, stride, padding, dilation, size) in cases {
            let out = |a: usize| {
                (size[a] + 2 * padding[a] - dilation[a] * (kernel[a] - 1) - 1) / stride[a] + 1
            };
            let g = Geometry {
                in_channels: 5,
                out_channels: 32,
                groups: 1,
                kernel,
                stride,
                padding,
                dilation,
                size,
                out_size: [out(0), out(1)],
            };
            let x: Vec<f32> = (0..5 * size[0] * size[1])
                .map(|i| (i as f32 * 0.37).sin())
                .collect();
            let weight: Vec<f32> = (0..32 * 5 * kernel[0] * kernel[1])
                .map(|i| (i as f32 * 0.23).cos())
                .collect();
            let want = reference(&g, &x, &weight);
            let packed = pack(&g, &weight);
            let (scale, shift) = (vec![1.0; 32], vec![0.0; 32]);
            let call = ImageCall {
                geometry: &g,
                weights: &packed,
                scale: &scale,
                shift: &shift,
                relu: false,
                input: None,
            };
            let mut results = Vec::new();
            for kernels in every_kernels() {
                let mut y = vec![f32::NAN; want.len()];
                image(kernels, &call, &x, &mut y, None);
                let err = y
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(err < 1e-4, "{kernels:?} {g:?}: {err}");
                results.push((kernels, y));
            }
            // The same sums in the same order: the same bits at every level.
            for (kernels, y) in &results[1..] {
                assert!(
                    y == &results[0].1,
                    "{kernels:?} {g:?} differs from the scalar sums"
                );
            }
        }
    }
}
