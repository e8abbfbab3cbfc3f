//! 2-d convolution, NCHW: the layer. The engine ([`crate::nn::engine`]) computes it.

use super::{check_channels, emit4, layer_context, window_output_len, ParamTensor, Tensor4};
use crate::error::{Error, Result};
use crate::layer::{LayerKind, Probe, Site};
use crate::nn::blocked::BlockedTensor;
use crate::nn::engine::blocked::{BlockedInput, BlockedKind};
use crate::nn::engine::{Batch, Convolution, Epilogue, Rearranged, Shapes};
use crate::nn::kernels::{Isa, Kernels};
use crate::nn::runtime::{overwritten, recycle, ChannelMap};
use crate::stats::merge_plane_moments;

pub use crate::nn::engine::Conv2dConfig;

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

    /// The output size for an input of NCHW shape `dims`; an error naming the running
    /// layer of `probe` when the kernel does not fit.
    fn checked_output_size(&self, dims: &[usize], probe: &Probe<'_>) -> Result<(usize, usize)> {
        self.output_size(dims[2], dims[3]).ok_or_else(|| {
            Error::shape(
                layer_context(probe),
                format!(
                    "spatial size of at least the kernel's span {:?}",
                    self.config.kernel
                ),
                dims,
            )
        })
    }

    /// The engine's view of this convolution.
    fn engine(&self) -> Convolution<'_> {
        Convolution {
            config: &self.config,
            weight: &self.weight.data,
            bias: self.bias.as_ref().map(|b| b.data.as_slice()),
            rearranged: &self.rearranged,
        }
    }

    /// Whether [`Conv2d::run_with_moments`] applies an input map as it reads the input
    /// on this processor (else it maps a copy first, which costs the memory of the
    /// input).
    pub(crate) fn maps_input_as_read(&self) -> bool {
        self.engine().maps_input_as_read(Isa::current())
    }

    /// The choices this convolution measured between its dense and sparse kernels
    /// (under [`crate::nn::SparsePolicy::Measured`], for each input size it ran on
    /// blocked activations), in the order measured; empty for a layer more than half
    /// dense, or not yet run. Changing the weights forgets them.
    pub fn sparse_choices(&self) -> Vec<crate::nn::SparseChoice> {
        self.rearranged.sparse_choices()
    }

    /// Drops the rearranged copies of the weights, which no longer match them.
    fn weights_changed(&mut self) {
        self.rearranged = Rearranged::default();
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
        self.convolve(x, None, probe, epilogue, None, Isa::current())
    }

    /// The convolution (with its bias) of `x`, mapped by `input` first when given, and
    /// each output channel's batch mean and biased variance, gathered while each
    /// image's output is in cache (by the image kernels as they store their blocks),
    /// for batch norm in calibration mode. Reports the (mapped) input tap only.
    ///
    /// The image kernels apply `input` as they read the input; the other paths map
    /// a copy first.
    pub(crate) fn run_with_moments(
        &self,
        x: &Tensor4,
        input: Option<&ChannelMap>,
        probe: &mut Probe<'_>,
    ) -> Result<(Tensor4, Vec<(f64, f64)>)> {
        self.run_with_moments_on(x, input, probe, Isa::current())
    }

    /// [`Conv2d::run_with_moments`] on `isa`.
    fn run_with_moments_on(
        &self,
        x: &Tensor4,
        input: Option<&ChannelMap>,
        probe: &mut Probe<'_>,
        isa: Isa,
    ) -> Result<(Tensor4, Vec<(f64, f64)>)> {
        let (n, c) = (x.dim().0, self.config.out_channels);
        let mut planes = vec![(0.0, 0.0); n * c];
        let epilogue = Epilogue::default();
        let y = self.convolve(x, input, probe, &epilogue, Some(&mut planes), isa)?;
        let spatial = y.dim().2 * y.dim().3;
        Ok((y, merge_plane_moments(&planes, n, c, spatial)))
    }

    /// [`Conv2d::run_fused`] of `x` mapped by `input` on `isa`, and when `moments` is
    /// given (`[N × O]`), each output plane's mean and sum of squared deviations from
    /// it (before the ReLU).
    fn convolve(
        &self,
        x: &Tensor4,
        input: Option<&ChannelMap>,
        probe: &mut Probe<'_>,
        epilogue: &Epilogue<'_>,
        moments: Option<&mut [(f64, f64)]>,
        isa: Isa,
    ) -> Result<Tensor4> {
        check_channels(probe, x, self.config.in_channels)?;
        if let Some(map) = input {
            let as_read = self.engine().maps_input_as_read(isa);
            if !as_read || probe.wants(LayerKind::Conv, Site::Input) {
                let mut mapped = overwritten(x.dim());
                mapped.assign(x);
                map.apply_in_place(&mut mapped);
                let y = self.convolve(&mapped, None, probe, epilogue, moments, isa);
                recycle(mapped);
                return y;
            }
        }
        emit4(probe, LayerKind::Conv, Site::Input, x);
        let (n, _, h, w) = x.dim();
        let (ho, wo) = self.checked_output_size(x.shape(), probe)?;
        let x = x.as_standard_layout();
        let mut y = overwritten((n, self.config.out_channels, ho, wo));
        let batch = Batch {
            x: x.as_slice().expect("standard layout"),
            y: y.as_slice_mut().expect("fresh array"),
            n,
            shape: Shapes { h, w, ho, wo },
        };
        self.engine().run(batch, input, epilogue, moments, isa);
        Ok(y)
    }
}

impl Conv2d {
    /// The blocked kernel that computes this convolution, if one does.
    pub(crate) fn blocked_kind(&self) -> Option<BlockedKind> {
        BlockedKind::of(&self.config)
    }

    /// The eval pass on blocks (see [`crate::nn::blocked`]): the convolution of `x`
    /// (blocks, or NCHW for a kernel that reads it) with `epilogue` applied as it
    /// stores, and `residual` (of the output's shape) added before its activation.
    /// Errors name the running layer of `probe`; its profile, if any, gets the time.
    pub(crate) fn run_blocked(
        &self,
        kind: BlockedKind,
        x: BlockedInput<'_>,
        epilogue: &Epilogue<'_>,
        residual: Option<&BlockedTensor>,
        kernels: Kernels,
        probe: &Probe<'_>,
    ) -> Result<BlockedTensor> {
        let start = probe.profile().map(|_| std::time::Instant::now());
        let [n, c, ..] = x.dims();
        let c_in = self.config.in_channels;
        if c != c_in {
            let want = format!("[_, {c_in}, _, _]");
            return Err(Error::shape(layer_context(probe), want, &x.dims()[..]));
        }
        let (ho, wo) = self.checked_output_size(&x.dims(), probe)?;
        let out = [n, self.config.out_channels, ho, wo];
        if let Some(r) = residual.filter(|r| r.dims() != out) {
            return Err(Error::shape(
                format!("{} (residual add)", layer_context(probe)),
                format!("the body's output shape {out:?}"),
                &r.dims()[..],
            ));
        }
        let engine = self.engine();
        let (y, kernel) = engine.run_blocked(kind, x, [ho, wo], epilogue, residual, kernels);
        if let (Some(profile), Some(start)) = (probe.profile(), start) {
            profile.record(probe.path(), kernel, start.elapsed().as_secs_f64());
        }
        Ok(y)
    }
}

plain_layer!(Conv2d, Tensor4, Tensor4, weight_bias, then weights_changed);

/// Splits a batch along its first axis — used by tests to check batch independence.
#[cfg(test)]
pub(crate) fn first_image(x: &Tensor4) -> Tensor4 {
    use ndarray::Axis;
    x.index_axis(Axis(0), 0).insert_axis(Axis(0)).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Layer, Params, Probe};
    use crate::nn::engine::path::{self, ConvPath};
    use crate::nn::kernels::{every_kernels, Kernels};
    use crate::stats::channel_moments;
    use ndarray::Array4;

    /// Every instruction set this machine can run the paths on: faer's products
    /// alone, then the image kernels on each instruction set.
    fn every_isa() -> Vec<Isa> {
        std::iter::once(Isa::Portable)
            .chain(every_kernels().into_iter().map(Isa::Kernels))
            .collect()
    }

    impl Conv2d {
        /// The eval pass on `isa`.
        fn forward_on(&self, isa: Isa, x: &Tensor4) -> Tensor4 {
            let epilogue = Epilogue::default();
            self.convolve(x, None, &mut Probe::none(), &epilogue, None, isa)
                .unwrap()
        }
    }

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

    /// Checks that the image kernels take each case (`path` of the kernels), then
    /// compares its convolution (of a 2-image ramp) with the definition on every
    /// instruction set.
    fn check_path(cases: &[(Conv2dConfig, (usize, usize))], path: fn(Kernels) -> ConvPath) {
        for &(cfg, (h, w)) in cases {
            for kernels in every_kernels() {
                let taken = path::image_kernel(&cfg, Isa::Kernels(kernels));
                assert_eq!(taken, Some(path(kernels)), "{cfg:?}");
            }
            check(&filled(cfg), &ramp((2, cfg.in_channels, h, w)));
        }
    }

    /// Compares the convolution of `x` on every instruction set with the definition,
    /// and the layer's own pass with them; returns the output.
    fn check(conv: &Conv2d, x: &Tensor4) -> Tensor4 {
        let want = direct(conv, x);
        for isa in every_isa() {
            let got = conv.forward_on(isa, x);
            let err = (&got - &want).mapv(f32::abs).fold(0.0f32, |a, &b| a.max(b));
            assert!(
                err < 1e-4,
                "{:?} on {isa:?}: max error {err}",
                conv.config()
            );
        }
        let got = conv.forward(x).unwrap();
        assert_eq!(got, conv.forward_on(Isa::current(), x));
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
            // An image's output does not depend on the batch around it, up to the
            // rounding of faer's products, whose kernels depend on the product's width
            // on some processors (bit for bit on x86-64, a few units in the last place
            // with NEON).
            let single = conv.forward(&first_image(&x)).unwrap();
            let err = (&single - &first_image(&got))
                .mapv(f32::abs)
                .fold(0.0f32, |a, &b| a.max(b));
            assert!(err <= 1e-6, "{cfg:?}: batch independence, {err}");
        }
    }

    #[test]
    fn depthwise_planes_equal_the_definition() {
        let configs = [
            Conv2dConfig::new(8, 8, 3).padding(1).groups(8),
            Conv2dConfig::new(8, 8, 3)
                .padding(1)
                .stride(2)
                .groups(8)
                .bias(true),
            Conv2dConfig::new(6, 6, 5).padding(2).groups(6),
            Conv2dConfig::new(6, 6, 5)
                .padding(2)
                .stride(2)
                .groups(6)
                .bias(true),
            Conv2dConfig::new(4, 4, 3).dilation(2).padding(2).groups(4),
            Conv2dConfig::new(4, 4, 3).stride(3).groups(4),
        ];
        for cfg in configs {
            assert_eq!(
                path::choose(
                    &cfg,
                    Shapes {
                        h: 9,
                        w: 9,
                        ho: 9,
                        wo: 9
                    },
                    1,
                    Isa::Portable
                ),
                ConvPath::Depthwise
            );
            for (n, h, w) in [(3, 11, 7), (1, 5, 16)] {
                let conv = filled(cfg);
                check(&conv, &ramp((n, cfg.in_channels, h, w)));
            }
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
            let taken = path::choose(&cfg, sh, 1, Isa::Portable);
            assert_eq!(taken, ConvPath::Shifted, "{cfg:?}");
            check(&conv, &ramp((3, cfg.in_channels, 26, 25)));
        }
    }

    #[test]
    fn direct_kernel_equals_the_definition() {
        // Output widths that exercise every block shape and the leftovers.
        let cases = [
            (Conv2dConfig::new(3, 16, 3).padding(1), (28, 28)),
            (Conv2dConfig::new(8, 32, 3).padding(1).bias(true), (14, 14)),
            (Conv2dConfig::new(8, 16, 3).padding(1), (7, 9)),
            (Conv2dConfig::new(4, 16, 3).padding(2).dilation(2), (11, 33)),
            (Conv2dConfig::new(2, 32, 5).padding(1), (6, 5)),
            (Conv2dConfig::new(16, 32, 3).padding(1).stride(2), (28, 28)),
            (Conv2dConfig::new(6, 16, 3).padding(1).stride(2), (9, 13)),
            (Conv2dConfig::new(16, 32, 1).stride(2), (14, 14)),
            (Conv2dConfig::new(3, 16, 7).padding(3).stride(2), (20, 18)),
            // Grouped (RegNet's strided 3×3), group by group.
            (
                Conv2dConfig::new(48, 48, 3)
                    .padding(1)
                    .stride(2)
                    .groups(3)
                    .bias(true),
                (13, 11),
            ),
            (Conv2dConfig::new(8, 64, 3).padding(1).groups(2), (7, 9)),
            (
                Conv2dConfig {
                    kernel: [1, 3],
                    padding: [0, 1],
                    ..Conv2dConfig::new(5, 16, 1)
                },
                (3, 61),
            ),
        ];
        check_path(&cases, ConvPath::Direct);
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
            // Grouped (ResNeXt's and RegNet's 3×3), group by group.
            (
                Conv2dConfig::new(64, 64, 3).padding(1).groups(4).bias(true),
                (9, 14),
            ),
            (Conv2dConfig::new(32, 96, 3).padding(1).groups(2), (6, 7)),
            (
                Conv2dConfig {
                    padding: [0, 2],
                    ..Conv2dConfig::new(20, 16, 3)
                },
                (6, 11),
            ),
        ];
        check_path(&cases, ConvPath::Winograd);
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
            // Depthwise.
            (
                Conv2dConfig::new(8, 8, 5).padding(2).stride(2).groups(8),
                (11, 9),
            ),
            // Grouped image kernels.
            (Conv2dConfig::new(64, 64, 3).padding(1).groups(4), (9, 14)),
            (
                Conv2dConfig::new(48, 48, 3).padding(1).stride(2).groups(3),
                (13, 11),
            ),
        ];
        for ((cfg, (h, w)), isa) in cases
            .into_iter()
            .flat_map(|c| every_isa().into_iter().map(move |i| (c, i)))
        {
            let conv = filled(cfg);
            let x = ramp((3, cfg.in_channels, h, w)).mapv(|v| v + 2.0);
            let (y, got) = conv
                .run_with_moments_on(&x, None, &mut Probe::none(), isa)
                .unwrap();
            assert_eq!(y, conv.forward_on(isa, &x), "{cfg:?} {isa:?}");
            let (n, c, ho, wo) = y.dim();
            let want = channel_moments(y.as_slice().unwrap(), n, c, ho * wo);
            for (ch, ((gm, gv), (wm, wv))) in got.iter().zip(&want).enumerate() {
                assert!(
                    (gm - wm).abs() <= 1e-6 * wm.abs().max(1.0),
                    "{cfg:?} {isa:?} {ch}: mean {gm} {wm}"
                );
                assert!(
                    (gv - wv).abs() <= 1e-6 * wv.abs(),
                    "{cfg:?} {isa:?} {ch}: var {gv} {wv}"
                );
            }
        }
    }

    #[test]
    fn an_input_map_is_applied_as_the_input_is_read() {
        let cases = [
            // Winograd, the direct kernel (with padding), a GEMM path, depthwise.
            (Conv2dConfig::new(16, 32, 3).padding(1), (9, 13)),
            (Conv2dConfig::new(8, 16, 3).padding(1).stride(2), (9, 13)),
            (Conv2dConfig::new(80, 8, 3).padding(1), (12, 30)),
            (
                Conv2dConfig::new(8, 8, 3).padding(1).stride(2).groups(8),
                (9, 13),
            ),
            // Grouped image kernels: each group's map from its own channels.
            (Conv2dConfig::new(64, 64, 3).padding(1).groups(4), (9, 14)),
            (
                Conv2dConfig::new(48, 48, 3).padding(1).stride(2).groups(3),
                (13, 11),
            ),
        ];
        for ((cfg, (h, w)), isa) in cases
            .into_iter()
            .flat_map(|c| every_isa().into_iter().map(move |i| (c, i)))
        {
            let conv = filled(cfg);
            let x = ramp((2, cfg.in_channels, h, w));
            let c = cfg.in_channels;
            let map = ChannelMap {
                scale: (0..c).map(|i| 0.5 + i as f32 / c as f32).collect(),
                shift: (0..c).map(|i| i as f32 / c as f32 - 0.6).collect(),
                activation: crate::nn::Activation::Relu,
            };
            let mut mapped = x.clone();
            map.apply_in_place(&mut mapped);
            let want = conv
                .run_with_moments_on(&mapped, None, &mut Probe::none(), isa)
                .unwrap();
            let got = conv
                .run_with_moments_on(&x, Some(&map), &mut Probe::none(), isa)
                .unwrap();
            assert_eq!(got, want, "{cfg:?} {isa:?}");
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
