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

use super::conv::Conv2dConfig;
use super::pending::ChannelMap;
use std::cell::RefCell;

/// Output channels per block: one AVX-512 vector of `f32`.
pub(crate) const LANES: usize = 16;

/// Block widths the kernel is compiled for, widest first.
const WIDTHS: [usize; 6] = [28, 14, 7, 4, 2, 1];

/// Pixels per block (rows × columns): accumulators held in vector registers (AVX-512
/// has 32; the rest hold the weights).
const BLOCK: usize = 28;

thread_local! {
    /// The zero-padded input image of the current thread, with the geometry
    /// `[channels, hp, wp, ph, pw]` it was laid out for: while that stays the same,
    /// the border is still zero and only the interior is rewritten.
    static PADDED: RefCell<(Vec<f32>, [usize; 5])> = const { RefCell::new((Vec::new(), [0; 5])) };
}

/// Sixteen floats on a cache line of their own: vectors stored and loaded through it
/// never straddle two lines.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
pub(crate) struct Line(pub(crate) [f32; LANES]);

/// `lines` as arrays of 16 floats.
pub(crate) fn as_arrays(lines: &mut [Line]) -> &mut [[f32; LANES]] {
    // SAFETY: `Line` is `repr(C)` around `[f32; 16]`, 64 bytes, with no padding.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len()) }
}

/// `lines` as floats.
pub(crate) fn as_floats(lines: &mut [Line]) -> &mut [f32] {
    // SAFETY: as in `as_arrays`, 16 floats per line.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * LANES) }
}

/// Zeros after the padded image, so that a kernel may read a vector or two past the
/// last row.
const SLACK: usize = 64;

/// Runs `f` on `x` (`[channels, h, w]`, mapped by `input` when given) laid out in
/// this thread's buffer as `[channels, hp, wp]` with `(ph, pw)` zero rows and columns
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
    PADDED.with_borrow_mut(|(pad, geometry)| {
        let layout = [channels, hp, wp, ph, pw];
        if *geometry != layout {
            pad.clear();
            pad.resize(channels * plane + SLACK, 0.0);
            *geometry = layout;
        }
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

/// Whether the direct kernel handles `config` on this processor: x86-64 with
/// AVX-512F, one group, a multiple of 16 output channels, few input channels (where
/// GEMM is least efficient), and not a 1×1 stride-1 convolution (a plain product).
pub(crate) fn applies(config: &Conv2dConfig) -> bool {
    config.groups == 1
        && config.out_channels.is_multiple_of(LANES)
        && !(config.kernel == [1, 1] && config.stride == [1, 1])
        && config.in_channels <= 64
        && avx512_available()
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn avx512_available() -> bool {
    false
}

/// The weights `[O, C, kh, kw]` repacked as `[O/16][C][kh][kw][16]`.
pub(crate) fn pack(config: &Conv2dConfig, weight: &[f32]) -> Vec<f32> {
    let [kh, kw] = config.kernel;
    let per_out = config.in_channels * kh * kw;
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
    pub config: &'a Conv2dConfig,
    /// The weights in the order the kernel reads them.
    pub weights: &'a [f32],
    /// Input `[h, w]`.
    pub size: [usize; 2],
    /// Output `[ho, wo]`.
    pub out_size: [usize; 2],
    /// Per output channel, `y = relu?(y·scale + shift)`.
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub relu: bool,
    /// A pending batch norm's map, applied to the input as it is read.
    pub input: Option<&'a ChannelMap>,
}

/// Convolves one image `x` `[C, h, w]` (mapped by `call.input` first, when given)
/// into `y` `[O, ho, wo]` with the weights packed by [`pack`] and applies the
/// epilogue; fills `moments` (`[O]`), when given, with each output plane's mean and
/// sum of squared deviations from it before the ReLU, gathered block by block as the
/// outputs are stored.
pub(crate) fn image(
    call: &ImageCall<'_>,
    x: &[f32],
    y: &mut [f32],
    mut moments: Option<&mut [(f64, f64)]>,
) {
    let ImageCall {
        config,
        weights: packed,
        size: [h, w],
        out_size: [ho, wo],
        scale,
        shift,
        relu,
        input,
    } = *call;
    let [kh, kw] = config.kernel;
    let [ph, pw] = config.padding;
    let [dh, dw] = config.dilation;
    let [sh, sw] = config.stride;
    let c_in = config.in_channels;
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    let plane = hp * wp;
    let per_out = c_in * kh * kw;
    padded(x, input, c_in, (h, w), (ph, pw), (hp, wp), |pad| {
        let geometry = Geometry {
            c_in,
            plane,
            wp,
            kernel: [kh, kw],
            dilation: [dh, dw],
            stride: [sh, sw],
        };
        let mut lines = [Line::default(); BLOCK];
        let acc = as_arrays(&mut lines);
        // Block shape: n pixels of `rows` consecutive output rows, n from WIDTHS.
        let width = WIDTHS.iter().copied().find(|&n| n <= wo).unwrap_or(1);
        let rows = (BLOCK / width).min(4);
        for (block, filters) in packed.chunks_exact(per_out * LANES).enumerate() {
            let out = block * LANES;
            let mut stats = moments.is_some().then(Moments::default);
            let mut oi = 0;
            while oi < ho {
                let r = if ho - oi >= rows { rows } else { 1 };
                let mut oj = 0;
                while oj < wo {
                    let n = WIDTHS
                        .iter()
                        .copied()
                        .find(|&n| n <= (wo - oj).min(width))
                        .unwrap_or(1);
                    let acc = &mut acc[..r * n];
                    geometry.block(pad, filters, (oi, r), (oj, n), acc);
                    // The block's pixels lie in one run of each channel's plane when it
                    // spans whole rows (or is one row), else in one run per row.
                    let at = (out * ho + oi) * wo + oj;
                    let runs = if n == wo || r == 1 { 1 } else { r };
                    let run = r * n / runs;
                    let epilogue = (&scale[out..out + LANES], &shift[out..out + LANES], relu);
                    for (k, pixels) in acc.chunks_exact(run).enumerate() {
                        let stats = stats.as_mut();
                        store_channels(pixels, epilogue, y, at + k * wo, ho * wo, stats);
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
    });
}

/// The running count, mean and sum of squared deviations of 16 output channels' values.
#[derive(Debug, Default)]
pub(crate) struct Moments {
    count: f64,
    mean: [f64; LANES],
    m2: [f64; LANES],
}

impl Moments {
    /// Lane `lane`'s mean and sum of squared deviations.
    pub(crate) fn plane(&self, lane: usize) -> (f64, f64) {
        (self.mean[lane], self.m2[lane])
    }
}

/// Writes `pixels` (consecutive output pixels, each a vector of 16 channels) to the
/// 16 channel planes of `y` (`plane` apart), from offset `at` of the first one, after
/// `relu?(v·scale + shift)` per channel; merges the values before the ReLU into
/// `stats`, when given.
pub(crate) fn store_channels(
    pixels: &[[f32; LANES]],
    (scale, shift, relu): (&[f32], &[f32], bool),
    y: &mut [f32],
    at: usize,
    plane: usize,
    stats: Option<&mut Moments>,
) {
    assert!(scale.len() == LANES && shift.len() == LANES);
    #[cfg(target_arch = "x86_64")]
    if let Some(stats) = stats {
        // SAFETY: the AVX-512 kernels only run with AVX-512F; 16 scales and shifts.
        unsafe { avx512::merge(stats, pixels, (scale, shift)) };
    }
    for (k, chunk) in pixels.chunks(LANES).enumerate() {
        let start = at + k * LANES;
        assert!(start + (LANES - 1) * plane + chunk.len() <= y.len());
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the direct kernel only runs with AVX-512F; the writes are in bounds
        // (asserted above).
        unsafe {
            let dst = y.as_mut_ptr().add(start);
            avx512::store_channels(chunk, (scale, shift, relu), dst, plane)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the direct kernel is only chosen on x86-64");
    }
}

/// What the kernel needs to find an input value in the padded image.
struct Geometry {
    c_in: usize,
    plane: usize,
    wp: usize,
    kernel: [usize; 2],
    dilation: [usize; 2],
    stride: [usize; 2],
}

impl Geometry {
    /// The raw sums of `r` output rows from `oi`, pixels `oj..oj + n` of each, for 16
    /// output channels (`filters`, `[C][kh][kw][16]`), into `acc` (row-major `[r][n]`).
    fn block(
        &self,
        pad: &[f32],
        filters: &[f32],
        (oi, r): (usize, usize),
        (oj, n): (usize, usize),
        acc: &mut [[f32; LANES]],
    ) {
        let [kh, kw] = self.kernel;
        let [dh, dw] = self.dilation;
        // Every read lies inside the padded image: the last one is at
        // (c_in − 1)·plane + (oi + r − 1 + (kh − 1)·dh)·wp + oj + n − 1 + (kw − 1)·dw,
        // and stride-1 output rows fit the padded rows with the kernel's span.
        let last = (self.c_in - 1) * self.plane + (oi + r - 1 + (kh - 1) * dh) * self.wp + oj + n
            - 1
            + (kw - 1) * dw;
        assert!(last < pad.len() && filters.len() == self.c_in * kh * kw * LANES);
        assert_eq!(acc.len(), r * n);
        #[cfg(target_arch = "x86_64")]
        {
            macro_rules! dispatch {
                ($(($R:literal, $N:literal)),*) => {
                    // SAFETY (every call): `applies` checked AVX-512F; the reads are in
                    // bounds (asserted above).
                    match (self.stride[1], r, n) {
                        $((1, $R, $N) => unsafe { avx512::block::<$R, $N, 1>(self, pad, filters, oi, oj, acc) },)*
                        $((2, $R, $N) => unsafe { avx512::block::<$R, $N, 2>(self, pad, filters, oi, oj, acc) },)*
                        $((_, $R, $N) => unsafe { avx512::block::<$R, $N, 0>(self, pad, filters, oi, oj, acc) },)*
                        _ => {
                            for (k, a) in acc.chunks_exact_mut(1).enumerate() {
                                let (dr, j) = (k / n, k % n);
                                // One pixel at a time.
                                unsafe { avx512::block::<1, 1, 0>(self, pad, filters, oi + dr, oj + j, a) }
                            }
                        }
                    }
                };
            }
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
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (pad, filters, oi, oj, acc);
            unreachable!("the direct kernel is only chosen on x86-64");
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Geometry, Moments, LANES};
    use std::arch::x86_64::*;

    /// `R` rows × `N` pixels × 16 output channels, into `out` (`[R][N]`). `SW` is the
    /// horizontal stride when it is known at compile time (1 or 2: then the input
    /// values of a block sit at constant offsets from one address), 0 to read it from
    /// `g`.
    ///
    /// # Safety
    /// The processor supports AVX-512F, and every read (see [`Geometry::block`]) lies
    /// inside `pad` and `filters`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block<const R: usize, const N: usize, const SW: usize>(
        g: &Geometry,
        pad: &[f32],
        filters: &[f32],
        oi: usize,
        oj: usize,
        out: &mut [[f32; LANES]],
    ) {
        let [kh, kw] = g.kernel;
        let [dh, dw] = g.dilation;
        let [sh, sw] = g.stride;
        let sw = if SW == 0 { sw } else { SW };
        let mut acc = [[_mm512_setzero_ps(); N]; R];
        let (p, f) = (pad.as_ptr(), filters.as_ptr());
        for c in 0..g.c_in {
            for ki in 0..kh {
                let row = c * g.plane + (oi * sh + ki * dh) * g.wp + oj * sw;
                for kj in 0..kw {
                    let wv = _mm512_loadu_ps(f.add(((c * kh + ki) * kw + kj) * LANES));
                    for (dr, accs) in acc.iter_mut().enumerate() {
                        let src = p.add(row + dr * sh * g.wp + kj * dw);
                        for (j, a) in accs.iter_mut().enumerate() {
                            *a = _mm512_fmadd_ps(_mm512_set1_ps(*src.add(j * sw)), wv, *a);
                        }
                    }
                }
            }
        }
        for (a, o) in acc.iter().flatten().zip(out.iter_mut()) {
            _mm512_storeu_ps(o.as_mut_ptr(), *a);
        }
    }

    /// Lane `l` of `idx[k][0]` / `idx[k][1]`: where [`transpose`]'s step `k` takes the
    /// new lane `l` of the lower / upper register of a pair from (0–15: the lower
    /// register, 16–31: the upper one).
    const STEPS: [[[i32; LANES]; 2]; 4] = {
        let mut idx = [[[0; LANES]; 2]; 4];
        let mut k = 0;
        while k < 4 {
            let h = 1 << k;
            let mut l = 0;
            while l < LANES as i32 {
                let low_half = l & h == 0;
                idx[k][0][l as usize] = if low_half { l } else { 16 + l - h };
                idx[k][1][l as usize] = if low_half { l + h } else { 16 + l };
                l += 1;
            }
            k += 1;
        }
        idx
    };

    /// Transposes the 16 × 16 matrix whose rows are `v`. Step `k` swaps bit `k` of the
    /// row index with bit `k` of the lane index, for registers `h = 2^k` apart.
    #[target_feature(enable = "avx512f")]
    fn transpose(v: &mut [__m512; LANES]) {
        for (k, [low, high]) in STEPS.iter().enumerate() {
            // SAFETY: reads 16 i32 from arrays of 16.
            let (low, high) = unsafe {
                (
                    _mm512_loadu_si512(low.as_ptr().cast()),
                    _mm512_loadu_si512(high.as_ptr().cast()),
                )
            };
            let h = 1 << k;
            for i in (0..LANES).filter(|i| i & h == 0) {
                let (a, b) = (v[i], v[i + h]);
                v[i] = _mm512_permutex2var_ps(a, low, b);
                v[i + h] = _mm512_permutex2var_ps(a, high, b);
            }
        }
    }

    /// Up to 16 pixels' channel vectors, `relu?(v·scale + shift)`, transposed and
    /// stored as lane `l`'s run at `dst + l·plane`.
    ///
    /// # Safety
    /// The processor supports AVX-512F; `scale` and `shift` hold 16 values; the 16
    /// runs of `pixels.len()` values from `dst` are writable.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn store_channels(
        pixels: &[[f32; LANES]],
        (scale, shift, relu): (&[f32], &[f32], bool),
        dst: *mut f32,
        plane: usize,
    ) {
        // SAFETY: 16 floats each.
        let (a, b) = unsafe {
            (
                _mm512_loadu_ps(scale.as_ptr()),
                _mm512_loadu_ps(shift.as_ptr()),
            )
        };
        let mut v = [_mm512_setzero_ps(); LANES];
        for (r, px) in v.iter_mut().zip(pixels) {
            // SAFETY: 16 floats.
            *r = _mm512_add_ps(_mm512_mul_ps(unsafe { _mm512_loadu_ps(px.as_ptr()) }, a), b);
        }
        if relu {
            for r in &mut v {
                *r = _mm512_max_ps(*r, _mm512_setzero_ps());
            }
        }
        transpose(&mut v);
        let mask = ((1u32 << pixels.len()) - 1) as __mmask16;
        for (lane, row) in v.iter().enumerate() {
            // SAFETY: in bounds by the caller's contract.
            unsafe { _mm512_mask_storeu_ps(dst.add(lane * plane), mask, *row) };
        }
    }

    /// Merges the values `pixels·scale + shift` (pixels × 16 channels) into `stats`:
    /// their mean and sum of squared deviations in `f32` (two passes over the run, in
    /// the level-1 cache), then Chan et al.'s update of the running `f64` moments.
    ///
    /// # Safety
    /// The processor supports AVX-512F; `scale` and `shift` hold 16 values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn merge(
        stats: &mut Moments,
        pixels: &[[f32; LANES]],
        (scale, shift): (&[f32], &[f32]),
    ) {
        // SAFETY: 16 floats each.
        let (a, b) = unsafe {
            (
                _mm512_loadu_ps(scale.as_ptr()),
                _mm512_loadu_ps(shift.as_ptr()),
            )
        };
        // SAFETY: 16 floats.
        let value = |px: &[f32; LANES]| {
            _mm512_add_ps(_mm512_mul_ps(unsafe { _mm512_loadu_ps(px.as_ptr()) }, a), b)
        };
        let count = pixels.len() as f32;
        let sum = pixels
            .iter()
            .fold(_mm512_setzero_ps(), |s, px| _mm512_add_ps(s, value(px)));
        let mean = _mm512_div_ps(sum, _mm512_set1_ps(count));
        let m2 = pixels.iter().fold(_mm512_setzero_ps(), |s, px| {
            let d = _mm512_sub_ps(value(px), mean);
            _mm512_fmadd_ps(d, d, s)
        });
        let (na, nb) = (stats.count, count as f64);
        let total = na + nb;
        let (wb, wab) = (_mm512_set1_pd(nb / total), _mm512_set1_pd(na * nb / total));
        for half in 0..2 {
            let (mb, qb) = (widen(mean, half), widen(m2, half));
            let at = half * LANES / 2;
            // SAFETY: 8 doubles from `at` of arrays of 16.
            unsafe {
                let ma = _mm512_loadu_pd(stats.mean.as_ptr().add(at));
                let qa = _mm512_loadu_pd(stats.m2.as_ptr().add(at));
                let delta = _mm512_sub_pd(mb, ma);
                let q = _mm512_add_pd(qa, _mm512_fmadd_pd(_mm512_mul_pd(delta, delta), wab, qb));
                _mm512_storeu_pd(
                    stats.mean.as_mut_ptr().add(at),
                    _mm512_fmadd_pd(delta, wb, ma),
                );
                _mm512_storeu_pd(stats.m2.as_mut_ptr().add(at), q);
            }
        }
        stats.count = total;
    }

    /// Lanes `8·half .. 8·half + 8` of `v` as doubles.
    #[target_feature(enable = "avx512f")]
    fn widen(v: __m512, half: usize) -> __m512d {
        let part = if half == 0 {
            _mm512_castps512_ps256(v)
        } else {
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
        };
        _mm512_cvtps_pd(part)
    }
}
