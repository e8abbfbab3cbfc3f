//! MobileNetV3 small and large (Howard et al., 2019) in torchvision's layout.

use super::block::{body_parameters, make_divisible, read_block, validate_sizes};
use crate::models::{About, Architecture, Classifier, Net};
use super::block::{Layout, MobileBlock, MobileParts};
use crate::error::Result;
use crate::models::keys::{arch, inferred, count_while, shape_of};
use crate::nn::{Activation, Dropout, Linear, Sequential, Tensor2};
use crate::state_dict::StateDict;
use std::fmt;

const FAMILY: &str = "MobileNetV3";

/// MobileNetV3's batch-norm ε (torchvision's; it is not stored in the weights).
pub const MOBILENET_V3_BN_EPS: f32 = 1e-3;

/// The two variants of MobileNetV3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MobileNetV3Variant {
    /// `mobilenet_v3_small`: 11 blocks.
    Small,
    /// `mobilenet_v3_large`: 15 blocks.
    Large,
}

impl fmt::Display for MobileNetV3Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MobileNetV3Variant::Small => "mobilenet_v3_small",
            MobileNetV3Variant::Large => "mobilenet_v3_large",
        })
    }
}

/// One block of torchvision's setting: (input, kernel, expanded, output, SE,
/// Hardswish, stride).
type Template = (usize, usize, usize, usize, bool, bool, usize);

const LARGE: [Template; 15] = [
    (16, 3, 16, 16, false, false, 1),
    (16, 3, 64, 24, false, false, 2),
    (24, 3, 72, 24, false, false, 1),
    (24, 5, 72, 40, true, false, 2),
    (40, 5, 120, 40, true, false, 1),
    (40, 5, 120, 40, true, false, 1),
    (40, 3, 240, 80, false, true, 2),
    (80, 3, 200, 80, false, true, 1),
    (80, 3, 184, 80, false, true, 1),
    (80, 3, 184, 80, false, true, 1),
    (80, 3, 480, 112, true, true, 1),
    (112, 3, 672, 112, true, true, 1),
    (112, 5, 672, 160, true, true, 2),
    (160, 5, 960, 160, true, true, 1),
    (160, 5, 960, 160, true, true, 1),
];

const SMALL: [Template; 11] = [
    (16, 3, 16, 16, true, false, 2),
    (16, 3, 72, 24, false, false, 2),
    (24, 3, 88, 24, false, false, 1),
    (24, 5, 96, 40, true, true, 2),
    (40, 5, 240, 40, true, true, 1),
    (40, 5, 240, 40, true, true, 1),
    (40, 5, 120, 48, true, true, 1),
    (48, 5, 144, 48, true, true, 1),
    (48, 5, 288, 96, true, true, 2),
    (96, 5, 576, 96, true, true, 1),
    (96, 5, 576, 96, true, true, 1),
];

impl MobileNetV3Variant {
    fn template(self) -> &'static [Template] {
        match self {
            MobileNetV3Variant::Small => &SMALL,
            MobileNetV3Variant::Large => &LARGE,
        }
    }
}

/// Everything that determines a MobileNetV3's layers: torchvision's
/// `mobilenet_v3_small` / `mobilenet_v3_large` at any `width_mult`, or the widths
/// read off a checkpoint. Batch norms use ε = 1e-3, as torchvision's.
///
/// ```
/// use reflow::models::{MobileNetV3Config, MobileNetV3Variant};
///
/// assert_eq!(MobileNetV3Config::mobilenet_v3_small().num_parameters(), 2_542_856);
/// assert_eq!(MobileNetV3Config::mobilenet_v3_large().num_parameters(), 5_483_032);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MobileNetV3Config {
    /// Small or large: the kernels, activations, squeeze-excitations and strides.
    pub variant: MobileNetV3Variant,
    /// Channels of the input images.
    pub in_channels: usize,
    /// Outputs of the stem (`features.0`, Hardswish).
    pub stem_width: usize,
    /// The blocks `features.1` ….
    pub blocks: Vec<MobileBlock>,
    /// Outputs of the last 1×1 convolution (6 × the last block's).
    pub last_conv: usize,
    /// Width of the classifier's hidden layer (`classifier.0`).
    pub hidden: usize,
    /// Outputs of `classifier.3`.
    pub num_classes: usize,
}

impl MobileNetV3Config {
    /// torchvision `mobilenet_v3_small()`.
    pub fn mobilenet_v3_small() -> Self {
        Self::with_width(MobileNetV3Variant::Small, 1.0)
    }

    /// torchvision `mobilenet_v3_large()`.
    pub fn mobilenet_v3_large() -> Self {
        Self::with_width(MobileNetV3Variant::Large, 1.0)
    }

    /// torchvision's variant at `width_mult` (every width scaled, rounded to 8).
    pub fn with_width(variant: MobileNetV3Variant, width_mult: f64) -> Self {
        let adjust = |c: usize| make_divisible(c as f64 * width_mult);
        let blocks: Vec<MobileBlock> = variant
            .template()
            .iter()
            .map(|&(i, k, e, o, se, hs, s)| MobileBlock {
                in_channels: adjust(i),
                expanded: adjust(e),
                out_channels: adjust(o),
                kernel: k,
                stride: s,
                squeeze: se.then(|| make_divisible((adjust(e) / 4) as f64)),
                activation: if hs {
                    Activation::Hardswish
                } else {
                    Activation::Relu
                },
            })
            .collect();
        let last = blocks.last().expect("a template").out_channels;
        let hidden = match variant {
            MobileNetV3Variant::Small => 1024,
            MobileNetV3Variant::Large => 1280,
        };
        MobileNetV3Config {
            variant,
            in_channels: 3,
            stem_width: blocks[0].in_channels,
            blocks,
            last_conv: 6 * last,
            hidden: adjust(hidden),
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
            self.last_conv,
        );
        let (h, n) = (self.hidden, self.num_classes);
        body + self.last_conv * h + h + h * n + n
    }

    fn validate(&self) -> Result<()> {
        let sizes = [
            self.in_channels,
            self.stem_width,
            self.last_conv,
            self.hidden,
            self.num_classes,
        ];
        validate_sizes(FAMILY, &sizes, self.blocks.iter())
    }

}

/// MobileNetV3 with torchvision's module names: `features.0` (3×3 stride-2, batch
/// norm, Hardswish), blocks `features.{k}.block.{j}` (expansion, depthwise,
/// squeeze-excitation with a hard-sigmoid gate, projection), `features.{last}` (1×1,
/// Hardswish), global pooling, `classifier.{0, 3}` (Hardswish and dropout between).
/// Batch norms use ε = 1e-3.
///
/// ```
/// use reflow::layer::{count_parameters, Layer};
/// use reflow::models::{MobileNetV3, MobileNetV3Config};
/// use ndarray::Array4;
///
/// let net = MobileNetV3::new(MobileNetV3Config::mobilenet_v3_small().with_num_classes(10))?;
/// assert_eq!(net.forward(&Array4::zeros((1, 3, 32, 32)))?.dim(), (1, 10));
/// # Ok::<(), reflow::Error>(())
/// ```
pub type MobileNetV3 = Net<MobileNetV3Config>;

impl Architecture for MobileNetV3Config {
    const ABOUT: About = About::new("mobilenet_v3", FAMILY, &["features.1.block.0.0.weight"])
        .variants(&["mobilenet_v3_small", "mobilenet_v3_large"]);

    /// Reads the widths off a torchvision-layout MobileNetV3 state dict: the variant
    /// from the number of blocks (11 small, 15 large), whose template gives the
    /// activations and strides; kernels, widths and squeeze-excitations from the
    /// shapes and keys.
    ///
    /// ```
    /// use reflow::models::{Architecture, MobileNetV3, MobileNetV3Config, MobileNetV3Variant};
    /// use reflow::StateDict;
    ///
    /// let cfg = MobileNetV3Config::with_width(MobileNetV3Variant::Small, 0.5).with_in_channels(1);
    /// let state = StateDict::from_layer(&MobileNetV3::new(cfg.clone())?);
    /// assert_eq!(MobileNetV3Config::infer(&state)?, cfg);
    /// # Ok::<(), reflow::Error>(())
    /// ```
    fn infer(state: &StateDict) -> Result<Self> {
        let stem = shape_of(state, FAMILY, "features.0.0.weight", 4)?;
        let (stem_width, in_channels) = (stem[0], stem[1]);
        let count = count_while(state, |k| format!("features.{}.block.0.0.weight", k + 1));
        let variant = match count {
            11 => MobileNetV3Variant::Small,
            15 => MobileNetV3Variant::Large,
            _ => {
                return Err(arch(
                    FAMILY,
                    &format!("features.{}.block.0.0.weight", count + 1),
                    format!("{count} blocks: torchvision's small has 11, large 15"),
                ))
            }
        };
        let (mut c, mut blocks) = (stem_width, Vec::new());
        for (k, t) in (1..=count).zip(variant.template()) {
            let activation = match t.5 {
                true => Activation::Hardswish,
                false => Activation::Relu,
            };
            let prefix = format!("features.{k}.block");
            let block = read_block(state, FAMILY, &prefix, (c, t.6, activation), false)?;
            let out = block.out_channels;
            blocks.push(block);
            c = out;
        }
        let last_conv = shape_of(
            state,
            FAMILY,
            &format!("features.{}.0.weight", count + 1),
            4,
        )?[0];
        let hidden = shape_of(state, FAMILY, "classifier.0.weight", 2)?[0];
        let num_classes = shape_of(state, FAMILY, "classifier.3.weight", 2)?[0];
        let config = MobileNetV3Config {
            variant,
            in_channels,
            stem_width,
            blocks,
            last_conv,
            hidden,
            num_classes,
        };
        inferred(state, FAMILY, "features.0.0.weight", config, Self::validate, Self::num_parameters)
    }

    fn build(&self) -> Result<Classifier> {
        self.validate()?;
        let classifier = Sequential::with_input::<Tensor2>()
            .push("0", Linear::new(self.last_conv, self.hidden, true))
            .push("1", Activation::Hardswish)
            .push("2", Dropout::new(0.2)?)
            .push("3", Linear::new(self.hidden, self.num_classes, true));
        let net = MobileParts {
            in_channels: self.in_channels,
            stem: (self.stem_width, Activation::Hardswish),
            blocks: self
                .blocks
                .iter()
                .enumerate()
                .map(|(k, b)| ((k + 1).to_string(), b))
                .collect(),
            last: (
                self.blocks.len() + 1,
                self.last_conv,
                Activation::Hardswish,
            ),
            classifier,
            classes: self.num_classes,
            layout: Layout::Blocks {
                se: Activation::Relu,
                gate: Activation::Hardsigmoid,
            },
            eps: MOBILENET_V3_BN_EPS,
        }
        .build()?;
        Ok(net)
    }

    fn variant(&self) -> Option<&'static str> {
        Some(match self.variant {
            MobileNetV3Variant::Small => "mobilenet_v3_small",
            MobileNetV3Variant::Large => "mobilenet_v3_large",
        })
    }
}
