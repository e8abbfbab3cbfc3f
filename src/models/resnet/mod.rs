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

use super::{About, Architecture, Classifier, Net};
use crate::error::Result;
use crate::nn::{Activation, AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, ConvBn};
use crate::nn::{Flatten, Linear, MaxPool2d, Residual, Sequential};
use crate::prune::{ChannelCoupling, ChannelScope, SkippedConv};
use crate::state_dict::StateDict;

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
pub type ResNet = Net<ResNetConfig>;

impl Architecture for ResNetConfig {
    const ABOUT: About = About::new("resnet", "ResNet", &["conv1.weight", "layer1.0.conv1.weight"])
        .channel_pruning("ResNets (each block's conv1, and conv2 in an ungrouped bottleneck)");

    fn infer(state: &StateDict) -> Result<Self> {
        infer::infer(state)
    }

    fn check_stem(&self, stem: Stem) -> Result<()> {
        infer::check_stem(self, stem)
    }

    /// `conv1` → `bn1` → ReLU (→ `maxpool`), `layer1`, `layer2`, ... (each a chain of
    /// residual blocks named `0`, `1`, ...), `avgpool`, `fc`.
    fn build(&self) -> Result<Classifier> {
        self.validate()?;
        let k = self.stem.kernel();
        let stride = if self.stem == Stem::Imagenet { 2 } else { 1 };
        let stem = unit(
            Conv2dConfig::new(self.in_channels, self.stem_width, k)
                .stride(stride)
                .padding(k / 2),
            "conv1",
            "bn1",
            true,
        )?;
        let mut net = Sequential::new().push("", stem);
        if self.stem == Stem::Imagenet {
            net = net.push("maxpool", MaxPool2d::new(3, 2, 1)?);
        }
        let mut inp = self.stem_width;
        for (s, (&blocks, &planes)) in self.layers.iter().zip(&self.planes).enumerate() {
            let mut stage = Sequential::new();
            for b in 0..blocks {
                let stride = if b == 0 {
                    ResNetConfig::stage_stride(s)
                } else {
                    1
                };
                stage = stage.push(b.to_string(), block(self, inp, (s, b), stride)?);
                inp = self.stage_out(planes);
            }
            net = net.push(format!("layer{}", s + 1), stage);
        }
        let net = net
            .push("avgpool", AdaptiveAvgPool2d::global())
            .push("flatten", Flatten)
            .push("fc", Linear::new(inp, self.num_classes, true));
        Ok(Classifier::new(net, self.in_channels, self.num_classes, (self.stem_width, stride)))
    }

    fn describe(&self) -> String {
        let widths = match &self.block_widths {
            Some(_) => ", per-block widths (channel-pruned)",
            None => "",
        };
        format!(
            "{} stem, stages {:?} of {} blocks, planes {:?}, groups {}{widths}",
            self.stem, self.layers, self.block, self.planes, self.groups
        )
    }

    /// In every block, `conv1` (→ `bn1` → `conv2`) and, in a bottleneck, `conv2`
    /// (→ `bn2` → `conv3`): the convolutions whose outputs stay inside the residual
    /// branch. In a grouped bottleneck (ResNeXt) both are skipped: their channels
    /// feed, or are, a grouped convolution's.
    fn channel_scope(&self) -> Option<ChannelScope> {
        let cfg = self;
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
        Some(scope)
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
