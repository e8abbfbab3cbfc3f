//! ShuffleNetV2 (Ma et al., 2018) in torchvision's layout.

mod block;
mod config;

pub use config::ShuffleNetV2Config;

use super::{About, Architecture, Classifier, Net};
use crate::models::keys::{arch, count_while, inferred, shape_of};
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
pub type ShuffleNetV2 = Net<ShuffleNetV2Config>;

impl Architecture for ShuffleNetV2Config {
    const ABOUT: About = About::new("shufflenet_v2", FAMILY, &["conv1.0.weight", "stage2.0.branch2.0.weight"])
        .variants(&[PRESETS[0].0, PRESETS[1].0, PRESETS[2].0, PRESETS[3].0]);

    /// Reads the shape off a torchvision-layout ShuffleNetV2 state dict: blocks from
    /// the keys, widths from the shapes.
    ///
    /// ```
    /// use reflow::models::{Architecture, ShuffleNetV2, ShuffleNetV2Config};
    /// use reflow::StateDict;
    ///
    /// let cfg = ShuffleNetV2Config::preset("shufflenet_v2_x0_5").unwrap().with_num_classes(10);
    /// let state = StateDict::from_layer(&ShuffleNetV2::new(cfg.clone())?);
    /// assert_eq!(ShuffleNetV2Config::infer(&state)?, cfg);
    /// # Ok::<(), reflow::Error>(())
    /// ```
    fn infer(state: &StateDict) -> Result<Self> {
        let stem = shape_of(state, FAMILY, "conv1.0.weight", 4)?;
        let mut channels = [stem[0], 0, 0, 0, 0];
        let mut repeats = [0; 3];
        for s in 0..3 {
            let key = |b: usize| format!("stage{}.{b}.branch2.0.weight", s + 2);
            repeats[s] = count_while(state, key);
            let branch = shape_of(state, FAMILY, &key(0), 4)?[0];
            channels[s + 1] = 2 * branch;
        }
        channels[4] = shape_of(state, FAMILY, "conv5.0.weight", 4)?[0];
        let fc = shape_of(state, FAMILY, "fc.weight", 2)?;
        if fc[1] != channels[4] {
            return Err(arch(
                FAMILY,
                "fc.weight",
                format!("{} inputs, but conv5 gives {}", fc[1], channels[4]),
            ));
        }
        let config = ShuffleNetV2Config {
            stages_repeats: repeats,
            stages_out_channels: channels,
            in_channels: stem[1],
            num_classes: fc[0],
        };
        inferred(state, FAMILY, "conv1.0.weight", config, Self::validate, Self::num_parameters)
    }

    fn build(&self) -> Result<Classifier> {
        self.validate()?;
        let [stem, .., last] = self.stages_out_channels;
        let unit = |conv: Conv2dConfig, name: &str| {
            let bn = BatchNorm2d::new(conv.out_channels, 1e-5);
            let (c, b) = (format!("{name}.0"), format!("{name}.1"));
            ConvBn::new(c, Conv2d::new(conv)?, b, bn, Activation::Relu)
        };
        let conv1 = Conv2dConfig::new(self.in_channels, stem, 3)
            .stride(2)
            .padding(1);
        let mut net = Sequential::new()
            .push("", unit(conv1, "conv1")?)
            .push("maxpool", MaxPool2d::new(3, 2, 1)?);
        let mut c = stem;
        let widths = &self.stages_out_channels[1..4];
        for (s, (&blocks, &out)) in self.stages_repeats.iter().zip(widths).enumerate() {
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
            .push("fc", Linear::new(last, self.num_classes, true));
        Ok(Classifier::new(net, self.in_channels, self.num_classes, (stem, 2)))
    }

    fn variant(&self) -> Option<&'static str> {
        ShuffleNetV2Config::variant(self)
    }
}
