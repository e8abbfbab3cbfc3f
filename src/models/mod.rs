//! Model families in torchvision's layout: each a folder with its network, presets
//! whose parameter counts equal torchvision's, and the inference of its shape from a
//! state dict's keys.
//!
//! [`Model`] holds a network of any of them, its family detected from a checkpoint's
//! keys or named ([`Arch`]); each family is a [`Family`] registered in [`FAMILIES`]:
//!
//! - [`ResNet`]: ResNet, ResNeXt and Wide ResNet ([`ResNetConfig`]);
//! - [`EfficientNet`] B0–B7 ([`EfficientNetConfig`]);
//! - [`MobileNetV2`] and [`MobileNetV3`] ([`MobileNetV2Config`], [`MobileNetV3Config`]);
//! - [`RegNet`]: RegNet X and Y ([`RegNetConfig`]);
//! - [`Vgg`]: VGG with batch norm ([`VggConfig`]);
//! - [`ShuffleNetV2`] ([`ShuffleNetV2Config`]).
//!
//! Each network is a [`Net`] of its config, which implements [`Architecture`].

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
mod family;
mod keys;
mod model;
mod network;

pub use classifier::Classifier;
pub use family::{About, Family, FamilyNetwork};
pub use model::{Arch, Model};
pub use network::{Architecture, FamilyOf, Net};

/// Declares each family's folder, re-exports its public items and lists its
/// families (one a config type, see [`Architecture`]) in [`FAMILIES`].
macro_rules! families {
    ($($folder:ident: $($config:ident),+;)+) => {
        $(
            mod $folder;
            pub use $folder::*;
        )+

        /// Every family reflow reads, in the order [`Arch::AUTO`] tries them on a
        /// state dict's keys. Adding a family: its folder and a line here.
        pub static FAMILIES: &[&dyn Family] = &[$($(&FamilyOf::<$folder::$config>::NEW),+),+];
    };
}

families! {
    resnet: ResNetConfig;
    regnet: RegNetConfig;
    mobilenet: MobileNetV2Config, MobileNetV3Config;
    efficientnet: EfficientNetConfig;
    vgg: VggConfig;
    shufflenet: ShuffleNetV2Config;
}
