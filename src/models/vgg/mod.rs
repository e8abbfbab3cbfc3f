//! VGG with batch norm (`vgg11_bn` … `vgg19_bn`) in torchvision's layout.

mod config;

pub use config::{VggConfig, VggLayer};

use super::classifier::{family_network, Classifier};
use super::{Family, FamilyNetwork, Model, Stem};
use crate::error::Result;
use crate::nn::{Activation, AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, ConvBn};
use crate::nn::{Dropout, Flatten, Linear, MaxPool2d, Sequential, Tensor2};
use crate::prune::{ChannelCoupling, ChannelPrunable, ChannelScope};
use crate::state_dict::StateDict;

/// A VGG with batch norm and torchvision's module names: `features.{i}` (3×3
/// convolution with bias, batch norm and ReLU at `i`, `i + 1`, `i + 2`; a 2×2 max
/// pool at one index), `avgpool` (adaptive, to `pool × pool` at any input size),
/// `classifier.{0, 3, 6}` (linear layers; ReLU and dropout, the identity in eval, in
/// between).
///
/// ```
/// use reflow::layer::{count_parameters, Layer};
/// use reflow::models::{Vgg, VggConfig};
/// use ndarray::Array4;
///
/// let cfg = VggConfig::from_widths(&[8, 0, 16, 0]).with_hidden(32).with_num_classes(10);
/// let net = Vgg::new(cfg.clone())?;
/// assert_eq!(count_parameters(&net), cfg.num_parameters());
/// assert_eq!(net.forward(&Array4::zeros((2, 3, 20, 20)))?.dim(), (2, 10));
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug)]
pub struct Vgg {
    config: VggConfig,
    net: Classifier,
}

family_network!(Vgg, VggConfig, infer);

impl Vgg {
    /// Builds the network with zero weights, γ = 1, β = 0 and running statistics
    /// (0, 1); fill it with [`StateDict::load_into`](crate::StateDict::load_into) or use [`Vgg::from_state_dict`].
    pub fn new(config: VggConfig) -> Result<Self> {
        config.validate()?;
        let (mut features, mut c, mut i) = (Sequential::new(), config.in_channels, 0);
        for layer in &config.features {
            match *layer {
                super::VggLayer::Conv(w) => {
                    let conv = Conv2d::new(Conv2dConfig::new(c, w, 3).padding(1).bias(true))?;
                    let bn = BatchNorm2d::new(w, 1e-5);
                    let (conv_name, bn_name) = (i.to_string(), (i + 1).to_string());
                    let unit = ConvBn::new(conv_name, conv, bn_name, bn, Activation::Relu)?;
                    features = features.push("", unit);
                    (c, i) = (w, i + 3);
                }
                super::VggLayer::Pool => {
                    features = features.push(i.to_string(), MaxPool2d::new(2, 2, 0)?);
                    i += 1;
                }
            }
        }
        let (flat, hidden) = (c * config.pool * config.pool, config.hidden);
        let classifier = Sequential::with_input::<Tensor2>()
            .push("0", Linear::new(flat, hidden, true))
            .push("1", Activation::Relu)
            .push("2", Dropout::new(0.5)?)
            .push("3", Linear::new(hidden, hidden, true))
            .push("4", Activation::Relu)
            .push("5", Dropout::new(0.5)?)
            .push("6", Linear::new(hidden, config.num_classes, true));
        let net = Sequential::new()
            .push("features", features)
            .push("avgpool", AdaptiveAvgPool2d::new(config.pool, config.pool)?)
            .push("flatten", Flatten)
            .push("classifier", classifier);
        let first = config.features.iter().find_map(|l| match l {
            super::VggLayer::Conv(w) => Some(*w),
            super::VggLayer::Pool => None,
        });
        Ok(Vgg {
            net: Classifier {
                family: "VGG",
                in_channels: config.in_channels,
                classes: config.num_classes,
                stem: (first.unwrap_or(c), 1),
                net,
            },
            config,
        })
    }
}

impl ChannelPrunable for Vgg {
    /// Every convolution: its channels feed its batch norm, a ReLU, perhaps a pool,
    /// and the next convolution — or, for the last, the classifier's first linear
    /// layer, `pool²` inputs per channel.
    fn channel_scope(&self) -> ChannelScope {
        let (mut convs, mut i) = (Vec::new(), 0);
        for layer in &self.config.features {
            match layer {
                VggLayer::Conv(_) => {
                    convs.push(i);
                    i += 3;
                }
                VggLayer::Pool => i += 1,
            }
        }
        let couplings = convs
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let (conv, norm) = (format!("features.{i}"), format!("features.{}", i + 1));
                match convs.get(k + 1) {
                    Some(next) => ChannelCoupling::new(conv, norm, format!("features.{next}")),
                    None => ChannelCoupling::new(conv, norm, "classifier.0")
                        .flattened(self.config.pool * self.config.pool),
                }
            })
            .collect();
        ChannelScope {
            couplings,
            skipped: Vec::new(),
        }
    }

    fn rebuild(&self, state: &StateDict) -> Result<Self> {
        Vgg::from_state_dict(state)
    }
}

/// The VGG family with batch norm in torchvision's layout: `vgg11_bn` … `vgg19_bn`
/// or any convolutions and pools.
#[derive(Debug)]
pub struct VggFamily;

impl Family for VggFamily {
    fn name(&self) -> &'static str {
        "vgg"
    }

    fn title(&self) -> &'static str {
        "VGG"
    }

    fn variants(&self) -> &'static [&'static str] {
        &["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
    }

    fn keys(&self) -> &'static [&'static str] {
        &["features.0.weight", "classifier.6.weight"]
    }

    fn load(&self, state: &StateDict, _stem: Stem) -> Result<Model> {
        Vgg::from_state_dict(state).map(Model::new)
    }

    fn channel_pruning(&self) -> Option<&'static str> {
        Some("VGG (every convolution)")
    }
}

impl FamilyNetwork for Vgg {
    fn family(&self) -> &'static dyn Family {
        &VggFamily
    }

    fn variant(&self) -> Option<&'static str> {
        VggFamily.variants().iter().copied().find(|name| {
            VggConfig::preset(name).is_some_and(|p| p.features == self.config.features)
        })
    }

    fn in_channels(&self) -> usize {
        self.net.in_channels
    }

    fn num_classes(&self) -> usize {
        self.net.classes
    }

    fn channel_scope(&self) -> Option<ChannelScope> {
        Some(ChannelPrunable::channel_scope(self))
    }
}
