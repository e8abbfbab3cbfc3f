//! Model families in torchvision's layout: each a folder with its network, presets
//! whose parameter counts equal torchvision's, and the inference of its shape from a
//! state dict's keys.
//!
//! - [`ResNet`]: ResNet, ResNeXt and Wide ResNet ([`ResNetConfig`]);
//! - [`RegNet`]: RegNet X and Y ([`RegNetConfig`]);
//! - [`Vgg`]: VGG with batch norm ([`VggConfig`]).

mod classifier;
mod keys;
mod regnet;
mod resnet;
mod vgg;

pub use regnet::{RegNet, RegNetConfig, RegNetStage};
pub use resnet::{BlockKind, ResNet, ResNetConfig, Stem};
pub use vgg::{Vgg, VggConfig, VggLayer};
