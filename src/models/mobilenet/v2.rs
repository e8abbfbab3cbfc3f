//! MobileNetV2 (Sandler et al., 2018) in torchvision's layout.

use super::block::{body_parameters, make_divisible, validate_sizes};
use super::block::{Layout, MobileBlock, MobileParts};
use crate::error::Result;
use crate::models::{About, Architecture, Classifier, Net};
use crate::models::keys::{arch, inferred, count_while, shape_of};
use crate::nn::{Activation, Dropout, Linear, Sequential, Tensor2};
use crate::state_dict::StateDict;

const FAMILY: &str = "MobileNetV2";

/// torchvision's setting: (expansion t, channels c, blocks n, first stride s).
const SETTING: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// Everything that determines a MobileNetV2's layers: torchvision's `mobilenet_v2` at
/// any `width_mult`, or the widths read off a checkpoint.
///
/// ```
/// use reflow::models::MobileNetV2Config;
///
/// assert_eq!(MobileNetV2Config::mobilenet_v2().num_parameters(), 3_504_872);
/// assert_eq!(MobileNetV2Config::with_width(0.5).blocks[0].out_channels, 8);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MobileNetV2Config {
    /// Channels of the input images.
    pub in_channels: usize,
    /// Outputs of the stem (`features.0`).
    pub stem_width: usize,
    /// The inverted residual blocks `features.1` … (ReLU6, 3×3 depthwise).
    pub blocks: Vec<MobileBlock>,
    /// Outputs of the last 1×1 convolution.
    pub last_channel: usize,
    /// Outputs of `classifier.1`.
    pub num_classes: usize,
}

fn block(in_channels: usize, t: usize, out: usize, stride: usize) -> MobileBlock {
    MobileBlock {
        in_channels,
        expanded: ((in_channels * t) as f64).round() as usize,
        out_channels: out,
        kernel: 3,
        stride,
        squeeze: None,
        activation: Activation::Relu6,
    }
}

impl MobileNetV2Config {
    /// torchvision `mobilenet_v2()`.
    pub fn mobilenet_v2() -> Self {
        Self::with_width(1.0)
    }

    /// torchvision `mobilenet_v2(width_mult=w)`: every width scaled and rounded to a
    /// multiple of 8; the last convolution widened only for `w > 1`.
    pub fn with_width(width_mult: f64) -> Self {
        let mut c = make_divisible(32.0 * width_mult);
        let stem_width = c;
        let mut blocks = Vec::new();
        for (t, out, n, s) in SETTING {
            let out = make_divisible(out as f64 * width_mult);
            for i in 0..n {
                blocks.push(block(c, t, out, if i == 0 { s } else { 1 }));
                c = out;
            }
        }
        MobileNetV2Config {
            in_channels: 3,
            stem_width,
            blocks,
            last_channel: make_divisible(1280.0 * width_mult.max(1.0)),
            num_classes: 1000,
        }
    }

    channel_and_class_builders!();

    /// Number of parameters, as PyTorch counts them.
    pub fn num_parameters(&self) -> usize {
        let body = body_parameters(
            self.in_channels,
            self.stem_width,
            self.blocks.iter(),
            self.last_channel,
        );
        body + self.last_channel * self.num_classes + self.num_classes
    }

    fn validate(&self) -> Result<()> {
        let sizes = [
            self.in_channels,
            self.stem_width,
            self.last_channel,
            self.num_classes,
        ];
        validate_sizes(FAMILY, &sizes, self.blocks.iter())
    }

}

/// MobileNetV2 with torchvision's module names: `features.0` (3×3 stride-2
/// convolution, batch norm, ReLU6), inverted residuals `features.{k}.conv.*` (1×1
/// expansion unless t = 1, 3×3 depthwise, 1×1 projection without activation; the
/// input added when the stride is 1 and the widths match), `features.18` (1×1, ReLU6),
/// global pooling, `classifier.1` (after dropout, the identity in eval).
///
/// ```
/// use reflow::layer::{count_parameters, Layer};
/// use reflow::models::{MobileNetV2, MobileNetV2Config};
/// use ndarray::Array4;
///
/// let cfg = MobileNetV2Config::with_width(0.25).with_num_classes(10);
/// let net = MobileNetV2::new(cfg.clone())?;
/// assert_eq!(count_parameters(&net), cfg.num_parameters());
/// assert_eq!(net.forward(&Array4::zeros((1, 3, 32, 32)))?.dim(), (1, 10));
/// # Ok::<(), reflow::Error>(())
/// ```
pub type MobileNetV2 = Net<MobileNetV2Config>;

impl Architecture for MobileNetV2Config {
    const ABOUT: About = About::new("mobilenet_v2", FAMILY, &["features.1.conv.0.0.weight"]);

    /// Reads the widths off a torchvision-layout MobileNetV2 state dict; the strides
    /// are torchvision's fixed setting, so the blocks must be its seventeen.
    ///
    /// ```
    /// use reflow::models::{Architecture, MobileNetV2, MobileNetV2Config};
    /// use reflow::StateDict;
    ///
    /// let cfg = MobileNetV2Config::with_width(0.35).with_num_classes(10);
    /// let state = StateDict::from_layer(&MobileNetV2::new(cfg.clone())?);
    /// assert_eq!(MobileNetV2Config::infer(&state)?, cfg);
    /// # Ok::<(), reflow::Error>(())
    /// ```
    fn infer(state: &StateDict) -> Result<Self> {
        let stem = shape_of(state, FAMILY, "features.0.0.weight", 4)?;
        let (stem_width, in_channels) = (stem[0], stem[1]);
        let count = count_while(state, |k| format!("features.{}.conv.0.0.weight", k + 1));
        let strides: Vec<usize> = SETTING
            .iter()
            .flat_map(|&(_, _, n, s)| (0..n).map(move |i| if i == 0 { s } else { 1 }))
            .collect();
        if count != strides.len() {
            let key = format!("features.{}.conv.0.0.weight", count + 1);
            return Err(arch(
                FAMILY,
                &key,
                format!(
                    "{count} inverted residual blocks; torchvision's MobileNetV2 has {}",
                    strides.len()
                ),
            ));
        }
        let (mut c, mut blocks) = (stem_width, Vec::new());
        for (k, &stride) in (1..=count).zip(&strides) {
            let key = |s: &str| format!("features.{k}.conv.{s}.weight");
            let expands = state.contains(&key("3"));
            let first = shape_of(state, FAMILY, &key("0.0"), 4)?;
            let (expanded, dw, project) = if expands {
                (first[0], key("1.0"), key("2"))
            } else {
                (c, key("0.0"), key("1"))
            };
            let kernel = shape_of(state, FAMILY, &dw, 4)?[2];
            let out = shape_of(state, FAMILY, &project, 4)?[0];
            blocks.push(MobileBlock {
                in_channels: c,
                expanded,
                out_channels: out,
                kernel,
                stride,
                squeeze: None,
                activation: Activation::Relu6,
            });
            c = out;
        }
        let last_key = format!("features.{}.0.weight", count + 1);
        let last_channel = shape_of(state, FAMILY, &last_key, 4)?[0];
        let num_classes = shape_of(state, FAMILY, "classifier.1.weight", 2)?[0];
        let config = MobileNetV2Config {
            in_channels,
            stem_width,
            blocks,
            last_channel,
            num_classes,
        };
        inferred(state, FAMILY, "features.0.0.weight", config, Self::validate, Self::num_parameters)
    }

    fn build(&self) -> Result<Classifier> {
        self.validate()?;
        let classifier = Sequential::with_input::<Tensor2>()
            .push("0", Dropout::new(0.2)?)
            .push(
                "1",
                Linear::new(self.last_channel, self.num_classes, true),
            );
        let net = MobileParts {
            in_channels: self.in_channels,
            stem: (self.stem_width, Activation::Relu6),
            blocks: self
                .blocks
                .iter()
                .enumerate()
                .map(|(k, b)| ((k + 1).to_string(), b))
                .collect(),
            last: (
                self.blocks.len() + 1,
                self.last_channel,
                Activation::Relu6,
            ),
            classifier,
            classes: self.num_classes,
            layout: Layout::V2,
            eps: 1e-5,
        }
        .build()?;
        Ok(net)
    }
}
