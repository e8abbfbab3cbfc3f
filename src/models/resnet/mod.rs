//! The ResNet / ResNeXt / Wide ResNet family in torchvision's layout.
//!
//! A [`ResNet`] is described by a [`ResNetConfig`]: block kind, blocks per stage, stage
//! widths, stem kind and width, groups and width per group, input channels and classes.
//! The presets ([`ResNetConfig::resnet50`], [`ResNetConfig::cifar_resnet`], ...) match
//! torchvision's parameter counts exactly, and [`ResNetConfig::infer`] reads every field
//! but the stem kind off a state dict's keys and shapes.

mod config;
mod infer;

pub use config::{BlockKind, ResNetConfig, Stem};

use super::classifier::{family_network, Classifier};
use super::{Family, FamilyNetwork, Model};
use crate::error::Result;
use crate::nn::{Activation, AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, ConvBn};
use crate::nn::{Flatten, Linear, MaxPool2d, Residual, Sequential};
use crate::prune::{ChannelCoupling, ChannelPrunable, ChannelScope, SkippedConv};
use crate::state_dict::StateDict;
use std::path::Path;

/// PyTorch's default batch-norm ε.
const BN_EPS: f32 = 1e-5;

/// A ResNet, ResNeXt or Wide ResNet with torchvision's module names, so that its
/// parameters are named exactly as in a torchvision `state_dict`.
///
/// Input `[N, in_channels, H, W]`, output logits `[N, num_classes]`. An unobserved
/// eval pass of a large batch runs in micro-batches, each through the whole network
/// while its activations stay in a core's cache (see [`Schedule`](crate::layer::Schedule)).
///
/// ```
/// use reflow::layer::{count_parameters, Layer};
/// use reflow::models::{ResNet, ResNetConfig};
/// use ndarray::Array4;
///
/// let net = ResNet::new(ResNetConfig::cifar_resnet(20)?.with_in_channels(1))?;
/// assert_eq!(count_parameters(&net), 272_186);
/// let logits = net.forward(&Array4::zeros((2, 1, 28, 28)))?;
/// assert_eq!(logits.dim(), (2, 10));
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug)]
pub struct ResNet {
    config: ResNetConfig,
    /// `conv1` → `bn1` → ReLU (→ `maxpool`), `layer1`, `layer2`, ... (each a chain of
    /// residual blocks named `0`, `1`, ...), `avgpool`, `fc`.
    net: Classifier,
}

family_network!(ResNet, ResNetConfig);

impl ResNet {
    /// Builds the network with zero weights, γ = 1, β = 0 and running statistics
    /// (0, 1); fill it from a checkpoint with [`StateDict::load_into`], or use
    /// [`ResNet::from_state_dict`].
    pub fn new(config: ResNetConfig) -> Result<Self> {
        config.validate()?;
        let k = config.stem.kernel();
        let stride = if config.stem == Stem::Imagenet { 2 } else { 1 };
        let stem = unit(
            Conv2dConfig::new(config.in_channels, config.stem_width, k)
                .stride(stride)
                .padding(k / 2),
            "conv1",
            "bn1",
            true,
        )?;
        let mut net = Sequential::new().push("", stem);
        if config.stem == Stem::Imagenet {
            net = net.push("maxpool", MaxPool2d::new(3, 2, 1)?);
        }
        let mut inp = config.stem_width;
        for (s, (&blocks, &planes)) in config.layers.iter().zip(&config.planes).enumerate() {
            let mut stage = Sequential::new();
            for b in 0..blocks {
                let stride = if b == 0 {
                    ResNetConfig::stage_stride(s)
                } else {
                    1
                };
                stage = stage.push(b.to_string(), block(&config, inp, (s, b), stride)?);
                inp = config.stage_out(planes);
            }
            net = net.push(format!("layer{}", s + 1), stage);
        }
        let net = net
            .push("avgpool", AdaptiveAvgPool2d::global())
            .push("flatten", Flatten)
            .push("fc", Linear::new(inp, config.num_classes, true));
        Ok(ResNet {
            net: Classifier {
                family: "ResNet",
                in_channels: config.in_channels,
                classes: config.num_classes,
                stem: (config.stem_width, stride),
                net,
            },
            config,
        })
    }

    /// Builds the network a torchvision-layout state dict describes (see
    /// [`ResNetConfig::infer`]) and loads it strictly.
    pub fn from_state_dict(state: &StateDict, stem: Stem) -> Result<Self> {
        let mut net = ResNet::new(ResNetConfig::infer(state, stem)?)?;
        state.load_into(&mut net)?;
        Ok(net)
    }

    /// Reads a safetensors checkpoint in torchvision layout and builds the network it
    /// describes.
    pub fn load(path: impl AsRef<Path>, stem: Stem) -> Result<Self> {
        Self::from_state_dict(&StateDict::read_safetensors(path)?, stem)
    }
}

impl ChannelPrunable for ResNet {
    /// In every block, `conv1` (→ `bn1` → `conv2`) and, in a bottleneck, `conv2`
    /// (→ `bn2` → `conv3`): the convolutions whose outputs stay inside the residual
    /// branch. In a grouped bottleneck (ResNeXt) both are skipped: their channels
    /// feed, or are, a grouped convolution's.
    fn channel_scope(&self) -> ChannelScope {
        let cfg = &self.config;
        let mut scope = ChannelScope::default();
        for (s, &blocks) in cfg.layers.iter().enumerate() {
            for b in 0..blocks {
                let at = |m: &str| format!("layer{}.{b}.{m}", s + 1);
                match (cfg.block, cfg.groups) {
                    (BlockKind::Basic, _) => scope.couplings.push(ChannelCoupling::new(
                        at("conv1"),
                        at("bn1"),
                        at("conv2"),
                    )),
                    (BlockKind::Bottleneck, 1) => scope.couplings.extend([
                        ChannelCoupling::new(at("conv1"), at("bn1"), at("conv2")),
                        ChannelCoupling::new(at("conv2"), at("bn2"), at("conv3")),
                    ]),
                    (BlockKind::Bottleneck, g) => scope.skipped.extend([
                        SkippedConv {
                            conv: at("conv1"),
                            reason: format!("feeds a grouped convolution ({g} groups)"),
                        },
                        SkippedConv {
                            conv: at("conv2"),
                            reason: format!("a grouped convolution ({g} groups)"),
                        },
                    ]),
                }
            }
        }
        scope
    }

    fn rebuild(&self, state: &StateDict) -> Result<Self> {
        ResNet::from_state_dict(state, self.config.stem)
    }
}

/// `conv → bn (→ relu)` under the given names, fused in eval mode.
fn unit(conv: Conv2dConfig, conv_name: &str, bn_name: &str, relu: bool) -> Result<ConvBn> {
    let bn = BatchNorm2d::new(conv.out_channels, BN_EPS);
    let activation = if relu {
        Activation::Relu
    } else {
        Activation::Identity
    };
    ConvBn::new(conv_name, Conv2d::new(conv)?, bn_name, bn, activation)
}

/// One residual block with torchvision's child names.
fn block(
    cfg: &ResNetConfig,
    inp: usize,
    (stage, index): (usize, usize),
    stride: usize,
) -> Result<Residual> {
    let out = cfg.stage_out(cfg.planes[stage]);
    let (w1, w2) = cfg.branch_widths(stage, index);
    let body = match cfg.block {
        BlockKind::Basic => Sequential::new()
            .push(
                "",
                unit(
                    Conv2dConfig::new(inp, w1, 3).stride(stride).padding(1),
                    "conv1",
                    "bn1",
                    true,
                )?,
            )
            .push(
                "",
                unit(
                    Conv2dConfig::new(w1, out, 3).padding(1),
                    "conv2",
                    "bn2",
                    false,
                )?,
            ),
        BlockKind::Bottleneck => Sequential::new()
            .push(
                "",
                unit(Conv2dConfig::new(inp, w1, 1), "conv1", "bn1", true)?,
            )
            .push(
                "",
                unit(
                    Conv2dConfig::new(w1, w2, 3)
                        .stride(stride)
                        .padding(1)
                        .groups(cfg.groups),
                    "conv2",
                    "bn2",
                    true,
                )?,
            )
            .push(
                "",
                unit(Conv2dConfig::new(w2, out, 1), "conv3", "bn3", false)?,
            ),
    };
    Ok(if stride != 1 || inp != out {
        let shortcut = Sequential::new().push(
            "",
            unit(
                Conv2dConfig::new(inp, out, 1).stride(stride),
                "0",
                "1",
                false,
            )?,
        );
        Residual::with_shortcut(body, "downsample", shortcut)
    } else {
        Residual::identity(body)
    })
}

/// The ResNet family in torchvision's layout: ResNet, ResNeXt and Wide ResNet, with
/// an ImageNet or a CIFAR stem.
#[derive(Debug)]
pub struct ResNetFamily;

impl Family for ResNetFamily {
    fn name(&self) -> &'static str {
        "resnet"
    }

    fn title(&self) -> &'static str {
        "ResNet"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["conv1.weight", "layer1.0.conv1.weight"]
    }

    fn load(&self, state: &StateDict, stem: Stem) -> Result<Model> {
        ResNet::from_state_dict(state, stem).map(Model::new)
    }

    fn channel_pruning(&self) -> Option<&'static str> {
        Some("ResNets (each block's conv1, and conv2 in an ungrouped bottleneck)")
    }
}

impl FamilyNetwork for ResNet {
    fn family(&self) -> &'static dyn Family {
        &ResNetFamily
    }

    fn in_channels(&self) -> usize {
        self.net.in_channels
    }

    fn num_classes(&self) -> usize {
        self.net.classes
    }

    fn describe(&self) -> String {
        let c = &self.config;
        let widths = match &c.block_widths {
            Some(_) => ", per-block widths (channel-pruned)",
            None => "",
        };
        format!(
            "{} stem, stages {:?} of {} blocks, planes {:?}, groups {}{widths}",
            c.stem, c.layers, c.block, c.planes, c.groups
        )
    }

    fn channel_scope(&self) -> Option<ChannelScope> {
        Some(ChannelPrunable::channel_scope(self))
    }

    fn rebuild(&self, state: &StateDict) -> Result<Model> {
        ChannelPrunable::rebuild(self, state).map(Model::new)
    }
}
