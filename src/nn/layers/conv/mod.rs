//! 2-d convolution, NCHW: the layer. The engine ([`crate::nn::engine`]) computes it.

use super::{
    check_channels, emit4, emit4_at, layer_context, window_output_len, ParamTensor, Tensor4,
};
use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::layer::{ConvWindow, LayerKind, Probe, Site};
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
    pub(crate) fn maps_input_as_read(&self, exec: Exec) -> bool {
        self.engine().maps_input_as_read(Isa::of(exec))
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
        self.convolve(x, None, probe, epilogue, None, Isa::of(probe.exec()))
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
        self.run_with_moments_on(x, input, probe, Isa::of(probe.exec()))
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
        let (n, _, h, w) = x.dim();
        let c = &self.config;
        // How the convolution reads `x`: its input tap carries it, asked and shown alike.
        let window = Some(ConvWindow {
            kernel: c.kernel,
            stride: c.stride,
            padding: c.padding,
            dilation: c.dilation,
            groups: c.groups,
            size: [h, w],
        });
        // A pruned convolution may run on the sparse kernel, which reads its input as
        // it is: a map is applied to a copy first.
        let engine = self.engine();
        let sparse = engine.nchw_sparse(isa, probe.exec().sparse(), [h, w]);
        if let Some(map) = input {
            let as_read = engine.maps_input_as_read(isa) && sparse.is_none();
            if !as_read || probe.wants_at(LayerKind::Conv, Site::Input, window) {
                let mut mapped = overwritten(x.dim());
                mapped.assign(x);
                map.apply_in_place(&mut mapped, probe.exec().threads());
                let y = self.convolve(&mapped, None, probe, epilogue, moments, isa);
                recycle(mapped);
                return y;
            }
        }
        emit4_at(probe, LayerKind::Conv, Site::Input, window, x);
        let (ho, wo) = self.checked_output_size(x.shape(), probe)?;
        let x = x.as_standard_layout();
        let mut y = overwritten((n, self.config.out_channels, ho, wo));
        let (x, shape) = (
            x.as_slice().expect("standard layout"),
            Shapes { h, w, ho, wo },
        );
        let ys = y.as_slice_mut().expect("fresh array");
        let threads = probe.exec().threads();
        let mut moments = moments;
        if let Some(sparse) = sparse {
            let batch = Batch { x, y: ys, n, shape };
            let m = moments.as_deref_mut();
            if engine.run_sparse(sparse, batch, epilogue, m, threads) {
                return Ok(y);
            }
        }
        let batch = Batch { x, y: ys, n, shape };
        engine.run(batch, input, epilogue, moments, isa, threads);
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
        let exec = probe.exec();
        let (y, kernel) = engine.run_blocked(kind, x, [ho, wo], epilogue, residual, kernels, exec);
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
mod tests;
