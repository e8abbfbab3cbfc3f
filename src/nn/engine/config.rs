//! The hyper-parameters of a 2-d convolution.

use crate::error::{Error, Result};
use crate::nn::kernels::geometry::Geometry;

/// The hyper-parameters of a [`Conv2d`](crate::nn::Conv2d), with PyTorch's meaning and defaults.
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

    /// The kernels' view of it on an input of `size` giving `out_size`.
    pub(crate) fn geometry(&self, size: [usize; 2], out_size: [usize; 2]) -> Geometry {
        Geometry {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            groups: self.groups,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            size,
            out_size,
        }
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

/// The input and output sizes of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shapes {
    pub h: usize,
    pub w: usize,
    pub ho: usize,
    pub wo: usize,
}
