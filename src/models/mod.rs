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
mod family;
mod keys;
mod model;

pub use family::{Family, FamilyNetwork};
pub use model::{Arch, Model};

/// Declares each family's folder, re-exports its public items and lists its
/// [`Family`] types in [`FAMILIES`].
macro_rules! families {
    ($($folder:ident: $($family:ident),+;)+) => {
        $(
            mod $folder;
            pub use $folder::*;
        )+

        /// Every family reflow reads, in the order [`Arch::AUTO`] tries them on a
        /// state dict's keys. Adding a family: its folder and a line here.
        pub static FAMILIES: &[&dyn Family] = &[$($(&$folder::$family),+),+];
    };
}

families! {
    resnet: ResNetFamily;
    regnet: RegNetFamily;
    mobilenet: MobileNetV2Family, MobileNetV3Family;
    efficientnet: EfficientNetFamily;
    vgg: VggFamily;
    shufflenet: ShuffleNetV2Family;
}
