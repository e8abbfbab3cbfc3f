//! The ResNet / ResNeXt / Wide ResNet family in torchvision's layout.
//!
//! A [`ResNet`] is described by a [`ResNetConfig`]: block kind, blocks per stage, stage
//! widths, stem kind and width, groups and width per group, input channels and classes.
//! The presets ([`ResNetConfig::resnet50`], [`ResNetConfig::cifar_resnet`], ...) match
//! torchvision's parameter counts exactly, and [`ResNetConfig::infer`] reads every field
//! but the stem kind off a state dict's keys and shapes.

mod config;
mod infer;
mod resnet;

pub use config::{BlockKind, ResNetConfig, Stem};
pub use resnet::ResNet;
