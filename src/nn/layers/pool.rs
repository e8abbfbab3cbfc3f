//! Pooling and reshaping: max pooling, global average pooling, flattening.

use super::{emit4, layer_context, window_output_len, Tensor2, Tensor4};
use crate::error::{Error, Result};
use crate::layer::{LayerKind, Probe, Site};
use crate::nn::blocked::{BlockedLayer, BlockedTensor, Pass, Value};
use crate::nn::kernels::blocked::Blocked;
use crate::nn::kernels::blocked_pool::max_pool;
use crate::nn::kernels::geometry::Geometry;
use crate::nn::AnyTensor;
use ndarray::{Array4, Zip};
use rayon::prelude::*;
use std::borrow::Cow;

/// 2-d max pooling: PyTorch's `nn.MaxPool2d` (floor mode). Padding never wins: it acts
/// as −∞.
///
/// ```
/// use reflow::layer::Layer;
/// use reflow::nn::MaxPool2d;
/// use ndarray::Array4;
///
/// let pool = MaxPool2d::new(3, 2, 1)?; // the ImageNet ResNet stem's pool
/// assert_eq!(pool.forward(&Array4::zeros((1, 64, 112, 112)))?.dim(), (1, 64, 56, 56));
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
}

impl MaxPool2d {
    /// A square window of `kernel` with the given stride and padding, dilation 1.
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Result<Self> {
        Self::with_dilation([kernel; 2], [stride; 2], [padding; 2], [1, 1])
    }

    /// Any window. As in PyTorch, padding may be at most half the kernel.
    pub fn with_dilation(
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
    ) -> Result<Self> {
        for a in 0..2 {
            if kernel[a] == 0 || stride[a] == 0 || dilation[a] == 0 {
                return Err(Error::invalid(
                    "max_pool2d",
                    "kernel, stride and dilation must be positive",
                ));
            }
            if padding[a] > kernel[a] / 2 {
                return Err(Error::invalid(
                    "max_pool2d padding",
                    format!("{padding:?} exceeds half the kernel {kernel:?}"),
                ));
            }
        }
        Ok(MaxPool2d {
            kernel,
            stride,
            padding,
            dilation,
        })
    }

    /// The output size for an input of NCHW shape `dims`; an error naming the running
    /// layer of `probe` when the window does not fit.
    fn output_size(&self, dims: &[usize], probe: &Probe<'_>) -> Result<(usize, usize)> {
        let out = |len, a: usize| {
            window_output_len(
                len,
                self.kernel[a],
                self.stride[a],
                self.padding[a],
                self.dilation[a],
            )
        };
        match (out(dims[2], 0), out(dims[3], 1)) {
            (Some(ho), Some(wo)) => Ok((ho, wo)),
            _ => Err(Error::shape(
                layer_context(probe),
                format!("spatial size of at least the window {:?}", self.kernel),
                dims,
            )),
        }
    }

    fn run(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        emit4(probe, LayerKind::Pool, Site::Input, x);
        let (n, c, h, w) = x.dim();
        let (ho, wo) = self.output_size(x.shape(), probe)?;
        let mut y = crate::nn::runtime::overwritten((n, c, ho, wo));
        Zip::from(y.outer_iter_mut())
            .and(x.outer_iter())
            .par_for_each(|mut yi, xi| {
                for (mut yp, xp) in yi.outer_iter_mut().zip(xi.outer_iter()) {
                    for ((oi, oj), v) in yp.indexed_iter_mut() {
                        let mut best = f32::NEG_INFINITY;
                        for ki in 0..self.kernel[0] {
                            let ih = (oi * self.stride[0] + ki * self.dilation[0]) as isize
                                - self.padding[0] as isize;
                            if ih < 0 || ih >= h as isize {
                                continue;
                            }
                            for kj in 0..self.kernel[1] {
                                let iw = (oj * self.stride[1] + kj * self.dilation[1]) as isize
                                    - self.padding[1] as isize;
                                if iw >= 0 && iw < w as isize {
                                    let s = xp[[ih as usize, iw as usize]];
                                    // NaN propagates, as in PyTorch.
                                    if s > best || s.is_nan() {
                                        best = s;
                                    }
                                }
                            }
                        }
                        *v = best;
                    }
                }
            });
        emit4(probe, LayerKind::Pool, Site::Output, &y);
        Ok(y)
    }
}

plain_layer!(MaxPool2d, Tensor4, Tensor4, stateless, blocked);

impl MaxPool2d {
    /// Without dilation, max pooling has a blocked form.
    fn blocked_form(&self) -> Option<&dyn BlockedLayer> {
        (self.dilation == [1, 1]).then_some(self as &dyn BlockedLayer)
    }
}

impl BlockedLayer for MaxPool2d {
    fn forward_blocked<'a>(&self, x: Value<'a>, pass: &mut Pass<'_, '_>) -> Result<Value<'a>> {
        let x = x.into_blocked(pass)?;
        let [n, c, h, w] = x.dims();
        let (ho, wo) = self.output_size(&x.dims(), pass.probe())?;
        let g = Geometry::window(c, self.kernel, self.stride, self.padding, [h, w], [ho, wo]);
        let mut y = BlockedTensor::overwritten(Blocked { n, c, h: ho, w: wo });
        let threads = pass.threads();
        max_pool(
            pass.kernels(),
            x.values(),
            x.blocked_shape(),
            g,
            y.values_mut(),
            threads,
        );
        Ok(Value::Blocked(Cow::Owned(y)))
    }
}

/// Averages each channel over windows that tile its plane into an `oh × ow` grid:
/// PyTorch's `nn.AdaptiveAvgPool2d((oh, ow))`. Output row `i` averages input rows
/// `⌊i·H/oh⌋ .. ⌈(i+1)·H/oh⌉` (the windows overlap when `oh` does not divide `H`),
/// and likewise along the columns. [`AdaptiveAvgPool2d::global`] (`1 × 1`) is the
/// global average pooling before a classifier; VGG pools to `7 × 7`, which repeats
/// values when the plane is smaller.
///
/// ```
/// use reflow::layer::Layer;
/// use reflow::nn::AdaptiveAvgPool2d;
/// use ndarray::Array4;
///
/// let x = Array4::from_shape_fn((1, 1, 3, 3), |(_, _, h, w)| (h * 3 + w) as f32);
/// let y = AdaptiveAvgPool2d::new(2, 2)?.forward(&x)?;
/// assert_eq!(y[[0, 0, 0, 0]], (0.0 + 1.0 + 3.0 + 4.0) / 4.0);
/// assert_eq!(AdaptiveAvgPool2d::global().forward(&x)?[[0, 0, 0, 0]], 4.0);
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveAvgPool2d {
    output: [usize; 2],
}

impl Default for AdaptiveAvgPool2d {
    fn default() -> Self {
        Self::global()
    }
}

/// The window of output index `i` of `out` along an axis of `len` values.
fn window(i: usize, out: usize, len: usize) -> std::ops::Range<usize> {
    (i * len / out)..((i + 1) * len).div_ceil(out)
}

impl AdaptiveAvgPool2d {
    /// Pools to `oh × ow`; both must be positive.
    pub fn new(oh: usize, ow: usize) -> Result<Self> {
        if oh == 0 || ow == 0 {
            return Err(Error::invalid(
                "adaptive_avg_pool2d",
                format!("output size {oh}×{ow} must be positive"),
            ));
        }
        Ok(AdaptiveAvgPool2d { output: [oh, ow] })
    }

    /// Global average pooling: `1 × 1`.
    pub fn global() -> Self {
        AdaptiveAvgPool2d { output: [1, 1] }
    }

    /// The output size `[oh, ow]`.
    pub fn output_size(&self) -> [usize; 2] {
        self.output
    }

    fn run(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        let (n, c, h, w) = x.dim();
        if h * w == 0 {
            return Err(Error::shape(
                layer_context(probe),
                "[_, _, H, W] with H, W > 0",
                x.shape(),
            ));
        }
        emit4(probe, LayerKind::Pool, Site::Input, x);
        let [oh, ow] = self.output;
        let x = x.as_standard_layout();
        let mut y = Array4::<f32>::zeros((n, c, oh, ow));
        let ys = y.as_slice_mut().expect("fresh array");
        let planes = x.as_slice().expect("standard layout").par_chunks(h * w);
        ys.par_chunks_mut(oh * ow)
            .zip(planes)
            .for_each(|(out, plane)| {
                for i in 0..oh {
                    let rows = window(i, oh, h);
                    for j in 0..ow {
                        let cols = window(j, ow, w);
                        let sum: f64 = rows
                            .clone()
                            .map(|r| {
                                plane[r * w + cols.start..r * w + cols.end]
                                    .iter()
                                    .map(|&v| v as f64)
                                    .sum::<f64>()
                            })
                            .sum();
                        out[i * ow + j] = (sum / (rows.len() * cols.len()) as f64) as f32;
                    }
                }
            });
        emit4(probe, LayerKind::Pool, Site::Output, &y);
        Ok(y)
    }
}

plain_layer!(AdaptiveAvgPool2d, Tensor4, Tensor4, stateless, blocked);

impl AdaptiveAvgPool2d {
    /// Global pooling has a blocked form (it reads blocks and gives `[N, C, 1, 1]`).
    fn blocked_form(&self) -> Option<&dyn BlockedLayer> {
        (self.output == [1, 1]).then_some(self as &dyn BlockedLayer)
    }
}

impl BlockedLayer for AdaptiveAvgPool2d {
    fn forward_blocked<'a>(&self, x: Value<'a>, pass: &mut Pass<'_, '_>) -> Result<Value<'a>> {
        let x = x.into_blocked(pass)?;
        let [n, c, h, w] = x.dims();
        if h * w == 0 {
            return Err(Error::shape(
                layer_context(pass.probe()),
                "[_, _, H, W] with H, W > 0",
                &x.dims()[..],
            ));
        }
        let means = x.channel_means();
        let y = Tensor4::from_shape_vec((n, c, 1, 1), means).expect("n·c means");
        Ok(Value::Plain(AnyTensor::Nchw(y)))
    }
}

impl AdaptiveAvgPool2d {
    /// Pools and flattens in one step: `[N, C, H, W]` → `[N, C·oh·ow]`.
    pub fn pool_flat(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor2> {
        let y = self.run(x, probe)?;
        Flatten.run(&y, probe)
    }
}

/// Flattens all but the batch axis: `[N, C, H, W]` → `[N, C·H·W]` (PyTorch's
/// `nn.Flatten`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flatten;

impl Flatten {
    fn run(&self, x: &Tensor4, _probe: &mut Probe<'_>) -> Result<Tensor2> {
        let (n, c, h, w) = x.dim();
        Ok(x.as_standard_layout()
            .into_owned()
            .into_shape_with_order((n, c * h * w))
            .expect("same number of elements"))
    }
}

plain_layer!(Flatten, Tensor4, Tensor2, stateless);
