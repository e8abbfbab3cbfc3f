//! The shape of a VGG with batch norm, its presets, and its inference from keys.

use crate::error::{Error, Result};

pub(super) const FAMILY: &str = "VGG";

/// One entry of VGG's `features`: a 3×3 convolution of `width` outputs (with its
/// batch norm and ReLU, three indices) or a 2×2 max pool (one index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VggLayer {
    /// `Conv2d(c, width, 3, padding=1)` → `BatchNorm2d` → ReLU.
    Conv(usize),
    /// `MaxPool2d(2, 2)`.
    Pool,
}

/// Everything that determines a VGG-BN's layers and parameter shapes: torchvision's
/// `vgg11_bn` … `vgg19_bn`, or any other sequence of convolutions and pools.
///
/// ```
/// use reflow::models::VggConfig;
///
/// let cfg = VggConfig::vgg16_bn();
/// assert_eq!(cfg.num_parameters(), 138_365_992);
/// assert_eq!(cfg.with_num_classes(10).with_hidden(512).num_classes, 10);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VggConfig {
    /// `features`, in order.
    pub features: Vec<VggLayer>,
    /// Channels of the input images.
    pub in_channels: usize,
    /// The output size of the adaptive average pool before the classifier (7: a
    /// `7 × 7` grid).
    pub pool: usize,
    /// Width of the classifier's two hidden linear layers (4096).
    pub hidden: usize,
    /// Outputs of the final linear layer.
    pub num_classes: usize,
}

/// torchvision's configurations "A", "B", "D" and "E"; 0 is a pool.
const VGG11: &[usize] = &[64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0];
const VGG13: &[usize] = &[
    64, 64, 0, 128, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0,
];
const VGG16: &[usize] = &[
    64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
];
const VGG19: &[usize] = &[
    64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512, 512, 0,
];

impl VggConfig {
    /// A network with `features` (`0` standing for a pool), 3 input channels, a
    /// `7 × 7` pool, 4096-wide hidden layers and 1000 classes.
    pub fn from_widths(widths: &[usize]) -> Self {
        VggConfig {
            features: widths
                .iter()
                .map(|&w| {
                    if w == 0 {
                        VggLayer::Pool
                    } else {
                        VggLayer::Conv(w)
                    }
                })
                .collect(),
            in_channels: 3,
            pool: 7,
            hidden: 4096,
            num_classes: 1000,
        }
    }

    /// torchvision `vgg11_bn`.
    pub fn vgg11_bn() -> Self {
        Self::from_widths(VGG11)
    }

    /// torchvision `vgg13_bn`.
    pub fn vgg13_bn() -> Self {
        Self::from_widths(VGG13)
    }

    /// torchvision `vgg16_bn`.
    pub fn vgg16_bn() -> Self {
        Self::from_widths(VGG16)
    }

    /// torchvision `vgg19_bn`.
    pub fn vgg19_bn() -> Self {
        Self::from_widths(VGG19)
    }

    /// The preset of a torchvision name (`vgg11_bn`, ..., `vgg19_bn`).
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "vgg11_bn" => Self::vgg11_bn(),
            "vgg13_bn" => Self::vgg13_bn(),
            "vgg16_bn" => Self::vgg16_bn(),
            "vgg19_bn" => Self::vgg19_bn(),
            _ => return None,
        })
    }

    channel_and_class_builders!();

    /// The same network with hidden linear layers of `width`.
    pub fn with_hidden(mut self, width: usize) -> Self {
        self.hidden = width;
        self
    }

    /// Channels of the last convolution: what the pool and classifier see.
    pub fn out_channels(&self) -> usize {
        self.features
            .iter()
            .rev()
            .find_map(|l| match l {
                VggLayer::Conv(w) => Some(*w),
                VggLayer::Pool => None,
            })
            .unwrap_or(self.in_channels)
    }

    /// Checks that every size is positive and there is a convolution.
    pub fn validate(&self) -> Result<()> {
        let sizes = [self.in_channels, self.pool, self.hidden, self.num_classes];
        if sizes.contains(&0) || self.features.contains(&VggLayer::Conv(0)) {
            return Err(Error::invalid("VGG config", "every size must be positive"));
        }
        if !self.features.iter().any(|l| matches!(l, VggLayer::Conv(_))) {
            return Err(Error::invalid(
                "VGG config",
                "no convolution in the features",
            ));
        }
        Ok(())
    }

    /// Number of parameters, as PyTorch counts them (without the BN running
    /// statistics).
    pub fn num_parameters(&self) -> usize {
        let mut c = self.in_channels;
        let mut n = 0;
        for layer in &self.features {
            if let VggLayer::Conv(w) = *layer {
                n += w * c * 9 + w + 2 * w;
                c = w;
            }
        }
        let flat = c * self.pool * self.pool;
        n + flat * self.hidden
            + self.hidden
            + self.hidden * self.hidden
            + self.hidden
            + self.hidden * self.num_classes
            + self.num_classes
    }

}
