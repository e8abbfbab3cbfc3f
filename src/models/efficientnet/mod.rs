//! EfficientNet B0–B7 (Tan & Le, 2019) in torchvision's layout.

use crate::models::{About, Architecture, Classifier, Net};
use super::keys::{arch, inferred, count_while, shape_of};
use super::mobilenet::block::{body_parameters, make_divisible, read_block, validate_sizes};
use super::mobilenet::block::{Layout, MobileBlock, MobileParts};
use crate::error::{Error, Result};
use crate::nn::{Activation, Dropout, Linear, Sequential, Tensor2};
use crate::state_dict::StateDict;

const FAMILY: &str = "EfficientNet";

/// torchvision's base setting per stage: (expand ratio, kernel, stride, input,
/// output, blocks).
const BASE: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
];

/// B0 … B7: (width multiplier, depth multiplier, dropout, batch-norm ε).
const VARIANTS: [(f64, f64, f64, f32); 8] = [
    (1.0, 1.0, 0.2, 1e-5),
    (1.0, 1.1, 0.2, 1e-5),
    (1.1, 1.2, 0.3, 1e-5),
    (1.2, 1.4, 0.3, 1e-5),
    (1.4, 1.8, 0.4, 1e-5),
    (1.6, 2.2, 0.4, 1e-3),
    (1.8, 2.6, 0.5, 1e-3),
    (2.0, 3.1, 0.5, 1e-3),
];

/// Everything that determines an EfficientNet's layers: torchvision's
/// `efficientnet_b0` … `efficientnet_b7`, or the widths and depths read off a
/// checkpoint. Stochastic depth is the identity in eval (and in calibration: REFLOW
/// changes only the batch norms' behaviour).
///
/// ```
/// use reflow::models::EfficientNetConfig;
///
/// assert_eq!(EfficientNetConfig::b(0)?.num_parameters(), 5_288_548);
/// assert_eq!(EfficientNetConfig::b(7)?.bn_eps, 1e-3);
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EfficientNetConfig {
    /// Channels of the input images.
    pub in_channels: usize,
    /// Outputs of the stem (`features.0`).
    pub stem_width: usize,
    /// The stages `features.1` … `features.7`, each a list of MBConv blocks (SiLU,
    /// squeeze-excitation to a quarter of the block's input).
    pub stages: Vec<Vec<MobileBlock>>,
    /// Outputs of the last 1×1 convolution (4 × the last stage's).
    pub last_conv: usize,
    /// Outputs of `classifier.1`.
    pub num_classes: usize,
    /// The batch norms' ε: 1e-5 for B0–B4, 1e-3 for B5–B7 (not stored in the weights).
    pub bn_eps: f32,
}

impl EfficientNetConfig {
    /// torchvision `efficientnet_b{index}`, `index` in 0..=7.
    pub fn b(index: usize) -> Result<Self> {
        let &(width, depth, _, bn_eps) = VARIANTS.get(index).ok_or_else(|| {
            Error::invalid(
                "EfficientNet",
                format!("b{index}: the variants are b0 … b7"),
            )
        })?;
        let adjust = |c: usize| make_divisible(c as f64 * width);
        let mut stages = Vec::new();
        for (t, k, s, i, o, n) in BASE {
            let n = (n as f64 * depth).ceil() as usize;
            let (mut c, out) = (adjust(i), adjust(o));
            let mut blocks = Vec::new();
            for b in 0..n {
                blocks.push(MobileBlock {
                    in_channels: c,
                    expanded: make_divisible((c * t) as f64),
                    out_channels: out,
                    kernel: k,
                    stride: if b == 0 { s } else { 1 },
                    squeeze: Some((c / 4).max(1)),
                    activation: Activation::Silu,
                });
                c = out;
            }
            stages.push(blocks);
        }
        let last = stages
            .last()
            .and_then(|s| s.last())
            .expect("stages")
            .out_channels;
        Ok(EfficientNetConfig {
            in_channels: 3,
            stem_width: adjust(32),
            stages,
            last_conv: 4 * last,
            num_classes: 1000,
            bn_eps,
        })
    }

    /// The variant (0 … 7) whose shapes these are, if any.
    pub fn variant(&self) -> Option<usize> {
        let same = |b: &EfficientNetConfig| {
            (b.stem_width, &b.stages, b.last_conv)
                == (self.stem_width, &self.stages, self.last_conv)
        };
        (0..8).find(|&i| Self::b(i).is_ok_and(|b| same(&b)))
    }

    channel_and_class_builders!();

    /// The same network with batch norms of ε = `eps`.
    pub fn with_bn_eps(mut self, eps: f32) -> Self {
        self.bn_eps = eps;
        self
    }

    /// Number of parameters, as PyTorch counts them.
    pub fn num_parameters(&self) -> usize {
        let blocks = self.stages.iter().flatten();
        let body = body_parameters(self.in_channels, self.stem_width, blocks, self.last_conv);
        body + self.last_conv * self.num_classes + self.num_classes
    }

    fn validate(&self) -> Result<()> {
        if self.stages.iter().any(Vec::is_empty) {
            return Err(Error::invalid(
                "EfficientNet config",
                "a stage without blocks",
            ));
        }
        if !(self.bn_eps > 0.0 && self.bn_eps.is_finite()) {
            return Err(Error::invalid(
                "EfficientNet config",
                format!("bn_eps {}", self.bn_eps),
            ));
        }
        let sizes = [
            self.in_channels,
            self.stem_width,
            self.last_conv,
            self.num_classes,
        ];
        validate_sizes(FAMILY, &sizes, self.stages.iter().flatten())
    }

}

/// EfficientNet with torchvision's module names: `features.0` (3×3 stride-2, batch
/// norm, SiLU), stages `features.{1..7}.{b}.block.{j}` (MBConv: expansion,
/// depthwise, squeeze-excitation with a sigmoid gate, projection; stochastic depth,
/// the identity in eval, on the residual branch), `features.8` (1×1, SiLU), global
/// pooling, `classifier.1` (after dropout).
///
/// ```
/// use reflow::layer::{count_parameters, Layer};
/// use reflow::models::{EfficientNet, EfficientNetConfig};
/// use ndarray::Array4;
///
/// let net = EfficientNet::new(EfficientNetConfig::b(0)?.with_num_classes(10))?;
/// assert_eq!(net.forward(&Array4::zeros((1, 3, 32, 32)))?.dim(), (1, 10));
/// # Ok::<(), reflow::Error>(())
/// ```
pub type EfficientNet = Net<EfficientNetConfig>;

impl Architecture for EfficientNetConfig {
    const ABOUT: About = About::new("efficientnet", FAMILY, &["features.1.0.block.0.0.weight"]).variants(&VARIANT_NAMES);

    /// Reads the shape off a torchvision-layout EfficientNet state dict: stages and
    /// blocks from the keys, widths, kernels and squeezes from the shapes, the strides
    /// from torchvision's setting. The batch norms' ε is the matching variant's (1e-3
    /// for B5–B7), 1e-5 for shapes of no variant (see
    /// [`EfficientNetConfig::with_bn_eps`]).
    ///
    /// ```
    /// use reflow::models::{Architecture, EfficientNet, EfficientNetConfig};
    /// use reflow::StateDict;
    ///
    /// let cfg = EfficientNetConfig::b(5)?.with_num_classes(10);
    /// let state = StateDict::from_layer(&EfficientNet::new(cfg.clone())?);
    /// let inferred = EfficientNetConfig::infer(&state)?;
    /// assert_eq!(inferred, cfg);
    /// assert_eq!((inferred.variant(), inferred.bn_eps), (Some(5), 1e-3));
    /// # Ok::<(), reflow::Error>(())
    /// ```
    fn infer(state: &StateDict) -> Result<Self> {
        let stem = shape_of(state, FAMILY, "features.0.0.weight", 4)?;
        let (stem_width, in_channels) = (stem[0], stem[1]);
        let (mut c, mut stages) = (stem_width, Vec::new());
        for (s, base) in (1..=BASE.len()).zip(BASE) {
            let n = count_while(state, |b| format!("features.{s}.{b}.block.0.0.weight"));
            if n == 0 {
                return Err(arch(
                    FAMILY,
                    &format!("features.{s}.0.block.0.0.weight"),
                    "missing: EfficientNet has 7 stages",
                ));
            }
            let mut blocks = Vec::new();
            for b in 0..n {
                let stride = if b == 0 { base.2 } else { 1 };
                let prefix = format!("features.{s}.{b}.block");
                let block =
                    read_block(state, FAMILY, &prefix, (c, stride, Activation::Silu), true)?;
                let out = block.out_channels;
                blocks.push(block);
                c = out;
            }
            stages.push(blocks);
        }
        let last_conv = shape_of(state, FAMILY, "features.8.0.weight", 4)?[0];
        let num_classes = shape_of(state, FAMILY, "classifier.1.weight", 2)?[0];
        let mut cfg = EfficientNetConfig {
            in_channels,
            stem_width,
            stages,
            last_conv,
            num_classes,
            bn_eps: 1e-5,
        };
        if let Some(v) = cfg.variant() {
            cfg.bn_eps = VARIANTS[v].3;
        }
        inferred(state, FAMILY, "features.0.0.weight", cfg, Self::validate, Self::num_parameters)
    }

    fn build(&self) -> Result<Classifier> {
        self.validate()?;
        let classifier = Sequential::with_input::<Tensor2>()
            .push("0", Dropout::new(0.2)?)
            .push("1", Linear::new(self.last_conv, self.num_classes, true));
        let blocks = self
            .stages
            .iter()
            .enumerate()
            .flat_map(|(s, blocks)| {
                blocks
                    .iter()
                    .enumerate()
                    .map(move |(b, block)| (format!("{}.{b}", s + 1), block))
            })
            .collect();
        let net = MobileParts {
            in_channels: self.in_channels,
            stem: (self.stem_width, Activation::Silu),
            blocks,
            last: (self.stages.len() + 1, self.last_conv, Activation::Silu),
            classifier,
            classes: self.num_classes,
            layout: Layout::Blocks {
                se: Activation::Silu,
                gate: Activation::Sigmoid,
            },
            eps: self.bn_eps,
        }
        .build()?;
        Ok(net)
    }

    fn variant(&self) -> Option<&'static str> {
        EfficientNetConfig::variant(self).map(|b| VARIANT_NAMES[b])
    }
}

/// torchvision's names of B0 … B7.
const VARIANT_NAMES: [&str; 8] = [
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
];
