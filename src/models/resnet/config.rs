//! The shape of a ResNet: blocks, stages, widths, stem.

use crate::error::{Error, Result};
use std::fmt;

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

crate::names::names! {
    /// The first layers of a ResNet.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Stem as "stem", expecting "\"cifar\" or \"imagenet\"" {
        /// 3×3 convolution, stride 1, padding 1; no max pooling. For small images
        /// (CIFAR, Fashion-MNIST).
        Cifar = "cifar",
        /// 7×7 convolution, stride 2, padding 3, then 3×3 max pooling, stride 2, padding 1.
        Imagenet = "imagenet",
    }
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
    /// Each block's own widths inside its residual branch, for a network whose
    /// blocks differ (a channel-pruned one, see
    /// [`ChannelPruner`](crate::prune::ChannelPruner)): `block_widths[stage][block]`
    /// holds the output channels of the branch's convolutions before the last —
    /// `[conv1]` in a basic block, `[conv1, conv2]` in a bottleneck. `None`: every
    /// block of a stage has [`inner_width`](Self::inner_width) channels (with
    /// `Some`, `width_per_group` is not used).
    pub block_widths: Option<Vec<Vec<Vec<usize>>>>,
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
            block_widths: None,
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
            block_widths: None,
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

    /// The output channels of block `block` of stage `stage` (both 0-based):
    /// `conv1`'s, and `conv2`'s (in a basic block, the block's output). They are
    /// [`block_widths`](Self::block_widths)' when given, else the stage's
    /// [`inner_width`](Self::inner_width).
    ///
    /// ```
    /// use reflow::models::ResNetConfig;
    ///
    /// let mut cfg = ResNetConfig::resnet50();
    /// assert_eq!(cfg.branch_widths(0, 0), (64, 64));
    /// cfg.block_widths = Some(cfg.layers.iter().map(|&n| vec![vec![40, 48]; n]).collect());
    /// assert_eq!(cfg.branch_widths(3, 2), (40, 48));
    /// assert_eq!(cfg.num_parameters(), 6_394_408);
    /// ```
    pub fn branch_widths(&self, stage: usize, block: usize) -> (usize, usize) {
        let planes = self.planes[stage];
        let given = self
            .block_widths
            .as_ref()
            .and_then(|w| w.get(stage)?.get(block));
        let inner = self.inner_width(planes);
        match (self.block, given.map(Vec::as_slice)) {
            (BlockKind::Basic, Some(&[w1])) => (w1, planes),
            (BlockKind::Bottleneck, Some(&[w1, w2])) => (w1, w2),
            (BlockKind::Basic, _) => (inner, planes),
            (BlockKind::Bottleneck, _) => (inner, inner),
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
        self.validate_block_widths()
    }

    fn validate_block_widths(&self) -> Result<()> {
        let Some(widths) = &self.block_widths else {
            return Ok(());
        };
        let per_block = match self.block {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 2,
        };
        let counts: Vec<usize> = widths.iter().map(Vec::len).collect();
        if counts != self.layers {
            return Err(Error::invalid(
                "block_widths",
                format!(
                    "{counts:?} blocks per stage, but the network has {:?}",
                    self.layers
                ),
            ));
        }
        for (s, stage) in widths.iter().enumerate() {
            for (b, w) in stage.iter().enumerate() {
                let at = format!("stage {} block {b}", s + 1);
                if w.len() != per_block {
                    return Err(Error::invalid(
                        "block_widths",
                        format!(
                            "{at}: {} widths, a {} block has {per_block}",
                            w.len(),
                            self.block
                        ),
                    ));
                }
                if let Some(bad) = w.iter().find(|&&c| c == 0 || c % self.groups != 0) {
                    return Err(Error::invalid(
                        "block_widths",
                        format!(
                            "{at}: width {bad} is not a positive multiple of the {} group(s)",
                            self.groups
                        ),
                    ));
                }
            }
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
            let out = self.stage_out(planes);
            for b in 0..blocks {
                let stride = if b == 0 { Self::stage_stride(s) } else { 1 };
                let (w1, w2) = self.branch_widths(s, b);
                let parts = match self.block {
                    BlockKind::Basic => {
                        vec![conv(inp, w1, 3, 1), bn(w1), conv(w1, out, 3, 1), bn(out)]
                    }
                    BlockKind::Bottleneck => vec![
                        conv(inp, w1, 1, 1),
                        bn(w1),
                        conv(w1, w2, 3, self.groups),
                        bn(w2),
                        conv(w2, out, 1, 1),
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
