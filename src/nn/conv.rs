//! 2-d convolution, NCHW: the layer, its GEMM paths (plain products, shifted products,
//! im2col), and the choice among them and the AVX-512 kernels of [`super::winograd`]
//! and [`super::direct`].

use super::batch_norm::{merge_plane_moments, plane_moments};
use super::gemm::{gemm, gemm_strided_b, Threads};
use super::pending::{affine_in_place, affine_into, ChannelMap};
use super::{check_channels, emit4, layer_context, window_output_len, ParamTensor, Tensor4};
use super::{direct, winograd};
use crate::error::{Error, Result};
use crate::layer::LayerKind;
use crate::layer::{Probe, Site};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::OnceLock;

/// The hyper-parameters of a [`Conv2d`], with PyTorch's meaning and defaults.
///
/// ```
/// use reflow::nn::Conv2dConfig;
/// let cfg = Conv2dConfig::new(64, 128, 3).stride(2).padding(1).groups(32);
/// assert_eq!(cfg.weight_shape(), [128, 2, 3, 3]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel size `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]`; default `[1, 1]`.
    pub stride: [usize; 2],
    /// Zero padding `[ph, pw]` on each side; default `[0, 0]`.
    pub padding: [usize; 2],
    /// Dilation `[dh, dw]`; default `[1, 1]`.
    pub dilation: [usize; 2],
    /// Channel groups; both channel counts must divide by it. Default 1.
    pub groups: usize,
    /// Whether the layer has a bias; default `false` (as in ResNets).
    pub bias: bool,
}

impl Conv2dConfig {
    /// A square `kernel`×`kernel` convolution, stride 1, no padding, no bias.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Conv2dConfig {
            in_channels,
            out_channels,
            kernel: [kernel, kernel],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            bias: false,
        }
    }

    /// Sets the same stride on both axes.
    pub fn stride(mut self, stride: usize) -> Self {
        self.stride = [stride, stride];
        self
    }

    /// Sets the same padding on both axes.
    pub fn padding(mut self, padding: usize) -> Self {
        self.padding = [padding, padding];
        self
    }

    /// Sets the same dilation on both axes.
    pub fn dilation(mut self, dilation: usize) -> Self {
        self.dilation = [dilation, dilation];
        self
    }

    /// Sets the number of groups.
    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// Adds (or removes) a bias.
    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// The weight's shape, `[out, in / groups, kh, kw]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.in_channels / self.groups.max(1),
            self.kernel[0],
            self.kernel[1],
        ]
    }

    /// Rejects zero sizes and channel counts that do not divide by `groups`.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("kernel", self.kernel[0].min(self.kernel[1])),
            ("stride", self.stride[0].min(self.stride[1])),
            ("dilation", self.dilation[0].min(self.dilation[1])),
            ("groups", self.groups),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::invalid(name, "must be positive"));
            }
        }
        if !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
        {
            return Err(Error::invalid(
                "groups",
                format!(
                    "{} does not divide in_channels {} and out_channels {}",
                    self.groups, self.in_channels, self.out_channels
                ),
            ));
        }
        Ok(())
    }
}

/// A 2-d convolution over NCHW `f32` tensors: PyTorch's `nn.Conv2d` with zero padding.
///
/// Each call takes the fastest path that applies: on x86-64 with AVX-512F, Winograd's
/// F(2×2, 3×3) for 3×3 stride-1 convolutions of 16 to 64 channels and a direct kernel
/// for other convolutions with few input channels; else faer GEMMs (a plain product
/// for 1×1 stride-1 convolutions, shifted products or im2col). All compute the same
/// sums up to rounding (see `docs/layers.md`).
///
/// Parameters: `weight` `[out, in / groups, kh, kw]` (role [`ParamRole::Weight`](crate::layer::ParamRole::Weight)) and,
/// when configured, `bias` `[out]`.
///
/// ```
/// use reflow::layer::Layer;
/// use reflow::nn::{Conv2d, Conv2dConfig};
/// use ndarray::Array4;
///
/// let conv = Conv2d::new(Conv2dConfig::new(3, 8, 3).padding(1).stride(2))?;
/// let y = conv.forward(&Array4::zeros((2, 3, 32, 32)))?;
/// assert_eq!(y.dim(), (2, 8, 16, 16));
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Conv2d {
    config: Conv2dConfig,
    weight: ParamTensor,
    bias: Option<ParamTensor>,
    /// The weights rearranged for the direct kernel or the shifted products, made on
    /// first use and dropped whenever the parameters are lent out mutably.
    rearranged: Rearranged,
}

/// Makes a copy of a convolution's weights in the order one of its kernels reads them.
type Rearrange = fn(&Conv2dConfig, &[f32]) -> Vec<f32>;

/// Copies of a convolution's weights in the orders its kernels read them.
#[derive(Debug, Clone, Default)]
struct Rearranged {
    /// `[O/16][C][kh][kw][16]`, for [`direct`].
    direct: OnceLock<Vec<f32>>,
    /// `[group][ki][o][c][kj]`, for [`Conv2d::shifted`].
    shifted: OnceLock<Vec<f32>>,
    /// `[O/16][ξ][C][16]`, the kernels in Winograd's domain, for [`winograd`].
    winograd: OnceLock<Vec<f32>>,
}

thread_local! {
    /// The im2col buffer of the current thread, grown as needed and reused.
    static COLUMNS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The product buffer of the current thread, when several images share a product.
    static PRODUCT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The zero-padded input image of the current thread (shifted products), with the
    /// geometry `[channels, hp, wp, ph, pw, length]` it was laid out for: while that stays the
    /// same, the border is still zero and only the interior is rewritten.
    static PADDED: RefCell<(Vec<f32>, [usize; 6])> = const { RefCell::new((Vec::new(), [0; 6])) };
}

/// Products narrower than this many columns are widened by convolving several images
/// at once (small feature maps, e.g. 7×7, make thin, slow products).
const MIN_PRODUCT_COLUMNS: usize = 512;

/// The im2col buffer of one multi-image product stays below this many floats (1 MiB,
/// about what a core's L2 cache holds).
const MAX_COLUMN_FLOATS: usize = 1 << 18;

/// Stride-1 convolutions whose padded output rows give at least this many columns use
/// shifted products instead of im2col.
const MIN_SHIFTED_COLUMNS: usize = 192;

impl Conv2d {
    /// A convolution with zero weights (and bias), to be filled from a checkpoint.
    pub fn new(config: Conv2dConfig) -> Result<Self> {
        config.validate()?;
        Ok(Conv2d {
            rearranged: Rearranged::default(),
            weight: ParamTensor::filled(&config.weight_shape(), 0.0),
            bias: config
                .bias
                .then(|| ParamTensor::filled(&[config.out_channels], 0.0)),
            config,
        })
    }

    /// The layer's hyper-parameters.
    pub fn config(&self) -> &Conv2dConfig {
        &self.config
    }

    /// The weight, row-major `[out, in / groups, kh, kw]`.
    pub fn weight(&self) -> &[f32] {
        &self.weight.data
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_ref().map(|b| b.data.as_slice())
    }

    /// Output `(H', W')` for an `h`×`w` input, or `None` when the kernel does not fit.
    pub fn output_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let c = &self.config;
        Some((
            window_output_len(h, c.kernel[0], c.stride[0], c.padding[0], c.dilation[0])?,
            window_output_len(w, c.kernel[1], c.stride[1], c.padding[1], c.dilation[1])?,
        ))
    }

    /// The kernel that works image by image and applies the epilogue as it stores,
    /// when one handles this convolution on this processor.
    fn image_kernel(&self) -> Option<DirectKernel> {
        if winograd::applies(&self.config) {
            Some(DirectKernel::Winograd)
        } else {
            direct::applies(&self.config).then_some(DirectKernel::Direct)
        }
    }

    /// Whether [`Conv2d::run_with_moments`] applies an input map as it reads the input
    /// (else it maps a copy first, which costs the memory of the input).
    pub(crate) fn maps_input_as_read(&self) -> bool {
        self.image_kernel().is_some()
    }

    /// Drops the rearranged copies of the weights, which no longer match them.
    fn weights_changed(&mut self) {
        self.rearranged = Rearranged::default();
    }

    fn is_pointwise(&self) -> bool {
        let c = &self.config;
        c.kernel == [1, 1] && c.stride == [1, 1] && c.padding == [0, 0]
    }

    fn run(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        let y = self.run_fused(x, probe, &Epilogue::default())?;
        emit4(probe, LayerKind::Conv, Site::Output, &y);
        Ok(y)
    }

    /// Convolves `x` and applies `epilogue` to each output plane while it is still in
    /// cache. Reports the input tap, not the output (which the epilogue has changed).
    pub(crate) fn run_fused(
        &self,
        x: &Tensor4,
        probe: &mut Probe<'_>,
        epilogue: &Epilogue<'_>,
    ) -> Result<Tensor4> {
        self.convolve(x, None, probe, epilogue, None)
    }

    /// The convolution (with its bias) of `x`, mapped by `input` first when given, and
    /// each output channel's batch mean and biased variance, gathered while each
    /// image's output is in cache (by the AVX-512 kernels as they store their blocks),
    /// for batch norm in calibration mode. Reports the (mapped) input tap only.
    ///
    /// The AVX-512 kernels apply `input` as they read the input; the other paths map
    /// a copy first.
    pub(crate) fn run_with_moments(
        &self,
        x: &Tensor4,
        input: Option<&ChannelMap>,
        probe: &mut Probe<'_>,
    ) -> Result<(Tensor4, Vec<(f64, f64)>)> {
        let (n, c) = (x.dim().0, self.config.out_channels);
        let mut planes = vec![(0.0, 0.0); n * c];
        let y = self.convolve(x, input, probe, &Epilogue::default(), Some(&mut planes))?;
        let spatial = y.dim().2 * y.dim().3;
        Ok((y, merge_plane_moments(&planes, n, c, spatial)))
    }

    /// [`Conv2d::run_fused`] of `x` mapped by `input`, and when `moments` is given
    /// (`[N × O]`), each output plane's mean and sum of squared deviations from it
    /// (before the ReLU).
    fn convolve(
        &self,
        x: &Tensor4,
        input: Option<&ChannelMap>,
        probe: &mut Probe<'_>,
        epilogue: &Epilogue<'_>,
        moments: Option<&mut [(f64, f64)]>,
    ) -> Result<Tensor4> {
        check_channels(probe, x, self.config.in_channels)?;
        let kernel = self.image_kernel();
        if let Some(map) = input {
            if kernel.is_none() || probe.wants(LayerKind::Conv, Site::Input) {
                let mut mapped = super::overwritten(x.dim());
                mapped.assign(x);
                map.apply_in_place(&mut mapped);
                let y = self.convolve(&mapped, None, probe, epilogue, moments);
                super::recycle(mapped);
                return y;
            }
        }
        emit4(probe, LayerKind::Conv, Site::Input, x);
        let (n, _, h, w) = x.dim();
        let (ho, wo) = self.output_size(h, w).ok_or_else(|| {
            Error::shape(
                layer_context(probe),
                format!(
                    "spatial size of at least the kernel's span {:?}",
                    self.config.kernel
                ),
                x.shape(),
            )
        })?;
        let x = x.as_standard_layout();
        let mut y = super::overwritten((n, self.config.out_channels, ho, wo));
        let threads = super::serial::threads();
        let in_len = x.len() / n.max(1);
        let out_len = y.len() / n.max(1);
        let (xs, ys) = (
            x.as_slice().expect("standard layout"),
            y.as_slice_mut().expect("fresh array"),
        );
        let images = self.images_per_product(n, ho * wo, threads);
        let shape = Shapes { h, w, ho, wo };
        let direct = kernel.map(|kernel| {
            let bias = self.bias.as_ref().map(|b| b.data.as_slice());
            let (scale, shift) = (0..self.config.out_channels)
                .map(|o| epilogue.affine(o, bias))
                .unzip::<f32, f32, Vec<f32>, Vec<f32>>();
            let (cache, rearrange): (_, Rearrange) = match kernel {
                DirectKernel::Direct => (&self.rearranged.direct, direct::pack),
                DirectKernel::Winograd => (&self.rearranged.winograd, winograd::transform_weights),
            };
            let packed = cache.get_or_init(|| rearrange(&self.config, &self.weight.data));
            (kernel, packed, scale, shift)
        });
        let shifted = match direct {
            None => self.shifted_columns(shape).map(|_| {
                self.rearranged
                    .shifted
                    .get_or_init(|| self.offset_slices())
                    .as_slice()
            }),
            Some(_) => None,
        };
        let plan = Plan {
            shape,
            shifted,
            direct: direct
                .as_ref()
                .map(|&(kernel, packed, ref scale, ref shift)| Direct {
                    kernel,
                    input,
                    packed,
                    scale,
                    shift,
                    relu: epilogue.relu,
                }),
        };
        let images = if direct.is_some() { 1 } else { images };
        let (y_len, x_len) = ((images * out_len).max(1), (images * in_len).max(1));
        let m_len = (images * self.config.out_channels).max(1);
        let run = |xc: &[f32], yc: &mut [f32], mc: Option<&mut [(f64, f64)]>, t| {
            self.chunk(xc, yc, plan, t, epilogue, mc)
        };
        // In parallel over the images when there are enough of them; else one image
        // at a time, each product over all threads (when there are several).
        let parallel = threads > 1 && n >= threads;
        let t = if threads > 1 {
            Threads::All
        } else {
            Threads::One
        };
        match (parallel, moments) {
            (true, Some(m)) => ys
                .par_chunks_mut(y_len)
                .zip(xs.par_chunks(x_len))
                .zip(m.par_chunks_mut(m_len))
                .for_each(|((yc, xc), mc)| run(xc, yc, Some(mc), Threads::One)),
            (true, None) => ys
                .par_chunks_mut(y_len)
                .zip(xs.par_chunks(x_len))
                .for_each(|(yc, xc)| run(xc, yc, None, Threads::One)),
            (false, Some(m)) => {
                let chunks = ys.chunks_mut(y_len).zip(xs.chunks(x_len));
                for ((yc, xc), mc) in chunks.zip(m.chunks_mut(m_len)) {
                    run(xc, yc, Some(mc), t);
                }
            }
            (false, None) => {
                for (yc, xc) in ys.chunks_mut(y_len).zip(xs.chunks(x_len)) {
                    run(xc, yc, None, t);
                }
            }
        }
        Ok(y)
    }

    /// How many images share one product: enough for [`MIN_PRODUCT_COLUMNS`] columns,
    /// within [`MAX_COLUMN_FLOATS`], leaving every thread a share of the batch.
    fn images_per_product(&self, n: usize, spatial: usize, threads: usize) -> usize {
        let c = &self.config;
        let k = c.in_channels / c.groups * c.kernel[0] * c.kernel[1];
        let wanted = MIN_PRODUCT_COLUMNS.div_ceil(spatial.max(1));
        let fits = MAX_COLUMN_FLOATS / (k * spatial).max(1);
        let share = n.div_ceil(threads.max(1));
        wanted.min(fits).min(share).max(1)
    }

    /// Convolves the images `x` `[B, C, h, w]` into `y` `[B, O, ho, wo]` with one
    /// product per group, then applies the bias and the epilogue.
    /// Fills `moments` (`[B × O]`), when given, with each output plane's mean and
    /// sum of squared deviations, before the ReLU.
    fn chunk(
        &self,
        x: &[f32],
        y: &mut [f32],
        plan: Plan<'_>,
        t: Threads,
        epilogue: &Epilogue<'_>,
        mut moments: Option<&mut [(f64, f64)]>,
    ) {
        let (None, Some(moments)) = (plan.direct, moments.as_deref_mut()) else {
            return self.chunk_with_kernel(x, y, plan, t, epilogue, moments);
        };
        // Other kernels: the moments of the planes just written, while in cache, before
        // the ReLU.
        let linear = Epilogue {
            relu: false,
            ..*epilogue
        };
        self.chunk_with_kernel(x, y, plan, t, &linear, None);
        let spatial = plan.shape.ho * plan.shape.wo;
        for (m, plane) in moments.iter_mut().zip(y.chunks_exact(spatial.max(1))) {
            *m = plane_moments(plane);
        }
        if epilogue.relu {
            y.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }

    /// [`Conv2d::chunk`] by the kernel `plan` chose; only the direct kernel fills
    /// `moments`.
    fn chunk_with_kernel(
        &self,
        x: &[f32],
        y: &mut [f32],
        plan: Plan<'_>,
        t: Threads,
        epilogue: &Epilogue<'_>,
        moments: Option<&mut [(f64, f64)]>,
    ) {
        let sh = plan.shape;
        let c = &self.config;
        let (cg, og) = (c.in_channels / c.groups, c.out_channels / c.groups);
        let k = cg * c.kernel[0] * c.kernel[1];
        let (plane_in, spatial) = (sh.h * sh.w, sh.ho * sh.wo);
        let images = y.len() / (c.out_channels * spatial).max(1);
        let width = images * spatial;
        let pointwise = self.is_pointwise();
        if let Some(Direct {
            kernel,
            input,
            packed,
            scale,
            shift,
            relu,
        }) = plan.direct
        {
            let (per_in, per_out) = (c.in_channels * plane_in, c.out_channels * spatial);
            let call = direct::ImageCall {
                config: c,
                weights: packed,
                size: [sh.h, sh.w],
                out_size: [sh.ho, sh.wo],
                scale,
                shift,
                relu,
                input,
            };
            let image = match kernel {
                DirectKernel::Direct => direct::image,
                DirectKernel::Winograd => winograd::image,
            };
            let mut moments = moments.map(|m| m.chunks_exact_mut(c.out_channels));
            for (xi, yi) in x.chunks_exact(per_in).zip(y.chunks_exact_mut(per_out)) {
                image(&call, xi, yi, moments.as_mut().and_then(|m| m.next()));
            }
            return;
        }
        if let (1, Some(slices)) = (images, plan.shifted) {
            self.shifted(x, y, sh, slices, t, epilogue);
            return;
        }
        COLUMNS.with_borrow_mut(|cols| {
            PRODUCT.with_borrow_mut(|product| {
                let direct = images == 1;
                if !(direct && pointwise) && cols.len() < k * width {
                    cols.resize(k * width, 0.0);
                }
                if !direct && product.len() < og * width {
                    product.resize(og * width, 0.0);
                }
                for g in 0..c.groups {
                    let wg = &self.weight.data[g * og * k..(g + 1) * og * k];
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
                                self.im2col(image_in(i), cols, width, i * spatial, sh);
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
            })
        });
        let bias = self.bias.as_ref().map(|b| b.data.as_slice());
        for yi in y.chunks_mut((c.out_channels * spatial).max(1)) {
            epilogue.apply(yi, spatial, bias);
        }
    }

    /// The width of the shifted products for an input of `sh`, when they apply: stride
    /// 1, a kernel larger than 1×1, and padded output rows wide enough.
    fn shifted_columns(&self, sh: Shapes) -> Option<usize> {
        let c = &self.config;
        let columns = sh.ho * (sh.w + 2 * c.padding[1]);
        (c.stride == [1, 1] && c.kernel != [1, 1] && columns >= MIN_SHIFTED_COLUMNS)
            .then_some(columns)
    }

    /// The weights regrouped as `[group][ki][o][c][kj]`: one `[O/g × C/g·kw]` matrix
    /// per kernel row, for [`Conv2d::shifted`].
    fn offset_slices(&self) -> Vec<f32> {
        let c = &self.config;
        let [kh, kw] = c.kernel;
        let (cg, og) = (c.in_channels / c.groups, c.out_channels / c.groups);
        let mut slices = vec![0.0f32; self.weight.data.len()];
        let mut taps = self.weight.data.chunks_exact(kh * kw);
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
    fn shifted(
        &self,
        x: &[f32],
        y: &mut [f32],
        sh: Shapes,
        slices: &[f32],
        t: Threads,
        epilogue: &Epilogue<'_>,
    ) {
        let c = &self.config;
        let [kh, kw] = c.kernel;
        let [ph, pw] = c.padding;
        let [dh, dw] = c.dilation;
        let (cg, og) = (c.in_channels / c.groups, c.out_channels / c.groups);
        let (hp, wp) = (sh.h + 2 * ph, sh.w + 2 * pw);
        let plane = hp * wp;
        let wide = sh.ho * wp;
        let bias = self.bias.as_ref().map(|b| b.data.as_slice());
        PADDED.with_borrow_mut(|(pad, geometry)| {
            PRODUCT.with_borrow_mut(|product| {
                // While the geometry is unchanged, every position outside the copied
                // interiors is still zero.
                let len = c.in_channels * kw * plane;
                let layout = [c.in_channels, hp, wp, ph, pw, kw * dw];
                if *geometry != layout {
                    pad.clear();
                    pad.resize(len, 0.0);
                    *geometry = layout;
                }
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
            })
        });
    }

    /// Lays out the receptive fields of `x` `[cg, h, w]` as columns: row `r` (one
    /// per input channel and kernel offset) of the `ho·wo` columns goes to
    /// `cols[r·ld + offset..]`, zero where the window hangs over the padding.
    fn im2col(&self, x: &[f32], cols: &mut [f32], ld: usize, offset: usize, sh: Shapes) {
        let Shapes { h, w, ho, wo } = sh;
        let c = &self.config;
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
                            for (v, &s) in
                                out[lo..hi].iter_mut().zip(src[start..].iter().step_by(sw))
                            {
                                *v = s;
                            }
                        }
                    }
                }
            }
        }
    }
}

plain_layer!(Conv2d, Tensor4, Tensor4, weight_bias, then weights_changed);

/// What every chunk of one convolution call shares.
#[derive(Debug, Clone, Copy)]
struct Plan<'a> {
    shape: Shapes,
    /// The weights by kernel offset, when the call uses shifted products.
    shifted: Option<&'a [f32]>,
    /// When the call uses the direct kernel: its weights and epilogue.
    direct: Option<Direct<'a>>,
}

/// The rearranged weights and the per-channel epilogue of a call to one of the
/// kernels that work image by image and apply the epilogue as they store.
#[derive(Debug, Clone, Copy)]
struct Direct<'a> {
    kernel: DirectKernel,
    /// The map to apply to the input as it is read.
    input: Option<&'a ChannelMap>,
    packed: &'a [f32],
    scale: &'a [f32],
    shift: &'a [f32],
    relu: bool,
}

/// The kernels of [`Direct`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirectKernel {
    /// [`direct`]: one multiply-add per input value and weight.
    Direct,
    /// [`winograd`]: Winograd's F(2×2, 3×3).
    Winograd,
}

/// Input and output plane sizes of one convolution call.
#[derive(Debug, Clone, Copy)]
struct Shapes {
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
}

/// What to do to each output plane right after the product: `v = (v + bias)·scale +
/// shift`, then ReLU if asked. The default adds the bias only.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    /// Per output channel; 1 when absent.
    pub scale: Option<&'a [f32]>,
    /// Per output channel; 0 when absent.
    pub shift: Option<&'a [f32]>,
    /// Clamp at zero.
    pub relu: bool,
}

impl Epilogue<'_> {
    /// `(a, b)` such that channel `o`'s output is `v·a + b` before the ReLU.
    fn affine(&self, o: usize, bias: Option<&[f32]>) -> (f32, f32) {
        let a = self.scale.map_or(1.0, |s| s[o]);
        (
            a,
            bias.map_or(0.0, |b| b[o]) * a + self.shift.map_or(0.0, |s| s[o]),
        )
    }

    /// `dst = relu?(src·a + b)`.
    fn map(&self, dst: &mut [f32], src: &[f32], a: f32, b: f32) {
        affine_into(src, dst, a, b, self.relu);
    }

    /// Applies the epilogue in place to planes of `spatial` values.
    fn apply(&self, y: &mut [f32], spatial: usize, bias: Option<&[f32]>) {
        if bias.is_none() && self.scale.is_none() && self.shift.is_none() && !self.relu {
            return;
        }
        for (o, plane) in y.chunks_mut(spatial.max(1)).enumerate() {
            let (a, b) = self.affine(o, bias);
            affine_in_place(plane, a, b, self.relu);
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

/// Splits a batch along its first axis — used by tests to check batch independence.
#[cfg(test)]
pub(crate) fn first_image(x: &Tensor4) -> Tensor4 {
    use ndarray::Axis;
    x.index_axis(Axis(0), 0).insert_axis(Axis(0)).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Layer, Probe};
    use crate::nn::batch_norm::channel_moments;
    use ndarray::Array4;

    fn ramp(shape: (usize, usize, usize, usize)) -> Tensor4 {
        let mut i = 0.0f32;
        Array4::from_shape_simple_fn(shape, || {
            i += 1.0;
            (i * 0.37).sin()
        })
    }

    /// The definition of convolution, written out with no cleverness.
    fn direct(conv: &Conv2d, x: &Tensor4) -> Tensor4 {
        let c = conv.config;
        let (n, _, h, w) = x.dim();
        let (ho, wo) = conv.output_size(h, w).unwrap();
        let (cg, og) = (c.in_channels / c.groups, c.out_channels / c.groups);
        let wt = ndarray::ArrayView4::from_shape(c.weight_shape(), conv.weight()).unwrap();
        Array4::from_shape_fn((n, c.out_channels, ho, wo), |(b, o, i, j)| {
            let g = o / og;
            let mut acc = conv.bias().map_or(0.0, |bias| bias[o] as f64);
            for ci in 0..cg {
                for ki in 0..c.kernel[0] {
                    for kj in 0..c.kernel[1] {
                        let ih =
                            (i * c.stride[0] + ki * c.dilation[0]) as isize - c.padding[0] as isize;
                        let iw =
                            (j * c.stride[1] + kj * c.dilation[1]) as isize - c.padding[1] as isize;
                        if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < w {
                            acc += wt[[o, ci, ki, kj]] as f64
                                * x[[b, g * cg + ci, ih as usize, iw as usize]] as f64;
                        }
                    }
                }
            }
            acc as f32
        })
    }

    /// A convolution with deterministic, non-trivial weights.
    fn filled(cfg: Conv2dConfig) -> Conv2d {
        let mut conv = Conv2d::new(cfg).unwrap();
        let mut i = 0.0f32;
        conv.visit_params_mut(&mut |p| {
            p.data.iter_mut().for_each(|v| {
                i += 1.0;
                *v = (i * 0.23).sin()
            })
        });
        conv
    }

    /// Compares each case's convolution (of a 2-image ramp) with the definition; says
    /// so when the processor sends a case elsewhere than `path` (`takes` false).
    fn check_path(
        cases: &[(Conv2dConfig, (usize, usize))],
        takes: fn(&Conv2dConfig) -> bool,
        path: &str,
    ) {
        for &(cfg, (h, w)) in cases {
            if !takes(&cfg) {
                eprintln!("not {path} on this processor: {cfg:?}");
            }
            check(&filled(cfg), &ramp((2, cfg.in_channels, h, w)));
        }
    }

    /// Compares the convolution of `x` with the definition; returns the output.
    fn check(conv: &Conv2d, x: &Tensor4) -> Tensor4 {
        let got = conv.forward(x).unwrap();
        let want = direct(conv, x);
        let err = (&got - &want).mapv(f32::abs).fold(0.0f32, |a, &b| a.max(b));
        assert!(err < 1e-4, "{:?}: max error {err}", conv.config());
        got
    }

    #[test]
    fn im2col_gemm_equals_the_definition() {
        let configs = [
            Conv2dConfig::new(4, 6, 3).padding(1),
            Conv2dConfig::new(4, 6, 3).stride(2).bias(true),
            Conv2dConfig::new(4, 8, 3).dilation(2).padding(2).groups(2),
            Conv2dConfig::new(4, 4, 3).groups(4).padding(1).stride(2),
            Conv2dConfig::new(4, 6, 1),
            Conv2dConfig::new(4, 6, 1).stride(2),
        ];
        for cfg in configs {
            let conv = filled(cfg);
            let x = ramp((3, 4, 7, 6));
            let got = check(&conv, &x);
            let single = conv.forward(&first_image(&x)).unwrap();
            assert_eq!(single, first_image(&got), "{cfg:?}: batch independence");
        }
    }

    #[test]
    fn shifted_products_equal_the_definition() {
        let configs = [
            Conv2dConfig::new(3, 5, 3).padding(1),
            Conv2dConfig::new(4, 6, 3)
                .padding(2)
                .dilation(2)
                .groups(2)
                .bias(true),
            Conv2dConfig::new(2, 3, 5).padding(1),
            Conv2dConfig {
                kernel: [3, 1],
                padding: [1, 0],
                ..Conv2dConfig::new(2, 2, 1)
            },
        ];
        for cfg in configs {
            let conv = filled(cfg);
            let (ho, wo) = conv.output_size(26, 25).unwrap();
            let sh = Shapes {
                h: 26,
                w: 25,
                ho,
                wo,
            };
            assert!(
                conv.shifted_columns(sh).is_some(),
                "{cfg:?} takes the shifted path"
            );
            check(&conv, &ramp((3, cfg.in_channels, 26, 25)));
        }
    }

    #[test]
    fn direct_kernel_equals_the_definition() {
        // Output widths that exercise every block shape and the leftovers.
        let cases = [
            (Conv2dConfig::new(3, 16, 3).padding(1), (28, 28)),
            (Conv2dConfig::new(16, 32, 3).padding(1).bias(true), (14, 14)),
            (Conv2dConfig::new(8, 16, 3).padding(1), (7, 9)),
            (Conv2dConfig::new(4, 16, 3).padding(2).dilation(2), (11, 33)),
            (Conv2dConfig::new(2, 32, 5).padding(1), (6, 5)),
            (Conv2dConfig::new(16, 32, 3).padding(1).stride(2), (28, 28)),
            (Conv2dConfig::new(6, 16, 3).padding(1).stride(2), (9, 13)),
            (Conv2dConfig::new(16, 32, 1).stride(2), (14, 14)),
            (Conv2dConfig::new(3, 16, 7).padding(3).stride(2), (20, 18)),
            (
                Conv2dConfig {
                    kernel: [1, 3],
                    padding: [0, 1],
                    ..Conv2dConfig::new(5, 16, 1)
                },
                (3, 61),
            ),
        ];
        check_path(&cases, direct::applies, "the direct kernel");
    }

    #[test]
    fn winograd_equals_the_definition() {
        // Odd and even sizes (tiles past the edge), padding 0 to 2, blocks of whole
        // tile rows and pieces of wide rows, partial vectors of tiles.
        let cases = [
            (Conv2dConfig::new(16, 16, 3).padding(1), (28, 28)),
            (Conv2dConfig::new(32, 32, 3).padding(1).bias(true), (7, 7)),
            (Conv2dConfig::new(64, 64, 3).padding(1), (14, 14)),
            (Conv2dConfig::new(16, 48, 3), (9, 13)),
            (Conv2dConfig::new(24, 16, 3).padding(2), (5, 6)),
            (Conv2dConfig::new(16, 32, 3).padding(1), (3, 70)),
            (Conv2dConfig::new(17, 16, 3).padding(1), (1, 1)),
            (Conv2dConfig::new(16, 16, 3).padding(3), (4, 5)),
            (
                Conv2dConfig {
                    padding: [0, 2],
                    ..Conv2dConfig::new(20, 16, 3)
                },
                (6, 11),
            ),
        ];
        check_path(&cases, winograd::applies, "Winograd's algorithm");
    }

    #[test]
    fn rearranged_weights_follow_changes_to_the_weights() {
        // One configuration per kernel that reads rearranged weights.
        let cases = [
            (Conv2dConfig::new(8, 16, 3).padding(1), (9, 9)),
            (Conv2dConfig::new(80, 8, 3).padding(1), (12, 30)),
        ];
        for (cfg, (h, w)) in cases {
            let mut conv = filled(cfg);
            let x = ramp((2, cfg.in_channels, h, w));
            let before = check(&conv, &x);
            conv.visit_params_mut(&mut |p| p.data.iter_mut().for_each(|v| *v = -*v));
            let after = check(&conv, &x);
            assert!(after.iter().zip(&before).any(|(a, b)| a != b), "{cfg:?}");
        }
    }

    #[test]
    fn moments_gathered_while_convolving_equal_those_of_the_output() {
        let cases = [
            // Direct kernel: several pixel blocks per plane, 2 output blocks.
            (Conv2dConfig::new(8, 32, 3).padding(1).bias(true), (13, 30)),
            (Conv2dConfig::new(16, 16, 3).padding(1).stride(2), (14, 14)),
            // Winograd: several tile blocks and output blocks, odd sizes.
            (Conv2dConfig::new(16, 32, 3).padding(1).bias(true), (13, 30)),
            (Conv2dConfig::new(32, 16, 3).padding(1), (7, 7)),
            // GEMM and shifted products.
            (Conv2dConfig::new(4, 6, 3).bias(true), (9, 9)),
            (Conv2dConfig::new(80, 8, 3).padding(1), (12, 30)),
        ];
        for (cfg, (h, w)) in cases {
            let conv = filled(cfg);
            let x = ramp((3, cfg.in_channels, h, w)).mapv(|v| v + 2.0);
            let (y, got) = conv.run_with_moments(&x, None, &mut Probe::none()).unwrap();
            assert_eq!(y, conv.forward(&x).unwrap(), "{cfg:?}");
            let (n, c, ho, wo) = y.dim();
            let want = channel_moments(y.as_slice().unwrap(), n, c, ho * wo);
            for (ch, ((gm, gv), (wm, wv))) in got.iter().zip(&want).enumerate() {
                assert!(
                    (gm - wm).abs() <= 1e-6 * wm.abs().max(1.0),
                    "{cfg:?} {ch}: mean {gm} {wm}"
                );
                assert!(
                    (gv - wv).abs() <= 1e-6 * wv.abs(),
                    "{cfg:?} {ch}: var {gv} {wv}"
                );
            }
        }
    }

    #[test]
    fn an_input_map_is_applied_as_the_input_is_read() {
        let cases = [
            // Winograd, the direct kernel (with padding), a GEMM path.
            (Conv2dConfig::new(16, 32, 3).padding(1), (9, 13)),
            (Conv2dConfig::new(8, 16, 3).padding(1).stride(2), (9, 13)),
            (Conv2dConfig::new(80, 8, 3).padding(1), (12, 30)),
        ];
        for (cfg, (h, w)) in cases {
            let conv = filled(cfg);
            let x = ramp((2, cfg.in_channels, h, w));
            let c = cfg.in_channels;
            let map = ChannelMap {
                scale: (0..c).map(|i| 0.5 + i as f32 / c as f32).collect(),
                shift: (0..c).map(|i| i as f32 / c as f32 - 0.6).collect(),
                relu: true,
            };
            let mut mapped = x.clone();
            map.apply_in_place(&mut mapped);
            let want = conv
                .run_with_moments(&mapped, None, &mut Probe::none())
                .unwrap();
            let got = conv
                .run_with_moments(&x, Some(&map), &mut Probe::none())
                .unwrap();
            assert_eq!(got, want, "{cfg:?}");
        }
    }

    #[test]
    fn wrong_channel_count_is_an_error_naming_the_shape() {
        let conv = Conv2d::new(Conv2dConfig::new(3, 4, 3)).unwrap();
        let err = conv.forward(&Array4::zeros((1, 2, 5, 5))).unwrap_err();
        assert!(err.to_string().contains("[1, 2, 5, 5]"), "{err}");
        let err = conv.forward(&Array4::zeros((1, 3, 2, 2))).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
    }

    #[test]
    fn invalid_groups_are_rejected() {
        assert!(Conv2d::new(Conv2dConfig::new(6, 4, 3).groups(4)).is_err());
        assert!(Conv2d::new(Conv2dConfig::new(6, 4, 0)).is_err());
    }
}
