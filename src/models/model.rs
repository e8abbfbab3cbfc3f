//! Any supported network: the family detected from a state dict's keys, or named.

use super::{EfficientNet, EfficientNetConfig, MobileNetV2, MobileNetV3, MobileNetV3Config};
use super::{MobileNetV3Variant, RegNet, ResNet, Stem, Vgg, VggConfig};
use crate::error::{Error, Result};
use crate::layer::{Layer, NormUpdate, Params, Probe, Visitor, VisitorMut};
use crate::nn::{Tensor2, Tensor4};
use crate::prune::{ChannelPrunable, ChannelScope};
use crate::state_dict::StateDict;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// Which network a checkpoint holds: a family (its shape read off the keys) or a
/// torchvision preset name, which also fixes what the weights cannot tell (the batch
/// norms' ε of EfficientNet B5–B7) and is checked against the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// Detected from the keys.
    Auto,
    /// ResNet, ResNeXt or Wide ResNet (the stem kind given apart).
    ResNet,
    /// RegNet X or Y.
    RegNet,
    /// MobileNetV2 at any width.
    MobileNetV2,
    /// MobileNetV3 small or large.
    MobileNetV3(MobileNetV3Variant),
    /// EfficientNet: B`n` (`n` in 0..=7), or any shapes (`None`).
    EfficientNet(Option<usize>),
    /// VGG with batch norm: VGG-`n` (`n` one of 11, 13, 16, 19), or any convolutions
    /// and pools (`None`).
    Vgg(Option<usize>),
}

impl Arch {
    /// Every name [`Arch::from_str`] accepts.
    pub const NAMES: &'static str = "auto, resnet, regnet, mobilenet_v2, mobilenet_v3_small, \
        mobilenet_v3_large, efficientnet, efficientnet_b0 … efficientnet_b7, vgg, vgg11_bn, \
        vgg13_bn, vgg16_bn, vgg19_bn";

    /// The family this is: `Auto` detects it from `state`'s keys.
    ///
    /// ```
    /// use reflow::models::{Arch, ResNet, ResNetConfig};
    /// use reflow::StateDict;
    ///
    /// let state = StateDict::from_layer(&ResNet::new(ResNetConfig::cifar_resnet(20)?)?);
    /// assert_eq!(Arch::Auto.resolve(&state)?, Arch::ResNet);
    /// assert!(Arch::Auto.resolve(&StateDict::new()).is_err());
    /// # Ok::<(), reflow::Error>(())
    /// ```
    pub fn resolve(self, state: &StateDict) -> Result<Arch> {
        if self != Arch::Auto {
            return Ok(self);
        }
        let has = |k: &str| state.contains(k);
        let found = if has("conv1.weight") && has("layer1.0.conv1.weight") {
            Arch::ResNet
        } else if has("stem.0.weight") && has("trunk_output.block1.block1-0.f.a.0.weight") {
            Arch::RegNet
        } else if has("features.1.conv.0.0.weight") {
            Arch::MobileNetV2
        } else if has("features.1.block.0.0.weight") {
            let blocks =
                super::keys::count_while(state, |k| format!("features.{}.block.0.0.weight", k + 1));
            match blocks {
                11 => Arch::MobileNetV3(MobileNetV3Variant::Small),
                _ => Arch::MobileNetV3(MobileNetV3Variant::Large),
            }
        } else if has("features.1.0.block.0.0.weight") {
            // The variant is told by the shapes; B5–B7 only change the ε.
            Arch::EfficientNet(EfficientNetConfig::infer(state)?.variant())
        } else if has("features.0.weight") && has("classifier.6.weight") {
            Arch::Vgg(None)
        } else {
            let key = state
                .keys()
                .next()
                .unwrap_or("(none: the state dict is empty)");
            return Err(Error::Architecture {
                family: "supported".into(),
                key: key.to_string(),
                reason: "fits no supported family (keys like conv1.weight + layer1.* for a \
                         ResNet, stem.0 + trunk_output.* for a RegNet, features.* + classifier.* \
                         for MobileNet, EfficientNet and VGG)"
                    .into(),
            });
        };
        Ok(found)
    }

    /// The family's name, as the `prune` report writes it.
    pub fn family(self) -> &'static str {
        match self {
            Arch::Auto => "auto",
            Arch::ResNet => "resnet",
            Arch::RegNet => "regnet",
            Arch::MobileNetV2 => "mobilenet_v2",
            Arch::MobileNetV3(_) => "mobilenet_v3",
            Arch::EfficientNet(_) => "efficientnet",
            Arch::Vgg(_) => "vgg",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arch::MobileNetV3(v) => write!(f, "{v}"),
            Arch::EfficientNet(Some(b)) => write!(f, "efficientnet_b{b}"),
            Arch::Vgg(Some(n)) => write!(f, "vgg{n}_bn"),
            other => f.write_str(other.family()),
        }
    }
}

impl FromStr for Arch {
    type Err = Error;

    /// Parses one of [`Arch::NAMES`].
    fn from_str(s: &str) -> Result<Self> {
        let arch = match s {
            "auto" => Arch::Auto,
            "resnet" => Arch::ResNet,
            "regnet" => Arch::RegNet,
            "mobilenet_v2" => Arch::MobileNetV2,
            "mobilenet_v3_small" => Arch::MobileNetV3(MobileNetV3Variant::Small),
            "mobilenet_v3_large" => Arch::MobileNetV3(MobileNetV3Variant::Large),
            "efficientnet" => Arch::EfficientNet(None),
            "vgg" => Arch::Vgg(None),
            "vgg11_bn" => Arch::Vgg(Some(11)),
            "vgg13_bn" => Arch::Vgg(Some(13)),
            "vgg16_bn" => Arch::Vgg(Some(16)),
            "vgg19_bn" => Arch::Vgg(Some(19)),
            _ => match s
                .strip_prefix("efficientnet_b")
                .and_then(|b| b.parse().ok())
            {
                Some(b) if b <= 7 => Arch::EfficientNet(Some(b)),
                _ => {
                    return Err(Error::invalid(
                        "arch",
                        format!("\"{s}\" is none of {}", Arch::NAMES),
                    ))
                }
            },
        };
        Ok(arch)
    }
}

/// A network of any supported family, built from a torchvision-layout state dict.
///
/// ```
/// use reflow::layer::Layer;
/// use reflow::models::{Arch, Model, RegNet, RegNetConfig, Stem};
/// use reflow::StateDict;
/// use ndarray::Array4;
///
/// let state = StateDict::from_layer(&RegNet::new(RegNetConfig::regnet_x_400mf().with_num_classes(5))?);
/// let net = Model::from_state_dict(&state, Arch::Auto, Stem::Imagenet)?;
/// assert_eq!((net.arch().family(), net.num_classes()), ("regnet", 5));
/// assert_eq!(net.forward(&Array4::zeros((1, 3, 32, 32)))?.dim(), (1, 5));
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Model {
    /// [`ResNet`].
    ResNet(ResNet),
    /// [`RegNet`].
    RegNet(RegNet),
    /// [`MobileNetV2`].
    MobileNetV2(MobileNetV2),
    /// [`MobileNetV3`].
    MobileNetV3(MobileNetV3),
    /// [`EfficientNet`].
    EfficientNet(EfficientNet),
    /// [`Vgg`].
    Vgg(Vgg),
}

/// Runs `$body` with `$net` bound to the network inside `$model`.
macro_rules! each {
    ($model:expr, $net:ident => $body:expr) => {
        match $model {
            Model::ResNet($net) => $body,
            Model::RegNet($net) => $body,
            Model::MobileNetV2($net) => $body,
            Model::MobileNetV3($net) => $body,
            Model::EfficientNet($net) => $body,
            Model::Vgg($net) => $body,
        }
    };
}

impl Model {
    /// Builds the network `state` holds, of `arch` (or the family its keys show), and
    /// loads it strictly. `stem` is the stem kind of a ResNet (the keys cannot tell a
    /// CIFAR stem from an ImageNet one but by its kernel, which is checked against
    /// it); the other families ignore it. A named preset is checked against the keys.
    pub fn from_state_dict(state: &StateDict, arch: Arch, stem: Stem) -> Result<Model> {
        let arch = arch.resolve(state)?;
        let model = match arch {
            Arch::ResNet => Model::ResNet(ResNet::from_state_dict(state, stem)?),
            Arch::RegNet => Model::RegNet(RegNet::from_state_dict(state)?),
            Arch::MobileNetV2 => Model::MobileNetV2(MobileNetV2::from_state_dict(state)?),
            Arch::MobileNetV3(variant) => {
                let cfg = MobileNetV3Config::infer(state)?;
                if cfg.variant != variant {
                    return Err(Error::Architecture {
                        family: "MobileNetV3".into(),
                        key: "features".into(),
                        reason: format!("the blocks are {}'s, not {variant}'s", cfg.variant),
                    });
                }
                Model::MobileNetV3(load(state, MobileNetV3::new(cfg)?)?)
            }
            Arch::EfficientNet(b) => {
                let mut cfg = EfficientNetConfig::infer(state)?;
                if let Some(b) = b {
                    let preset = EfficientNetConfig::b(b)?;
                    if cfg.variant() != Some(b) {
                        return Err(Error::Architecture {
                            family: "EfficientNet".into(),
                            key: "features".into(),
                            reason: match cfg.variant() {
                                Some(other) => format!(
                                    "the blocks are efficientnet_b{other}'s, not efficientnet_b{b}'s"
                                ),
                                None => format!(
                                    "the blocks are no torchvision preset's, not efficientnet_b{b}'s (--arch efficientnet reads any)"
                                ),
                            },
                        });
                    }
                    cfg = cfg.with_bn_eps(preset.bn_eps);
                }
                Model::EfficientNet(load(state, EfficientNet::new(cfg)?)?)
            }
            Arch::Vgg(n) => {
                let cfg = VggConfig::infer(state)?;
                if let Some(n) = n {
                    let Some(preset) = VggConfig::preset(&format!("vgg{n}_bn")) else {
                        return Err(Error::invalid(
                            "arch",
                            format!("vgg{n}_bn is not a torchvision preset (11, 13, 16, 19)"),
                        ));
                    };
                    if preset.features != cfg.features {
                        return Err(Error::Architecture {
                            family: "VGG".into(),
                            key: "features".into(),
                            reason: format!("the convolutions and pools are not vgg{n}_bn's"),
                        });
                    }
                }
                Model::Vgg(load(state, Vgg::new(cfg)?)?)
            }
            Arch::Auto => unreachable!("resolved above"),
        };
        Ok(model)
    }

    /// Reads a safetensors checkpoint and builds the network it holds (see
    /// [`Model::from_state_dict`]).
    pub fn load(path: impl AsRef<Path>, arch: Arch, stem: Stem) -> Result<Model> {
        Self::from_state_dict(&StateDict::read_safetensors(path)?, arch, stem)
    }

    /// The network's family and, where the shapes tell it, its variant.
    pub fn arch(&self) -> Arch {
        match self {
            Model::ResNet(_) => Arch::ResNet,
            Model::RegNet(_) => Arch::RegNet,
            Model::MobileNetV2(_) => Arch::MobileNetV2,
            Model::MobileNetV3(n) => Arch::MobileNetV3(n.config().variant),
            Model::EfficientNet(n) => Arch::EfficientNet(n.config().variant()),
            Model::Vgg(n) => Arch::Vgg([11, 13, 16, 19].into_iter().find(|d| {
                VggConfig::preset(&format!("vgg{d}_bn"))
                    .is_some_and(|p| p.features == n.config().features)
            })),
        }
    }

    /// Channels of the input images.
    pub fn in_channels(&self) -> usize {
        each!(self, n => n.in_channels())
    }

    /// Outputs (classes).
    pub fn num_classes(&self) -> usize {
        each!(self, n => n.num_classes())
    }
}

impl ChannelPrunable for Model {
    /// A ResNet's or a VGG's scope (see theirs); empty for the other families, whose
    /// convolutions feed residual additions, or depthwise, grouped or
    /// squeeze-excitation layers.
    fn channel_scope(&self) -> ChannelScope {
        match self {
            Model::ResNet(n) => n.channel_scope(),
            Model::Vgg(n) => n.channel_scope(),
            _ => ChannelScope::default(),
        }
    }

    fn rebuild(&self, state: &StateDict) -> Result<Self> {
        match self {
            Model::ResNet(n) => n.rebuild(state).map(Model::ResNet),
            Model::Vgg(n) => n.rebuild(state).map(Model::Vgg),
            other => Model::from_state_dict(state, other.arch(), Stem::Imagenet),
        }
    }
}

fn load<N: Params>(state: &StateDict, mut net: N) -> Result<N> {
    state.load_into(&mut net)?;
    Ok(net)
}

impl Params for Model {
    fn visit(&self, v: &mut Visitor<'_>) {
        each!(self, n => n.visit(v))
    }

    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        each!(self, n => n.visit_mut(v))
    }
}

impl Layer for Model {
    type Input = Tensor4;
    type Output = Tensor2;

    fn forward_with(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor2> {
        each!(self, n => n.forward_with(x, probe))
    }

    fn forward_train(
        &mut self,
        x: &Tensor4,
        update: NormUpdate,
        probe: &mut Probe<'_>,
    ) -> Result<Tensor2> {
        each!(self, n => n.forward_train(x, update, probe))
    }
}
