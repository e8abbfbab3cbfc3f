//! Model families in torchvision's layout: each a folder with its network, presets
//! whose parameter counts equal torchvision's, and the inference of its shape from a
//! state dict's keys.
//!
//! [`Model`] holds a network of any of them, its family detected from a checkpoint's
//! keys or named ([`Arch`]):
//!
//! - [`ResNet`]: ResNet, ResNeXt and Wide ResNet ([`ResNetConfig`]);
//! - [`EfficientNet`] B0–B7 ([`EfficientNetConfig`]);
//! - [`MobileNetV2`] and [`MobileNetV3`] ([`MobileNetV2Config`], [`MobileNetV3Config`]);
//! - [`RegNet`]: RegNet X and Y ([`RegNetConfig`]);
//! - [`Vgg`]: VGG with batch norm ([`VggConfig`]).

/// `with_in_channels` and `with_num_classes` for a config with those two fields.
macro_rules! channel_and_class_builders {
    () => {
        /// The same network for images of `c` channels.
        pub fn with_in_channels(mut self, c: usize) -> Self {
            self.in_channels = c;
            self
        }

        /// The same network with `n` outputs.
        pub fn with_num_classes(mut self, n: usize) -> Self {
            self.num_classes = n;
            self
        }
    };
}

mod classifier;
mod efficientnet;
mod keys;
mod mobilenet;
mod model;
mod regnet;
mod resnet;
mod vgg;

pub use efficientnet::{EfficientNet, EfficientNetConfig};
pub use mobilenet::{MobileBlock, MobileNetV2, MobileNetV2Config, MobileNetV3};
pub use mobilenet::{MobileNetV3Config, MobileNetV3Variant, MOBILENET_V3_BN_EPS};
pub use model::{Arch, Model};
pub use regnet::{RegNet, RegNetConfig, RegNetStage};
pub use resnet::{BlockKind, ResNet, ResNetConfig, Stem};
pub use vgg::{Vgg, VggConfig, VggLayer};
