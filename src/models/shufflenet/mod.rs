//! ShuffleNetV2 (Ma et al., 2018) in torchvision's layout.

mod block;
mod config;

pub use config::ShuffleNetV2Config;

use super::classifier::{family_network, Classifier};
use super::{Family, FamilyNetwork, Model, Stem};
use crate::error::Result;
use crate::nn::{Activation, AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, ConvBn};
use crate::nn::{Flatten, Linear, MaxPool2d, Sequential};
use crate::state_dict::StateDict;
use block::ShuffleBlock;
use config::{FAMILY, PRESETS};

/// A ShuffleNetV2 with torchvision's module names: `conv1` (3×3 stride-2
/// convolution, batch norm, ReLU), `maxpool`, `stage2` … `stage4` (blocks `0`, `1`,
/// … of two branches, `branch1` and `branch2`, whose channels are interleaved; the
/// first block of a stage strides), `conv5` (1×1, batch norm, ReLU), a global mean,
/// `fc`.
///
/// ```
/// use reflow::layer::{count_parameters, Layer};
/// use reflow::models::{ShuffleNetV2, ShuffleNetV2Config};
/// use ndarray::Array4;
///
/// let cfg = ShuffleNetV2Config::preset("shufflenet_v2_x0_5").unwrap().with_num_classes(10);
/// let net = ShuffleNetV2::new(cfg.clone())?;
/// assert_eq!(count_parameters(&net), cfg.num_parameters());
/// assert_eq!(net.forward(&Array4::zeros((1, 3, 64, 64)))?.dim(), (1, 10));
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug)]
pub struct ShuffleNetV2 {
    config: ShuffleNetV2Config,
    net: Classifier,
}

family_network!(ShuffleNetV2, ShuffleNetV2Config, infer);

impl ShuffleNetV2 {
    /// Builds the network with zero weights, γ = 1, β = 0 and running statistics
    /// (0, 1); fill it with [`StateDict::load_into`] or use
    /// [`ShuffleNetV2::from_state_dict`].
    pub fn new(config: ShuffleNetV2Config) -> Result<Self> {
        config.validate()?;
        let [stem, .., last] = config.stages_out_channels;
        let unit = |conv: Conv2dConfig, name: &str| {
            let bn = BatchNorm2d::new(conv.out_channels, 1e-5);
            let (c, b) = (format!("{name}.0"), format!("{name}.1"));
            ConvBn::new(c, Conv2d::new(conv)?, b, bn, Activation::Relu)
        };
        let conv1 = Conv2dConfig::new(config.in_channels, stem, 3)
            .stride(2)
            .padding(1);
        let mut net = Sequential::new()
            .push("", unit(conv1, "conv1")?)
            .push("maxpool", MaxPool2d::new(3, 2, 1)?);
        let mut c = stem;
        let widths = &config.stages_out_channels[1..4];
        for (s, (&blocks, &out)) in config.stages_repeats.iter().zip(widths).enumerate() {
            let mut stage = Sequential::new();
            for b in 0..blocks {
                let (inp, stride) = if b == 0 { (c, 2) } else { (out, 1) };
                stage = stage.push(b.to_string(), ShuffleBlock::new(inp, out, stride)?);
            }
            net = net.push(format!("stage{}", s + 2), stage);
            c = out;
        }
        let net = net
            .push("", unit(Conv2dConfig::new(c, last, 1), "conv5")?)
            .push("avgpool", AdaptiveAvgPool2d::global())
            .push("flatten", Flatten)
            .push("fc", Linear::new(last, config.num_classes, true));
        Ok(ShuffleNetV2 {
            net: Classifier {
                family: FAMILY,
                in_channels: config.in_channels,
                classes: config.num_classes,
                stem: (stem, 2),
                net,
            },
            config,
        })
    }
}

/// The ShuffleNetV2 family in torchvision's layout: `shufflenet_v2_x0_5` …
/// `shufflenet_v2_x2_0` or any blocks and widths.
#[derive(Debug)]
pub struct ShuffleNetV2Family;

impl Family for ShuffleNetV2Family {
    fn name(&self) -> &'static str {
        "shufflenet_v2"
    }

    fn title(&self) -> &'static str {
        FAMILY
    }

    fn variants(&self) -> &'static [&'static str] {
        &[
            PRESETS[0].0,
            PRESETS[1].0,
            PRESETS[2].0,
            PRESETS[3].0,
        ]
    }

    fn keys(&self) -> &'static [&'static str] {
        &["conv1.0.weight", "stage2.0.branch2.0.weight"]
    }

    fn load(&self, state: &StateDict, _stem: Stem) -> Result<Model> {
        ShuffleNetV2::from_state_dict(state).map(Model::new)
    }
}

impl FamilyNetwork for ShuffleNetV2 {
    fn family(&self) -> &'static dyn Family {
        &ShuffleNetV2Family
    }

    fn variant(&self) -> Option<&'static str> {
        self.config.variant()
    }

    fn in_channels(&self) -> usize {
        self.net.in_channels
    }

    fn num_classes(&self) -> usize {
        self.net.classes
    }
}
