//! Pooling and reshaping: max pooling, global average pooling, flattening.

use super::{emit4, layer_context, window_output_len, Tensor2, Tensor4};
use crate::error::{Error, Result};
use crate::layer::{LayerKind, Probe, Site};
use ndarray::{Array4, Zip};
use rayon::prelude::*;

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

    fn run(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        emit4(probe, LayerKind::Pool, Site::Input, x);
        let (n, c, h, w) = x.dim();
        let out = |len, a: usize| {
            window_output_len(
                len,
                self.kernel[a],
                self.stride[a],
                self.padding[a],
                self.dilation[a],
            )
        };
        let (Some(ho), Some(wo)) = (out(h, 0), out(w, 1)) else {
            return Err(Error::shape(
                layer_context(probe),
                format!("spatial size of at least the window {:?}", self.kernel),
                x.shape(),
            ));
        };
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

plain_layer!(MaxPool2d, Tensor4, Tensor4, stateless);

/// Averages each channel over its whole plane: PyTorch's `nn.AdaptiveAvgPool2d(1)`.
/// Output `[N, C, 1, 1]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdaptiveAvgPool2d;

impl AdaptiveAvgPool2d {
    fn run(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        let (n, c, h, w) = x.dim();
        if h * w == 0 {
            return Err(Error::shape(
                layer_context(probe),
                "[_, _, H, W] with H, W > 0",
                x.shape(),
            ));
        }
        let x = x.as_standard_layout();
        let means: Vec<f32> = x
            .as_slice()
            .expect("standard layout")
            .par_chunks(h * w)
            .map(|plane| (plane.iter().map(|&v| v as f64).sum::<f64>() / (h * w) as f64) as f32)
            .collect();
        let y = Array4::from_shape_vec((n, c, 1, 1), means).expect("n·c values");
        emit4(probe, LayerKind::Pool, Site::Output, &y);
        Ok(y)
    }
}

plain_layer!(AdaptiveAvgPool2d, Tensor4, Tensor4, stateless);

impl AdaptiveAvgPool2d {
    /// Pools and flattens in one step: `[N, C, H, W]` → `[N, C]`.
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
