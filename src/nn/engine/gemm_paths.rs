//! The convolution paths built on matrix products (faer): plain products for 1×1
//! convolutions, im2col, and shifted products.

use super::gemm::{gemm, gemm_strided_b};
use super::{Conv2dConfig, Convolution, Epilogue, Shapes};
use crate::nn::runtime::{with_scratch, Scratch, Threads};

/// Convolves the images `x` `[B, C, h, w]` into `y` `[B, O, ho, wo]` with one product
/// per group: of the input itself (`pointwise`, one image), of the images laid side by
/// side (`pointwise`, several), or of their receptive fields (im2col). Applies no
/// bias or epilogue.
pub(super) fn columns(
    conv: &Convolution<'_>,
    x: &[f32],
    y: &mut [f32],
    sh: Shapes,
    pointwise: bool,
    t: Threads,
) {
    let c = conv.config;
    let (cg, og) = (c.in_channels / c.groups, c.out_channels / c.groups);
    let k = cg * c.kernel[0] * c.kernel[1];
    let (plane_in, spatial) = (sh.h * sh.w, sh.ho * sh.wo);
    let images = y.len() / (c.out_channels * spatial).max(1);
    let width = images * spatial;
    with_scratch(|scratch| {
        let Scratch {
            columns: cols,
            product,
            ..
        } = scratch;
        let direct = images == 1;
        if !(direct && pointwise) && cols.len() < k * width {
            cols.resize(k * width, 0.0);
        }
        if !direct && product.len() < og * width {
            product.resize(og * width, 0.0);
        }
        for g in 0..c.groups {
            let wg = &conv.weight[g * og * k..(g + 1) * og * k];
            let image_in = |i: usize| {
                let start = (i * c.in_channels + g * cg) * plane_in;
                &x[start..start + cg * plane_in]
            };
            let b: &[f32] = if direct && pointwise {
                image_in(0)
            } else {
                let cols = &mut cols[..k * width];
                for i in 0..images {
                    if pointwise {
                        for (r, src) in image_in(i).chunks_exact(spatial).enumerate() {
                            let at = r * width + i * spatial;
                            cols[at..at + spatial].copy_from_slice(src);
                        }
                    } else {
                        im2col(c, image_in(i), cols, width, i * spatial, sh);
                    }
                }
                cols
            };
            if direct {
                let yg = &mut y[g * og * spatial..(g + 1) * og * spatial];
                gemm(yg, wg, b, og, k, spatial, t);
                continue;
            }
            let product = &mut product[..og * width];
            gemm(product, wg, b, og, k, width, t);
            for (o, row) in product.chunks_exact(width).enumerate() {
                for (i, src) in row.chunks_exact(spatial).enumerate() {
                    let at = (i * c.out_channels + g * og + o) * spatial;
                    y[at..at + spatial].copy_from_slice(src);
                }
            }
        }
    });
}

/// The weights regrouped as `[group][ki][o][c][kj]`: one `[O/g × C/g·kw]` matrix
/// per kernel row, for [`shifted`].
pub(super) fn offset_slices(c: &Conv2dConfig, weight: &[f32]) -> Vec<f32> {
    let [kh, kw] = c.kernel;
    let (cg, og) = (c.in_channels / c.groups, c.out_channels / c.groups);
    let mut slices = vec![0.0f32; weight.len()];
    let mut taps = weight.chunks_exact(kh * kw);
    for o in 0..c.out_channels {
        let (g, oi) = (o / og, o % og);
        for ci in 0..cg {
            let Some(kernel) = taps.next() else {
                return slices;
            };
            for (ki, row) in kernel.chunks_exact(kw).enumerate() {
                let at = (((g * kh + ki) * og + oi) * cg + ci) * kw;
                slices[at..at + kw].copy_from_slice(row);
            }
        }
    }
    slices
}

/// A stride-1 convolution of one image without im2col. Each input plane is laid
/// out zero-padded `kw` times, the `kj`-th copy shifted left by `kj·dw`; then for
/// each kernel row `ki` the copies, shifted down by `ki·dh` rows, are multiplied by
/// the weights' `[:, :, ki, :]` slice and accumulated. The product has the padded
/// width; the extra columns are dropped as the epilogue writes the output.
pub(super) fn shifted(
    conv: &Convolution<'_>,
    x: &[f32],
    y: &mut [f32],
    sh: Shapes,
    slices: &[f32],
    t: Threads,
    epilogue: &Epilogue<'_>,
) {
    let c = conv.config;
    let [kh, kw] = c.kernel;
    let [ph, pw] = c.padding;
    let [dh, dw] = c.dilation;
    let (cg, og) = (c.in_channels / c.groups, c.out_channels / c.groups);
    let (hp, wp) = (sh.h + 2 * ph, sh.w + 2 * pw);
    let plane = hp * wp;
    let wide = sh.ho * wp;
    let bias = conv.bias;
    with_scratch(|scratch| {
        let Scratch {
            shifted, product, ..
        } = scratch;
        // While the layout is unchanged, every position outside the copied
        // interiors is still zero.
        let len = c.in_channels * kw * plane;
        let layout = [c.in_channels, hp, wp, ph, pw, kw * dw];
        let pad = shifted.for_layout(layout, len);
        for (ch, input) in x.chunks_exact(sh.h * sh.w).enumerate() {
            for kj in 0..kw {
                // Padded column q holds input column q + kj·dw − pw.
                let shift = (kj * dw) as isize - pw as isize;
                let (lo, hi) = valid_range(shift, 1, sh.w, wp);
                let base = (ch * kw + kj) * plane;
                for (i, row) in input.chunks_exact(sh.w).enumerate() {
                    let at = base + (i + ph) * wp;
                    let from = (lo as isize + shift) as usize;
                    pad[at + lo..at + hi].copy_from_slice(&row[from..from + hi - lo]);
                }
            }
        }
        if product.len() < og * wide {
            product.resize(og * wide, 0.0);
        }
        let product = &mut product[..og * wide];
        for g in 0..c.groups {
            for ki in 0..kh {
                let at = (g * kh + ki) * og * cg * kw;
                let a = &slices[at..at + og * cg * kw];
                let start = g * cg * kw * plane + ki * dh * wp;
                let b = &pad[start..];
                gemm_strided_b(product, a, b, plane, (og, cg * kw, wide), ki > 0, t);
            }
            for (o, row) in product.chunks_exact(wide).enumerate() {
                let channel = g * og + o;
                let out = &mut y[channel * sh.ho * sh.wo..][..sh.ho * sh.wo];
                let (a, b) = epilogue.affine(channel, bias);
                for (dst, src) in out.chunks_exact_mut(sh.wo).zip(row.chunks_exact(wp)) {
                    epilogue.map(dst, &src[..sh.wo], a, b);
                }
            }
        }
    });
}

/// Lays out the receptive fields of `x` `[cg, h, w]` as columns: row `r` (one
/// per input channel and kernel offset) of the `ho·wo` columns goes to
/// `cols[r·ld + offset..]`, zero where the window hangs over the padding.
fn im2col(c: &Conv2dConfig, x: &[f32], cols: &mut [f32], ld: usize, offset: usize, sh: Shapes) {
    let Shapes { h, w, ho, wo } = sh;
    let [kh, kw] = c.kernel;
    let [sh, sw] = c.stride;
    let [ph, pw] = c.padding;
    let [dh, dw] = c.dilation;
    let mut rows = cols
        .chunks_mut(ld)
        .map(|r| &mut r[offset..offset + ho * wo]);
    for plane in x.chunks_exact(h * w) {
        for ki in 0..kh {
            for kj in 0..kw {
                let Some(row) = rows.next() else { return };
                // Input column of output column oj: oj·sw + shift.
                let shift = (kj * dw) as isize - pw as isize;
                let (lo, hi) = valid_range(shift, sw, w, wo);
                for (oi, out) in row.chunks_exact_mut(wo).enumerate() {
                    let ih = (oi * sh + ki * dh) as isize - ph as isize;
                    if ih < 0 || ih >= h as isize || lo >= hi {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[ih as usize * w..(ih as usize + 1) * w];
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    let start = (lo as isize * sw as isize + shift) as usize;
                    if sw == 1 {
                        out[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                    } else {
                        for (v, &s) in out[lo..hi].iter_mut().zip(src[start..].iter().step_by(sw)) {
                            *v = s;
                        }
                    }
                }
            }
        }
    }
}

/// The output columns `[lo, hi)` whose input column `oj·stride + offset` lies in
/// `[0, w)`.
fn valid_range(offset: isize, stride: usize, w: usize, wo: usize) -> (usize, usize) {
    let s = stride as isize;
    // Smallest oj with oj·s + offset ≥ 0.
    let lo = if offset >= 0 {
        0
    } else {
        (-offset + s - 1) / s
    };
    // Smallest oj with oj·s + offset ≥ w.
    let hi = if offset >= w as isize {
        0
    } else {
        (w as isize - offset + s - 1) / s
    };
    let wo = wo as isize;
    (lo.min(wo) as usize, hi.clamp(0, wo) as usize)
}
