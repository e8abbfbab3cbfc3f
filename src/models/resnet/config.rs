//! The shape of a ResNet: blocks, stages, widths, stem.

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// The residual block of a ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockKind {
    /// Two 3×3 convolutions (ResNet-18/34, CIFAR ResNets); expansion 1.
    Basic,
    /// 1×1 → 3×3 (strided, grouped) → 1×1 convolutions (ResNet-50 and deeper,
    /// ResNeXt, Wide ResNet); expansion 4.
    Bottleneck,
}

impl BlockKind {
    /// Output channels per unit of `planes`: 1 for [`BlockKind::Basic`], 4 for
    /// [`BlockKind::Bottleneck`].
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

impl fmt::Display for BlockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlockKind::Basic => "basic",
            BlockKind::Bottleneck => "bottleneck",
        })
    }
}

/// The first layers of a ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stem {
    /// 3×3 convolution, stride 1, padding 1; no max pooling. For small images
    /// (CIFAR, Fashion-MNIST).
    Cifar,
    /// 7×7 convolution, stride 2, padding 3, then 3×3 max pooling, stride 2, padding 1.
    Imagenet,
}

impl Stem {
    /// The stem convolution's kernel size: 3 or 7.
    pub fn kernel(self) -> usize {
        match self {
            Stem::Cifar => 3,
            Stem::Imagenet => 7,
        }
    }
}

impl fmt::Display for Stem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stem::Cifar => "cifar",
            Stem::Imagenet => "imagenet",
        })
    }
}

impl FromStr for Stem {
    type Err = Error;

    /// Parses `cifar` or `imagenet`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cifar" => Ok(Stem::Cifar),
            "imagenet" => Ok(Stem::Imagenet),
            other => Err(Error::invalid(
                "stem",
                format!("\"{other}\" (expected \"cifar\" or \"imagenet\")"),
            )),
        }
    }
}

/// Everything that determines a ResNet's layers and parameter shapes.
///
/// Start from a preset and adjust:
///
/// ```
/// use reflow::models::{ResNetConfig, Stem};
///
/// let cfg = ResNetConfig::resnet18().with_in_channels(1).with_num_classes(10);
/// assert_eq!(cfg.layers, [2, 2, 2, 2]);
/// assert_eq!(cfg.stem, Stem::Imagenet);
/// assert_eq!(cfg.num_parameters(), 11_175_370);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResNetConfig {
    /// The residual block.
    pub block: BlockKind,
    /// Blocks per stage; one entry per stage (`layer1`, `layer2`, ...).
    pub layers: Vec<usize>,
    /// Each stage's `planes` (torchvision's term): the block output is
    /// `planes × expansion` channels.
    pub planes: Vec<usize>,
    /// The stem kind.
    pub stem: Stem,
    /// Output channels of the stem convolution (`conv1`).
    pub stem_width: usize,
    /// Channels of the input images.
    pub in_channels: usize,
    /// Outputs of the final linear layer.
    pub num_classes: usize,
    /// Groups of the bottleneck's 3×3 convolution (ResNeXt's cardinality).
    pub groups: usize,
    /// Bottleneck width per group at `planes = 64` (64 for ResNet, 4 or 8 for ResNeXt,
    /// 128 for Wide ResNet-2).
    pub width_per_group: usize,
}

impl ResNetConfig {
    /// An ImageNet-style network (64-wide stem, widths 64/128/256/512, 3 channels,
    /// 1000 classes, one group).
    pub fn imagenet(block: BlockKind, layers: [usize; 4]) -> Self {
        ResNetConfig {
            block,
            layers: layers.to_vec(),
            planes: vec![64, 128, 256, 512],
            stem: Stem::Imagenet,
            stem_width: 64,
            in_channels: 3,
            num_classes: 1000,
            groups: 1,
            width_per_group: 64,
        }
    }

    /// torchvision `resnet18`.
    pub fn resnet18() -> Self {
        Self::imagenet(BlockKind::Basic, [2, 2, 2, 2])
    }

    /// torchvision `resnet34`.
    pub fn resnet34() -> Self {
        Self::imagenet(BlockKind::Basic, [3, 4, 6, 3])
    }

    /// torchvision `resnet50`.
    pub fn resnet50() -> Self {
        Self::imagenet(BlockKind::Bottleneck, [3, 4, 6, 3])
    }

    /// torchvision `resnet101`.
    pub fn resnet101() -> Self {
        Self::imagenet(BlockKind::Bottleneck, [3, 4, 23, 3])
    }

    /// torchvision `resnet152`.
    pub fn resnet152() -> Self {
        Self::imagenet(BlockKind::Bottleneck, [3, 8, 36, 3])
    }

    /// torchvision `resnext50_32x4d`.
    pub fn resnext50_32x4d() -> Self {
        Self::resnet50().with_groups(32, 4)
    }

    /// torchvision `resnext101_32x8d`.
    pub fn resnext101_32x8d() -> Self {
        Self::resnet101().with_groups(32, 8)
    }

    /// torchvision `resnext101_64x4d`.
    pub fn resnext101_64x4d() -> Self {
        Self::resnet101().with_groups(64, 4)
    }

    /// torchvision `wide_resnet50_2`.
    pub fn wide_resnet50_2() -> Self {
        Self::resnet50().with_groups(1, 128)
    }

    /// torchvision `wide_resnet101_2`.
    pub fn wide_resnet101_2() -> Self {
        Self::resnet101().with_groups(1, 128)
    }

    /// The CIFAR ResNet of He et al. (2016) with `depth` = 6n + 2 layers (20, 32, 44,
    /// 56, 110, ...): basic blocks, n per stage, widths 16/32/64, `cifar` stem,
    /// 3 channels, 10 classes, 1×1-convolution shortcuts in torchvision's
    /// `downsample` layout.
    pub fn cifar_resnet(depth: usize) -> Result<Self> {
        if depth < 8 || !(depth - 2).is_multiple_of(6) {
            return Err(Error::invalid(
                "depth",
                format!("{depth} is not 6n + 2 with n ≥ 1 (20, 32, 44, 56, 110, ...)"),
            ));
        }
        let n = (depth - 2) / 6;
        Ok(ResNetConfig {
            block: BlockKind::Basic,
            layers: vec![n; 3],
            planes: vec![16, 32, 64],
            stem: Stem::Cifar,
            stem_width: 16,
            in_channels: 3,
            num_classes: 10,
            groups: 1,
            width_per_group: 64,
        })
    }

    /// Sets the input channels (1 for grayscale).
    pub fn with_in_channels(mut self, in_channels: usize) -> Self {
        self.in_channels = in_channels;
        self
    }

    /// Sets the number of classes.
    pub fn with_num_classes(mut self, num_classes: usize) -> Self {
        self.num_classes = num_classes;
        self
    }

    /// Sets the stem kind.
    pub fn with_stem(mut self, stem: Stem) -> Self {
        self.stem = stem;
        self
    }

    /// Sets the bottleneck's groups and width per group.
    pub fn with_groups(mut self, groups: usize, width_per_group: usize) -> Self {
        self.groups = groups;
        self.width_per_group = width_per_group;
        self
    }

    /// The bottleneck's inner width for a stage of `planes`, as torchvision computes
    /// it: `⌊planes · width_per_group / 64⌋ · groups`. For basic blocks, `planes`.
    pub fn inner_width(&self, planes: usize) -> usize {
        match self.block {
            BlockKind::Basic => planes,
            BlockKind::Bottleneck => planes * self.width_per_group / 64 * self.groups,
        }
    }

    /// The channels a stage of `planes` outputs.
    pub fn stage_out(&self, planes: usize) -> usize {
        planes * self.block.expansion()
    }

    /// The channels entering the classifier.
    pub fn feature_dim(&self) -> usize {
        self.planes
            .last()
            .map_or(self.stem_width, |&p| self.stage_out(p))
    }

    /// The stride of stage `k` (0-based): 1 for the first stage, 2 for the others.
    pub fn stage_stride(k: usize) -> usize {
        if k == 0 {
            1
        } else {
            2
        }
    }

    /// Rejects what torchvision would reject or could not build.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("stem_width", self.stem_width),
            ("in_channels", self.in_channels),
            ("num_classes", self.num_classes),
            ("groups", self.groups),
            ("width_per_group", self.width_per_group),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::invalid(name, "must be positive"));
            }
        }
        if self.layers.is_empty() || self.layers.len() != self.planes.len() {
            return Err(Error::invalid(
                "layers",
                format!(
                    "need one block count per stage and at least one stage: {} block counts, {} widths",
                    self.layers.len(),
                    self.planes.len()
                ),
            ));
        }
        if let Some(k) = self.layers.iter().position(|&n| n == 0) {
            return Err(Error::invalid(
                "layers",
                format!("stage {} has no block", k + 1),
            ));
        }
        if let Some(k) = self.planes.iter().position(|&p| self.inner_width(p) == 0) {
            return Err(Error::invalid(
                "planes",
                format!("stage {} has zero width", k + 1),
            ));
        }
        if self.block == BlockKind::Basic && (self.groups != 1 || self.width_per_group != 64) {
            return Err(Error::invalid(
                "groups",
                "basic blocks support only groups = 1 and width_per_group = 64",
            ));
        }
        Ok(())
    }

    /// The number of parameters PyTorch counts (weights, biases, BN γ and β), computed
    /// from the configuration alone (saturating at `usize::MAX` for configurations too
    /// large to build).
    pub fn num_parameters(&self) -> usize {
        let conv = |i: usize, o: usize, k: usize, g: usize| {
            o.saturating_mul(i / g.max(1))
                .saturating_mul(k)
                .saturating_mul(k)
        };
        let bn = |c: usize| c.saturating_mul(2);
        let k = self.stem.kernel();
        let mut n =
            conv(self.in_channels, self.stem_width, k, 1).saturating_add(bn(self.stem_width));
        let mut inp = self.stem_width;
        for (s, (&blocks, &planes)) in self.layers.iter().zip(&self.planes).enumerate() {
            let (w, out) = (self.inner_width(planes), self.stage_out(planes));
            for b in 0..blocks {
                let stride = if b == 0 { Self::stage_stride(s) } else { 1 };
                let parts = match self.block {
                    BlockKind::Basic => {
                        vec![conv(inp, w, 3, 1), bn(w), conv(w, out, 3, 1), bn(out)]
                    }
                    BlockKind::Bottleneck => vec![
                        conv(inp, w, 1, 1),
                        bn(w),
                        conv(w, w, 3, self.groups),
                        bn(w),
                        conv(w, out, 1, 1),
                        bn(out),
                    ],
                };
                n = parts.into_iter().fold(n, usize::saturating_add);
                if stride != 1 || inp != out {
                    n = n
                        .saturating_add(conv(inp, out, 1, 1))
                        .saturating_add(bn(out));
                }
                inp = out;
            }
        }
        n.saturating_add(inp.saturating_mul(self.num_classes))
            .saturating_add(self.num_classes)
    }
}
