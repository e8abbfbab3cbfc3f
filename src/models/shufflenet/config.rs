//! The shape of a ShuffleNetV2: torchvision's presets and the reading of a state
//! dict's keys.

use crate::error::{Error, Result};

pub(super) const FAMILY: &str = "ShuffleNetV2";

/// torchvision's presets: (name, blocks per stage, output channels of `conv1`, the
/// three stages and `conv5`).
pub(super) const PRESETS: [(&str, [usize; 3], [usize; 5]); 4] = [
    ("shufflenet_v2_x0_5", [4, 8, 4], [24, 48, 96, 192, 1024]),
    ("shufflenet_v2_x1_0", [4, 8, 4], [24, 116, 232, 464, 1024]),
    ("shufflenet_v2_x1_5", [4, 8, 4], [24, 176, 352, 704, 1024]),
    ("shufflenet_v2_x2_0", [4, 8, 4], [24, 244, 488, 976, 2048]),
];

/// Everything that determines a ShuffleNetV2's layers: torchvision's
/// `stages_repeats` and `stages_out_channels`, input channels and classes.
///
/// ```
/// use reflow::models::ShuffleNetV2Config;
///
/// let cfg = ShuffleNetV2Config::preset("shufflenet_v2_x1_0").unwrap();
/// assert_eq!(cfg.num_parameters(), 2_278_604);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShuffleNetV2Config {
    /// Blocks of `stage2`, `stage3` and `stage4`, the first of each with stride 2.
    pub stages_repeats: [usize; 3],
    /// Output channels of `conv1`, of the three stages (even: each block's two
    /// branches give half) and of `conv5`.
    pub stages_out_channels: [usize; 5],
    /// Channels of the input images.
    pub in_channels: usize,
    /// Outputs of `fc`.
    pub num_classes: usize,
}

impl ShuffleNetV2Config {
    /// The preset of a torchvision name (`shufflenet_v2_x0_5`, `_x1_0`, `_x1_5`,
    /// `_x2_0`): 3 input channels, 1000 classes.
    pub fn preset(name: &str) -> Option<Self> {
        let (_, repeats, channels) = PRESETS.iter().find(|p| p.0 == name)?;
        Some(ShuffleNetV2Config {
            stages_repeats: *repeats,
            stages_out_channels: *channels,
            in_channels: 3,
            num_classes: 1000,
        })
    }

    channel_and_class_builders!();

    /// The preset whose blocks and widths these are, if any.
    pub fn variant(&self) -> Option<&'static str> {
        let same = |&(_, r, c): &(&str, [usize; 3], [usize; 5])| {
            (r, c) == (self.stages_repeats, self.stages_out_channels)
        };
        PRESETS.iter().find(|p| same(p)).map(|p| p.0)
    }

    /// Number of parameters, as PyTorch counts them.
    pub fn num_parameters(&self) -> usize {
        let [stem, .., last] = self.stages_out_channels;
        // A convolution without bias and its batch norm (γ, β).
        let unit = |weights: usize, out: usize| weights + 2 * out;
        let mut n = unit(self.in_channels * stem * 9, stem);
        let mut c = stem;
        for (&blocks, &out) in self.stages_repeats.iter().zip(&self.stages_out_channels[1..4]) {
            let b = out / 2;
            // The first block: branch1 (depthwise 3×3, 1×1) and branch2 from c inputs.
            n += unit(c * 9, c) + unit(c * b, b);
            n += unit(c * b, b) + unit(b * 9, b) + unit(b * b, b);
            // The others: branch2 on half the channels.
            n += (blocks - 1) * (unit(b * b, b) + unit(b * 9, b) + unit(b * b, b));
            c = out;
        }
        n + unit(c * last, last) + last * self.num_classes + self.num_classes
    }

    pub(super) fn validate(&self) -> Result<()> {
        let invalid = |what: String| Err(Error::invalid("ShuffleNetV2 config", what));
        if self.stages_repeats.contains(&0) {
            return invalid(format!("a stage without blocks: {:?}", self.stages_repeats));
        }
        let odd = self.stages_out_channels[1..4].iter().any(|c| c % 2 == 1);
        if self.stages_out_channels.contains(&0) || odd {
            return invalid(format!(
                "stage widths {:?}: each must be positive, the three stages' even",
                self.stages_out_channels
            ));
        }
        if self.in_channels == 0 || self.num_classes == 0 {
            return invalid(format!(
                "{} input channels, {} classes",
                self.in_channels, self.num_classes
            ));
        }
        Ok(())
    }

}
