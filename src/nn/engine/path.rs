//! Which way a convolution call computes: one pure function of the configuration, the
//! call's shape and the instruction set.

use super::{Conv2dConfig, Shapes};
use crate::nn::kernels::{Isa, Kernels, LANES};

/// A way to compute a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConvPath {
    /// Winograd's F(2×2, 3×3), image by image, the epilogue fused into the stores.
    Winograd(Kernels),
    /// The direct kernel, image by image, the epilogue fused into the stores.
    Direct(Kernels),
    /// A 1×1 stride-1 convolution without padding: one product of the weights and the
    /// input (of one image, or of several laid side by side).
    Pointwise,
    /// A stride-1 convolution of one image as one product per kernel row, of shifted
    /// copies of the zero-padded input ([`super::gemm_paths`]).
    Shifted,
    /// One filter per channel, plane by plane ([`super::depthwise`]).
    Depthwise,
    /// Receptive fields laid out as columns (im2col), then one product per group.
    Im2col,
}

impl ConvPath {
    /// The image kernel's instruction set, when the path is an image kernel.
    pub(crate) fn kernels(self) -> Option<Kernels> {
        match self {
            ConvPath::Winograd(k) | ConvPath::Direct(k) => Some(k),
            _ => None,
        }
    }
}

/// Stride-1 convolutions whose padded output rows give at least this many columns use
/// shifted products instead of im2col.
const MIN_SHIFTED_COLUMNS: usize = 192;

/// Whether `c` is a 1×1 stride-1 convolution without padding (a plain product).
pub(crate) fn is_pointwise(c: &Conv2dConfig) -> bool {
    c.kernel == [1, 1] && c.stride == [1, 1] && c.padding == [0, 0]
}

/// The image kernel for `c` on `isa`, if one suits it: Winograd for 3×3 stride-1
/// convolutions of 16 to 64 channels per group (fewer input channels leave the
/// transforms too large a share, more make the transformed kernels too large to stay
/// in cache); the direct kernel for other convolutions with at most 64 input channels
/// per group (where GEMM is least efficient) but not plain products. Both need whole
/// blocks of 16 output channels per group; a grouped convolution (ResNeXt's and
/// RegNet's 3×3) runs group by group. The choice does not depend on the input's size.
pub(crate) fn image_kernel(c: &Conv2dConfig, isa: Isa) -> Option<ConvPath> {
    let kernels = isa.kernels()?;
    let (cg, og) = (c.in_channels / c.groups, c.out_channels / c.groups);
    if !og.is_multiple_of(LANES) {
        return None;
    }
    let winograd = c.kernel == [3, 3]
        && c.stride == [1, 1]
        && c.dilation == [1, 1]
        && (16..=64).contains(&cg)
        && og <= 64;
    if winograd {
        Some(ConvPath::Winograd(kernels))
    } else if cg <= 64 && !(c.kernel == [1, 1] && c.stride == [1, 1]) {
        Some(ConvPath::Direct(kernels))
    } else {
        None
    }
}

/// The path of a call of `c` on `images` images of `shape` at a time (one, unless
/// several images share one product) on `isa`.
pub(crate) fn choose(c: &Conv2dConfig, shape: Shapes, images: usize, isa: Isa) -> ConvPath {
    if let Some(path) = image_kernel(c, isa) {
        return path;
    }
    let shifted_columns = shape.ho * (shape.w + 2 * c.padding[1]);
    if super::depthwise::is_depthwise(c) {
        ConvPath::Depthwise
    } else if is_pointwise(c) {
        ConvPath::Pointwise
    } else if images == 1
        && c.stride == [1, 1]
        && c.kernel != [1, 1]
        && shifted_columns >= MIN_SHIFTED_COLUMNS
    {
        ConvPath::Shifted
    } else {
        ConvPath::Im2col
    }
}

/// Whether the Winograd kernel computes `c` (for tests that check the choice).
#[cfg(test)]
pub(crate) fn winograd_computes(c: &Conv2dConfig, shape: Shapes) -> bool {
    let g = c.geometry([shape.h, shape.w], [shape.ho, shape.wo]);
    crate::nn::kernels::winograd::computes(&g.group())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::kernels::Scalar;

    #[test]
    fn the_choice_follows_the_configuration_the_shape_and_the_instruction_set() {
        let kernels = Isa::Kernels(Kernels::Scalar(Scalar::detect()));
        let big = Shapes {
            h: 28,
            w: 28,
            ho: 28,
            wo: 28,
        };
        let small = Shapes {
            h: 4,
            w: 4,
            ho: 4,
            wo: 4,
        };
        let k = Kernels::Scalar(Scalar::detect());
        let conv3 = Conv2dConfig::new(16, 32, 3).padding(1);
        assert_eq!(choose(&conv3, big, 1, kernels), ConvPath::Winograd(k));
        assert!(winograd_computes(&conv3, big));
        assert_eq!(choose(&conv3, big, 1, Isa::Portable), ConvPath::Shifted);
        assert_eq!(choose(&conv3, small, 1, Isa::Portable), ConvPath::Im2col);
        assert_eq!(choose(&conv3, big, 2, Isa::Portable), ConvPath::Im2col);
        let stem = Conv2dConfig::new(3, 64, 7).stride(2).padding(3);
        assert_eq!(choose(&stem, big, 1, kernels), ConvPath::Direct(k));
        let wide = Conv2dConfig::new(128, 128, 3).padding(1);
        assert_eq!(choose(&wide, big, 1, kernels), ConvPath::Shifted);
        let pointwise = Conv2dConfig::new(64, 256, 1);
        assert_eq!(choose(&pointwise, big, 1, kernels), ConvPath::Pointwise);
        let grouped = Conv2dConfig::new(32, 32, 3).padding(1).groups(2);
        assert_eq!(choose(&grouped, big, 1, kernels), ConvPath::Winograd(k));
        let grouped = Conv2dConfig::new(64, 64, 3).padding(1).stride(2).groups(4);
        assert_eq!(choose(&grouped, big, 1, kernels), ConvPath::Direct(k));
        let narrow_groups = Conv2dConfig::new(32, 32, 3).padding(1).groups(4);
        assert_eq!(choose(&narrow_groups, big, 1, kernels), ConvPath::Shifted);
        let odd = Conv2dConfig::new(16, 24, 3).padding(1);
        assert_eq!(choose(&odd, big, 1, kernels), ConvPath::Shifted);
        let depthwise = Conv2dConfig::new(32, 32, 5).stride(2).padding(2).groups(32);
        assert_eq!(choose(&depthwise, big, 1, kernels), ConvPath::Depthwise);
        assert_eq!(
            choose(&depthwise, small, 4, Isa::Portable),
            ConvPath::Depthwise
        );
    }
}
