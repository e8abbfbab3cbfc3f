//! MobileNetV2 and MobileNetV3 in torchvision's layout, and the inverted residual
//! block they share with EfficientNet.

pub(crate) mod block;
mod v2;
mod v3;

pub use block::MobileBlock;
pub use v2::{MobileNetV2, MobileNetV2Config};
pub use v3::{MobileNetV3, MobileNetV3Config, MobileNetV3Variant};
pub use v3::MOBILENET_V3_BN_EPS;
