//! The convolution engine: which way each call computes ([`path`]), the matrix-product
//! paths ([`gemm_paths`], on faer through [`gemm`]), and the driver that spreads the
//! images of a batch over the threads and hands them to a path.
//!
//! The engine knows convolutions as numbers (a [`Conv2dConfig`], weights, a bias), not
//! as layers: the layer ([`crate::nn::Conv2d`]) checks its input, reports its taps and
//! owns the weights; the image kernels ([`crate::nn::kernels`]) know only their own
//! geometry.

pub(crate) mod blocked;
mod config;
mod depthwise;
pub(crate) mod gemm;
mod gemm_paths;
mod nchw_sparse;
pub(crate) mod path;
pub(crate) mod sparse;

pub use config::Conv2dConfig;
pub(crate) use config::Shapes;
pub(crate) use path::ConvPath;

use crate::exec::Exec;
use crate::nn::kernels::direct::{self, ImageCall};
use crate::nn::kernels::geometry::Geometry;
use crate::nn::kernels::{plain, winograd, Isa, Kernels, LANES};
use crate::nn::runtime::{Activation, ChannelMap, Threads};
use crate::stats::plane_moments;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Copies of a convolution's weights in the orders its paths read them, made on first
/// use; whoever changes the weights drops them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rearranged {
    /// `[O/16][C][kh][kw][16]`, for the direct kernel.
    direct: OnceLock<Vec<f32>>,
    /// `[group][ki][o][c][kj]`, for the shifted products.
    shifted: OnceLock<Vec<f32>>,
    /// `[O/16][ξ][C][16]`, the kernels in Winograd's domain.
    winograd: OnceLock<Vec<f32>>,
    /// As the blocked kernel of the convolution's kind reads them.
    blocked: OnceLock<Vec<f32>>,
    /// The non-zeros, for the sparse kernel, and where it was measured faster.
    sparse: sparse::SparseForm,
}

impl Rearranged {
    /// The choices between the dense and sparse kernels measured so far.
    pub(crate) fn sparse_choices(&self) -> Vec<sparse::SparseChoice> {
        self.sparse.choices()
    }
}

/// What to do to each output plane right after the product: `v = (v + bias)·scale +
/// shift`, then the activation. The default adds the bias only.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    /// Per output channel; 1 when absent.
    pub scale: Option<&'a [f32]>,
    /// Per output channel; 0 when absent.
    pub shift: Option<&'a [f32]>,
    /// Applied last.
    pub activation: Activation,
}

impl Epilogue<'_> {
    /// `(a, b)` such that channel `o`'s output is `v·a + b` before the activation.
    fn affine(&self, o: usize, bias: Option<&[f32]>) -> (f32, f32) {
        let a = self.scale.map_or(1.0, |s| s[o]);
        (
            a,
            bias.map_or(0.0, |b| b[o]) * a + self.shift.map_or(0.0, |s| s[o]),
        )
    }

    /// `(a, b)` of [`Epilogue::affine`] for each of `out` channels, padded with zeros
    /// to whole blocks of sixteen: the scale and shift of a blocked kernel's store.
    fn blocked_affine(&self, out: usize, bias: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
        let padded = out.div_ceil(LANES) * LANES;
        (0..padded)
            .map(|o| match o < out {
                true => self.affine(o, bias),
                false => (0.0, 0.0),
            })
            .unzip()
    }

    /// `dst = activation(src·a + b)`.
    fn map(&self, dst: &mut [f32], src: &[f32], a: f32, b: f32) {
        self.activation.map_into(src, dst, a, b);
    }

    /// The activation the vector kernels apply in their store: ReLU or none.
    fn in_kernel(&self) -> bool {
        self.activation == Activation::Relu
    }

    /// The activation that must follow the vector kernels' store, if any.
    fn after_kernel(&self) -> Option<Activation> {
        (!matches!(self.activation, Activation::Identity | Activation::Relu))
            .then_some(self.activation)
    }

    /// Applies the epilogue in place to planes of `spatial` values, vectorised for
    /// `isa`.
    fn apply(&self, y: &mut [f32], spatial: usize, bias: Option<&[f32]>, isa: Isa) {
        let identity = self.activation == Activation::Identity;
        if bias.is_none() && self.scale.is_none() && self.shift.is_none() && identity {
            return;
        }
        plain::map_planes(isa, y, spatial, |o| self.affine(o, bias), self.activation);
    }
}

/// `y = x · gates[p]` for each plane `p` of `spatial` values (a squeeze-excitation's
/// reweighting), vectorised for the current instruction set, in parallel over chunks
/// of planes when the layer may use several threads.
pub(crate) fn scale_planes(x: &[f32], y: &mut [f32], spatial: usize, gates: &[f32], exec: Exec) {
    let (isa, threads) = (Isa::of(exec), exec.threads());
    let spatial = spatial.max(1);
    // About 64 KiB of output per task.
    let planes = (16_384 / spatial).max(1);
    if threads == 1 {
        return plain::scale_planes(isa, x, y, spatial, gates);
    }
    y.par_chunks_mut(planes * spatial)
        .zip(x.par_chunks(planes * spatial))
        .zip(gates.par_chunks(planes))
        .for_each(|((y, x), g)| plain::scale_planes(isa, x, y, spatial, g));
}

/// `out = f(out + s)` (a residual add), vectorised for the current instruction set, in
/// parallel over chunks.
pub(crate) fn add_activate(out: &mut [f32], s: &[f32], f: Activation, exec: Exec) {
    let (isa, threads) = (Isa::of(exec), exec.threads());
    const CHUNK: usize = 16_384;
    if threads == 1 {
        for (o, s) in out.chunks_mut(CHUNK).zip(s.chunks(CHUNK)) {
            plain::add_activate(isa, o, s, f);
        }
        return;
    }
    out.par_chunks_mut(CHUNK)
        .zip(s.par_chunks(CHUNK))
        .for_each(|(o, s)| plain::add_activate(isa, o, s, f));
}

/// One convolution as the engine computes it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Convolution<'a> {
    pub config: &'a Conv2dConfig,
    /// `[out, in / groups, kh, kw]`, row-major.
    pub weight: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub rearranged: &'a Rearranged,
}

/// The images of one call: `n` images of `[C, h, w]` in `x`, their `[O, ho, wo]`
/// outputs in `y`.
#[derive(Debug)]
pub(crate) struct Batch<'a> {
    pub x: &'a [f32],
    pub y: &'a mut [f32],
    pub n: usize,
    pub shape: Shapes,
}

/// Products narrower than this many columns are widened by convolving several images
/// at once (small feature maps, e.g. 7×7, make thin, slow products).
const MIN_PRODUCT_COLUMNS: usize = 512;

/// The im2col buffer of one multi-image product stays below this many floats (1 MiB,
/// about what a core's L2 cache holds).
const MAX_COLUMN_FLOATS: usize = 1 << 18;

impl Convolution<'_> {
    /// Whether calls on `isa` apply an input map as they read the input (the image
    /// kernels); else [`Convolution::run`] must be given a mapped input.
    pub(crate) fn maps_input_as_read(&self, isa: Isa) -> bool {
        path::image_kernel(self.config, isa).is_some() || depthwise::is_depthwise(self.config)
    }

    /// Convolves the batch on `isa` (its input mapped by `input` as it is read, which
    /// only the image kernels do: see [`Convolution::maps_input_as_read`]), applies
    /// `epilogue` to each output plane while it is in cache, and fills `moments`
    /// (`[N × O]`), when given, with each output plane's mean and sum of squared
    /// deviations from it, before the activation.
    pub(crate) fn run(
        &self,
        batch: Batch<'_>,
        input: Option<&ChannelMap>,
        epilogue: &Epilogue<'_>,
        moments: Option<&mut [(f64, f64)]>,
        isa: Isa,
        threads: usize,
    ) {
        let Batch { x, y, n, shape } = batch;
        let c = self.config;
        let images = self.images_per_product(n, shape.ho * shape.wo, threads);
        let path = path::choose(c, shape, images, isa);
        let by_image = path.kernels().is_some() || path == ConvPath::Depthwise;
        assert!(
            input.is_none() || by_image,
            "only the image kernels and the depthwise path map their input"
        );
        let images = if by_image { 1 } else { images };
        let (in_len, out_len) = (x.len() / n.max(1), y.len() / n.max(1));
        let bias = self.bias;
        let (scale, shift): (Vec<f32>, Vec<f32>) = match path.kernels() {
            Some(_) => (0..c.out_channels)
                .map(|o| epilogue.affine(o, bias))
                .unzip(),
            None => Default::default(),
        };
        let geometry = c.geometry([shape.h, shape.w], [shape.ho, shape.wo]).group();
        // A grouped image-kernel call reads each group's input map from channel 0.
        let group_inputs = match (input, path.kernels().is_some() && c.groups > 1) {
            (Some(map), true) => Some(map.split(c.groups)),
            _ => None,
        };
        let plan = Plan {
            path,
            shape,
            weights: self.path_weights(path, &geometry),
            kernel_call: ImageCall {
                geometry: &geometry,
                weights: &[],
                scale: &scale,
                shift: &shift,
                relu: epilogue.in_kernel(),
                input,
            },
            epilogue,
            isa,
            group_inputs,
        };
        let (y_len, x_len) = ((images * out_len).max(1), (images * in_len).max(1));
        let m_len = (images * c.out_channels).max(1);
        let run = |x: &[f32], y: &mut [f32], moments: Option<&mut [(f64, f64)]>, t| {
            self.chunk(&plan, Chunk { x, y, moments, t })
        };
        // In parallel over the images when there are enough of them; else one image
        // at a time, each product over all threads (when there are several).
        let parallel = threads > 1 && n >= threads;
        let t = if threads > 1 {
            Threads::Rayon
        } else {
            Threads::Seq
        };
        match (parallel, moments) {
            (true, Some(m)) => y
                .par_chunks_mut(y_len)
                .zip(x.par_chunks(x_len))
                .zip(m.par_chunks_mut(m_len))
                .for_each(|((yc, xc), mc)| run(xc, yc, Some(mc), Threads::Seq)),
            (true, None) => y
                .par_chunks_mut(y_len)
                .zip(x.par_chunks(x_len))
                .for_each(|(yc, xc)| run(xc, yc, None, Threads::Seq)),
            (false, Some(m)) => {
                let chunks = y.chunks_mut(y_len).zip(x.chunks(x_len));
                for ((yc, xc), mc) in chunks.zip(m.chunks_mut(m_len)) {
                    run(xc, yc, Some(mc), t);
                }
            }
            (false, None) => {
                for (yc, xc) in y.chunks_mut(y_len).zip(x.chunks(x_len)) {
                    run(xc, yc, None, t);
                }
            }
        }
    }

    /// The weights in the order `path` reads them (made once and kept).
    fn path_weights(&self, path: ConvPath, geometry: &Geometry) -> &[f32] {
        let r = self.rearranged;
        // The image kernels' weights, group after group.
        let groups = self.config.groups;
        let per_group = self.weight.len() / groups;
        let each = |f: &dyn Fn(&[f32]) -> Vec<f32>| -> Vec<f32> {
            self.weight.chunks_exact(per_group).flat_map(f).collect()
        };
        match path {
            ConvPath::Direct(_) => r
                .direct
                .get_or_init(|| each(&|w| direct::pack(geometry, w))),
            ConvPath::Winograd(_) => r
                .winograd
                .get_or_init(|| each(&|w| winograd::transform_weights(geometry, w))),
            ConvPath::Shifted => r
                .shifted
                .get_or_init(|| gemm_paths::offset_slices(self.config, self.weight)),
            ConvPath::Pointwise | ConvPath::Im2col | ConvPath::Depthwise => self.weight,
        }
    }

    /// How many images share one product: enough for [`MIN_PRODUCT_COLUMNS`] columns,
    /// within [`MAX_COLUMN_FLOATS`], leaving every thread a share of the batch.
    fn images_per_product(&self, n: usize, spatial: usize, threads: usize) -> usize {
        let c = self.config;
        let k = c.in_channels / c.groups * c.kernel[0] * c.kernel[1];
        let wanted = MIN_PRODUCT_COLUMNS.div_ceil(spatial.max(1));
        let fits = MAX_COLUMN_FLOATS / (k * spatial).max(1);
        let share = n.div_ceil(threads.max(1));
        wanted.min(fits).min(share).max(1)
    }

    /// Convolves the images `x` `[B, C, h, w]` into `y` `[B, O, ho, wo]` by the plan's
    /// path, then applies the bias and the epilogue. Fills `moments` (`[B × O]`), when
    /// given, with each output plane's mean and sum of squared deviations, before the
    /// activation.
    fn chunk(&self, plan: &Plan<'_>, chunk: Chunk<'_>) {
        match plan.path {
            ConvPath::Depthwise => self.depthwise(plan, chunk),
            ConvPath::Winograd(kernels) => self.images(plan, chunk, kernels, winograd::image),
            ConvPath::Direct(kernels) => self.images(plan, chunk, kernels, direct::image),
            ConvPath::Pointwise => self.products(plan, chunk, Product::Columns(true)),
            ConvPath::Im2col => self.products(plan, chunk, Product::Columns(false)),
            ConvPath::Shifted => self.products(plan, chunk, Product::Shifted),
        }
    }

    /// [`Convolution::chunk`] on the depthwise path, image by image.
    fn depthwise(&self, plan: &Plan<'_>, chunk: Chunk<'_>) {
        let Chunk { x, y, moments, t } = chunk;
        let call = depthwise::Depthwise {
            config: self.config,
            shape: plan.shape,
            weight: self.weight,
            bias: self.bias,
            input: plan.kernel_call.input,
            epilogue: plan.epilogue,
            isa: plan.isa,
        };
        let sh = plan.shape;
        let c = self.config.in_channels;
        let (per_in, per_out) = (c * sh.h * sh.w, c * sh.ho * sh.wo);
        let mut moments = moments.map(|m| m.chunks_exact_mut(c));
        for (xi, yi) in x.chunks_exact(per_in).zip(y.chunks_exact_mut(per_out)) {
            call.image(xi, yi, moments.as_mut().and_then(|m| m.next()), t);
        }
    }

    /// [`Convolution::chunk`] on an image kernel (`image`: Winograd's or the direct
    /// one), image by image and group by group.
    fn images(&self, plan: &Plan<'_>, chunk: Chunk<'_>, kernels: Kernels, image: ImageKernel) {
        let Chunk { x, y, moments, .. } = chunk;
        let c = self.config;
        let sh = plan.shape;
        let (per_in, per_out) = (c.in_channels * sh.h * sh.w, c.out_channels * sh.ho * sh.wo);
        let mut moments = moments.map(|m| m.chunks_exact_mut(c.out_channels));
        let after = plan.epilogue.after_kernel();
        // Group by group: each a convolution of its own input channels into its own
        // output channels (one group for most convolutions).
        let groups = c.groups;
        let (cg, og) = (c.in_channels / groups, c.out_channels / groups);
        let (gin, gout) = (cg * sh.h * sh.w, og * sh.ho * sh.wo);
        let gw = plan.weights.len() / groups;
        let call = |g: usize| ImageCall {
            weights: &plan.weights[g * gw..(g + 1) * gw],
            scale: &plan.kernel_call.scale[g * og..(g + 1) * og],
            shift: &plan.kernel_call.shift[g * og..(g + 1) * og],
            input: match &plan.group_inputs {
                Some(maps) => Some(&maps[g]),
                None => plan.kernel_call.input,
            },
            ..plan.kernel_call
        };
        for (xi, yi) in x.chunks_exact(per_in).zip(y.chunks_exact_mut(per_out)) {
            let mut mi = moments.as_mut().and_then(|m| m.next());
            let planes = xi.chunks_exact(gin).zip(yi.chunks_exact_mut(gout));
            for (g, (xg, yg)) in planes.enumerate() {
                let mg = mi.as_deref_mut().map(|m| &mut m[g * og..(g + 1) * og]);
                image(kernels, &call(g), xg, yg, mg);
            }
            // The image's output is still in cache.
            if let Some(activation) = after {
                plain::activate(plan.isa, yi, activation);
            }
        }
    }

    /// [`Convolution::chunk`] by one of the matrix-product paths; with `moments`,
    /// those of the planes just written, while in cache, before the activation.
    fn products(&self, plan: &Plan<'_>, chunk: Chunk<'_>, product: Product) {
        let Chunk { x, y, moments, t } = chunk;
        let Some(moments) = moments else {
            return self.product(x, y, plan, t, product, plan.epilogue);
        };
        let linear = Epilogue {
            activation: Activation::Identity,
            ..*plan.epilogue
        };
        self.product(x, y, plan, t, product, &linear);
        let spatial = plan.shape.ho * plan.shape.wo;
        for (m, plane) in moments.iter_mut().zip(y.chunks_exact(spatial.max(1))) {
            *m = plane_moments(plane);
        }
        plain::activate(plan.isa, y, plan.epilogue.activation);
    }

    /// The product of `product`'s layout, then `epilogue`.
    fn product(
        &self,
        x: &[f32],
        y: &mut [f32],
        plan: &Plan<'_>,
        t: Threads,
        product: Product,
        epilogue: &Epilogue<'_>,
    ) {
        let sh = plan.shape;
        match product {
            Product::Shifted => gemm_paths::shifted(self, x, y, sh, plan.weights, t, epilogue),
            Product::Columns(pointwise) => {
                gemm_paths::columns(self, x, y, sh, pointwise, t);
                let spatial = sh.ho * sh.wo;
                for yi in y.chunks_mut((self.config.out_channels * spatial).max(1)) {
                    epilogue.apply(yi, spatial, self.bias, plan.isa);
                }
            }
        }
    }
}

/// How a matrix-product path lays out the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Product {
    /// One product per kernel row, of shifted copies of the padded input.
    Shifted,
    /// The receptive fields as columns; `true` for a 1×1 convolution, whose input is
    /// its own columns.
    Columns(bool),
}

/// An image kernel: Winograd's or the direct one.
type ImageKernel = fn(Kernels, &ImageCall<'_>, &[f32], &mut [f32], Option<&mut [(f64, f64)]>);

/// One chunk of a call: its images `x`, their outputs `y`, the moments to fill, and
/// the threads its products may use.
struct Chunk<'c> {
    x: &'c [f32],
    y: &'c mut [f32],
    moments: Option<&'c mut [(f64, f64)]>,
    t: Threads,
}

/// What every chunk of one call shares.
struct Plan<'a> {
    path: ConvPath,
    shape: Shapes,
    /// The weights in the order the path reads them.
    weights: &'a [f32],
    /// The image kernels' call, but for the weights.
    kernel_call: ImageCall<'a>,
    epilogue: &'a Epilogue<'a>,
    /// The instruction set of the call.
    isa: Isa,
    /// The input map of each group, for a grouped image-kernel call.
    group_inputs: Option<Vec<ChannelMap>>,
}
