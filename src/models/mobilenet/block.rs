//! The inverted residual (MBConv) block that MobileNetV2, MobileNetV3 and EfficientNet
//! share: expand (1×1), depthwise (k×k, strided), optional squeeze-excitation, project
//! (1×1, no activation), and the identity added when the shape allows.

use crate::error::Result;
use crate::layer::{Layer, Params, Probe, Visitor, VisitorMut};
use crate::nn::{Activation, BatchNorm2d, Conv2d, Conv2dConfig, ConvBn, Residual, Sequential};
use crate::nn::{SqueezeExcitation, Tensor4};

/// One inverted residual block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MobileBlock {
    /// Channels in.
    pub in_channels: usize,
    /// Channels after the expansion (`in_channels` when the block does not expand).
    pub expanded: usize,
    /// Channels out.
    pub out_channels: usize,
    /// The depthwise convolution's kernel (3 or 5).
    pub kernel: usize,
    /// The depthwise convolution's stride.
    pub stride: usize,
    /// Channels of the squeeze-excitation, when the block has one.
    pub squeeze: Option<usize>,
    /// The activation after the expansion and the depthwise convolution.
    pub activation: Activation,
}

impl MobileBlock {
    /// Whether the input is added to the output: stride 1 and as many channels out as
    /// in.
    pub fn is_residual(&self) -> bool {
        self.stride == 1 && self.in_channels == self.out_channels
    }

    /// Parameters, as PyTorch counts them.
    pub fn num_parameters(&self) -> usize {
        let (i, e, o, k) = (
            self.in_channels,
            self.expanded,
            self.out_channels,
            self.kernel,
        );
        let expand = if e != i { i * e + 2 * e } else { 0 };
        let se = self.squeeze.map_or(0, |q| e * q + q + q * e + e);
        expand + e * k * k + 2 * e + se + e * o + 2 * o
    }

    pub(crate) fn validate(&self, family: &str) -> Result<()> {
        let sizes = [
            self.in_channels,
            self.expanded,
            self.out_channels,
            self.kernel,
            self.stride,
        ];
        if sizes.contains(&0) || self.squeeze == Some(0) {
            return Err(crate::Error::invalid(
                format!("{family} block"),
                format!("{self:?}: every size must be positive"),
            ));
        }
        Ok(())
    }
}

/// How a family names a block's parts, and what its squeeze-excitation computes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Layout {
    /// MobileNetV2: `conv.{0,1}` per unit, the projection's conv and batch norm at two
    /// indices of their own.
    V2,
    /// MobileNetV3 and EfficientNet: `block.{j}.{0,1}` per unit, squeeze-excitation as
    /// `block.{j}` with this activation and gate.
    Blocks { se: Activation, gate: Activation },
}

/// A block as a layer: the residual connection (with no activation after the add)
/// or the plain chain.
#[derive(Debug)]
pub(crate) enum InvertedResidual {
    Residual(Residual),
    Plain(Sequential),
}

fn unit(
    conv: &str,
    bn: &str,
    config: Conv2dConfig,
    activation: Activation,
    eps: f32,
) -> Result<ConvBn> {
    let norm = BatchNorm2d::new(config.out_channels, eps);
    ConvBn::new(conv, Conv2d::new(config)?, bn, norm, activation)
}

impl InvertedResidual {
    pub(crate) fn new(b: &MobileBlock, layout: Layout, eps: f32) -> Result<Self> {
        let (prefix, mut j) = match layout {
            Layout::V2 => ("conv", 0),
            Layout::Blocks { .. } => ("block", 0),
        };
        let name = |j: usize, part: usize| format!("{prefix}.{j}.{part}");
        let mut body = Sequential::new();
        if b.expanded != b.in_channels {
            let expand = Conv2dConfig::new(b.in_channels, b.expanded, 1);
            body = body.push(
                "",
                unit(&name(j, 0), &name(j, 1), expand, b.activation, eps)?,
            );
            j += 1;
        }
        let depthwise = Conv2dConfig::new(b.expanded, b.expanded, b.kernel)
            .stride(b.stride)
            .padding((b.kernel - 1) / 2)
            .groups(b.expanded);
        body = body.push(
            "",
            unit(&name(j, 0), &name(j, 1), depthwise, b.activation, eps)?,
        );
        j += 1;
        let project = Conv2dConfig::new(b.expanded, b.out_channels, 1);
        body = match layout {
            Layout::V2 => {
                let (conv, bn) = (format!("{prefix}.{j}"), format!("{prefix}.{}", j + 1));
                body.push("", unit(&conv, &bn, project, Activation::Identity, eps)?)
            }
            Layout::Blocks { se, gate } => {
                if let Some(q) = b.squeeze {
                    let layer = SqueezeExcitation::new(b.expanded, q, se, gate)?;
                    body = body.push(format!("{prefix}.{j}"), layer);
                    j += 1;
                }
                let (conv, bn) = (name(j, 0), name(j, 1));
                body.push("", unit(&conv, &bn, project, Activation::Identity, eps)?)
            }
        };
        Ok(if b.is_residual() {
            InvertedResidual::Residual(Residual::identity(body).with_post(Activation::Identity))
        } else {
            InvertedResidual::Plain(body)
        })
    }
}

impl Params for InvertedResidual {
    fn visit(&self, v: &mut Visitor<'_>) {
        match self {
            InvertedResidual::Residual(r) => v.child("", r),
            InvertedResidual::Plain(s) => v.child("", s),
        }
    }

    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        match self {
            InvertedResidual::Residual(r) => v.child("", r),
            InvertedResidual::Plain(s) => v.child("", s),
        }
    }
}

impl Layer for InvertedResidual {
    type Input = Tensor4;
    type Output = Tensor4;

    fn blocked(&self) -> Option<&dyn crate::nn::blocked::BlockedLayer> {
        match self {
            InvertedResidual::Residual(r) => r.blocked(),
            InvertedResidual::Plain(s) => s.blocked(),
        }
    }

    fn forward_with(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        match self {
            InvertedResidual::Residual(r) => r.forward_with(x, probe),
            InvertedResidual::Plain(s) => s.forward_with(x, probe),
        }
    }

    fn forward_train(
        &mut self,
        x: &Tensor4,
        probe: &mut Probe<'_>,
    ) -> Result<Tensor4> {
        match self {
            InvertedResidual::Residual(r) => r.forward_train(x, probe),
            InvertedResidual::Plain(s) => s.forward_train(x, probe),
        }
    }
}

/// Parameters of a mobile network but its classifier: the 3×3 stem (`stem` outputs),
/// the blocks and the last 1×1 convolution (`last` outputs), each with its batch norm.
pub(crate) fn body_parameters<'a>(
    in_channels: usize,
    stem: usize,
    blocks: impl Iterator<Item = &'a MobileBlock>,
    last: usize,
) -> usize {
    let (mut c, mut n) = (stem, stem * in_channels * 9 + 2 * stem);
    for b in blocks {
        n += b.num_parameters();
        c = b.out_channels;
    }
    n + last * c + 2 * last
}

/// Checks that every size of a mobile network's config is positive, its blocks too.
pub(crate) fn validate_sizes<'a>(
    family: &str,
    sizes: &[usize],
    mut blocks: impl Iterator<Item = &'a MobileBlock>,
) -> Result<()> {
    if sizes.contains(&0) {
        return Err(crate::Error::invalid(
            format!("{family} config"),
            "every size must be positive",
        ));
    }
    blocks.try_for_each(|b| b.validate(family))
}

/// Reads the block whose units are `<prefix>.{j}.*` (MobileNetV3's and EfficientNet's
/// layout) off `state`: an expansion when the first unit is not a depthwise
/// convolution of `in_channels`, the depthwise kernel, the squeeze-excitation (when
/// present, or required) and the projection's outputs.
pub(crate) fn read_block(
    state: &crate::StateDict,
    family: &str,
    prefix: &str,
    (in_channels, stride, activation): (usize, usize, Activation),
    se_required: bool,
) -> Result<MobileBlock> {
    use crate::models::keys::{shape_of, width_of};
    let key = |j: usize, s: &str| format!("{prefix}.{j}.{s}");
    let first = shape_of(state, family, &key(0, "0.weight"), 4)?;
    // The first unit is the depthwise convolution unless the block expands.
    let expands = !(first[1] == 1 && first[0] == in_channels);
    let j = usize::from(expands);
    let expanded = if expands { first[0] } else { in_channels };
    let kernel = shape_of(state, family, &key(j, "0.weight"), 4)?[2];
    let se = key(j + 1, "fc1.weight");
    let squeeze = match se_required || state.contains(&se) {
        true => {
            let (bias, fc2) = (key(j + 1, "fc1.bias"), key(j + 1, "fc2.weight"));
            Some(width_of(
                state,
                family,
                (&se, 4, 0),
                &[(&bias, 0), (&fc2, 1)],
            )?)
        }
        false => None,
    };
    let project = key(j + 1 + usize::from(squeeze.is_some()), "0.weight");
    Ok(MobileBlock {
        in_channels,
        expanded,
        out_channels: shape_of(state, family, &project, 4)?[0],
        kernel,
        stride,
        squeeze,
        activation,
    })
}

/// torchvision's `_make_divisible(v, 8)`: `v` rounded to the nearest multiple of 8, at
/// least 8, and not below 90 % of `v`.
pub(crate) fn make_divisible(v: f64) -> usize {
    let d = 8usize;
    let rounded = ((v + d as f64 / 2.0) as usize) / d * d;
    let mut new = rounded.max(d);
    if (new as f64) < 0.9 * v {
        new += d;
    }
    new
}

/// A whole mobile network: `features.0` (3×3 stride-2 stem), the blocks under their
/// names in `features`, `features.{last}` (1×1), global pooling and `classifier`.
pub(crate) struct MobileParts<'a> {
    pub in_channels: usize,
    pub stem: (usize, Activation),
    /// `(name in features, block)`, in order.
    pub blocks: Vec<(String, &'a MobileBlock)>,
    /// The last 1×1 convolution's index in `features`, outputs and activation.
    pub last: (usize, usize, Activation),
    pub classifier: Sequential<crate::nn::Tensor2, crate::nn::Tensor2>,
    pub classes: usize,
    pub layout: Layout,
    pub eps: f32,
}

impl MobileParts<'_> {
    pub(crate) fn build(self) -> Result<crate::models::classifier::Classifier> {
        use crate::nn::{AdaptiveAvgPool2d, Flatten};
        let (stem_width, stem_act) = self.stem;
        let stem = Conv2dConfig::new(self.in_channels, stem_width, 3)
            .stride(2)
            .padding(1);
        let mut features =
            Sequential::new().push("", unit("0.0", "0.1", stem, stem_act, self.eps)?);
        let mut c = stem_width;
        for (name, b) in &self.blocks {
            features = features.push(
                name.clone(),
                InvertedResidual::new(b, self.layout, self.eps)?,
            );
            c = b.out_channels;
        }
        let (k, width, activation) = self.last;
        let last = Conv2dConfig::new(c, width, 1);
        let (conv, bn) = (format!("{k}.0"), format!("{k}.1"));
        features = features.push("", unit(&conv, &bn, last, activation, self.eps)?);
        let net = Sequential::new()
            .push("features", features)
            .push("avgpool", AdaptiveAvgPool2d::global())
            .push("flatten", Flatten)
            .push("classifier", self.classifier);
        Ok(crate::models::Classifier::new(
            net,
            self.in_channels,
            self.classes,
            (stem_width, 2),
        ))
    }
}
