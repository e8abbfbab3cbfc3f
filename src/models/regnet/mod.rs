//! RegNet X and Y (Radosavovic et al., 2020) in torchvision's layout.

mod config;

pub use config::{RegNetConfig, RegNetStage};

use super::classifier::{family_network, Classifier};
use super::{Family, FamilyNetwork, Model, Stem};
use crate::error::Result;
use crate::state_dict::StateDict;
use crate::nn::{Activation, AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, ConvBn};
use crate::nn::{Flatten, Linear, Residual, Sequential, SqueezeExcitation};

/// A RegNet with torchvision's module names: `stem` (3×3 stride-2 convolution, batch
/// norm, ReLU), `trunk_output.block{k}.block{k}-{j}` residual bottleneck blocks
/// (`f.a` 1×1, `f.b` grouped 3×3 with the stride, [`f.se` squeeze-excitation,]
/// `f.c` 1×1, each a convolution and batch norm, ReLU after `a` and `b`; shortcut
/// `proj` in each stage's first block; ReLU after the add), `avgpool`, `fc`.
///
/// ```
/// use reflow::layer::{count_parameters, Layer};
/// use reflow::models::{RegNet, RegNetConfig};
/// use ndarray::Array4;
///
/// let net = RegNet::new(RegNetConfig::regnet_x_400mf().with_num_classes(10))?;
/// assert_eq!(count_parameters(&net), RegNetConfig::regnet_x_400mf().with_num_classes(10).num_parameters());
/// assert_eq!(net.forward(&Array4::zeros((1, 3, 64, 64)))?.dim(), (1, 10));
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug)]
pub struct RegNet {
    config: RegNetConfig,
    net: Classifier,
}

family_network!(RegNet, RegNetConfig, infer);

/// `conv → bn → activation` under `<name>.0` and `<name>.1` (torchvision's
/// `Conv2dNormActivation`), or `0` and `1` for an empty name.
fn unit(name: &str, conv: Conv2dConfig, activation: Activation) -> Result<ConvBn> {
    let bn = BatchNorm2d::new(conv.out_channels, 1e-5);
    let (c, b) = (crate::layer::join(name, "0"), crate::layer::join(name, "1"));
    ConvBn::new(c, Conv2d::new(conv)?, b, bn, activation)
}

impl RegNet {
    /// Builds the network with zero weights, γ = 1, β = 0 and running statistics
    /// (0, 1); fill it with [`StateDict::load_into`](crate::StateDict::load_into) or use [`RegNet::from_state_dict`].
    pub fn new(config: RegNetConfig) -> Result<Self> {
        config.validate()?;
        let stem = Conv2dConfig::new(config.in_channels, config.stem_width, 3)
            .stride(2)
            .padding(1);
        let mut trunk = Sequential::new();
        let mut c = config.stem_width;
        for (k, stage) in config.stages.iter().enumerate() {
            let k = k + 1;
            let mut blocks = Sequential::new();
            for j in 0..stage.depth {
                let stride = if j == 0 { 2 } else { 1 };
                let (wb, w) = (stage.bottleneck, stage.width);
                let mut f = Sequential::new()
                    .push(
                        "",
                        unit("f.a", Conv2dConfig::new(c, wb, 1), Activation::Relu)?,
                    )
                    .push(
                        "",
                        unit(
                            "f.b",
                            Conv2dConfig::new(wb, wb, 3)
                                .stride(stride)
                                .padding(1)
                                .groups(stage.groups),
                            Activation::Relu,
                        )?,
                    );
                if let Some(q) = config.squeeze(c) {
                    let se = SqueezeExcitation::new(wb, q, Activation::Relu, Activation::Sigmoid)?;
                    f = f.push("f.se", se);
                }
                let f = f.push(
                    "",
                    unit("f.c", Conv2dConfig::new(wb, w, 1), Activation::Identity)?,
                );
                let block = if j == 0 {
                    let proj = Conv2dConfig::new(c, w, 1).stride(stride);
                    let proj = Sequential::new().push("", unit("", proj, Activation::Identity)?);
                    Residual::with_shortcut(f, "proj", proj)
                } else {
                    Residual::identity(f)
                };
                blocks = blocks.push(format!("block{k}-{j}"), block);
                c = w;
            }
            trunk = trunk.push(format!("block{k}"), blocks);
        }
        let net = Sequential::new()
            .push("", unit("stem", stem, Activation::Relu)?)
            .push("trunk_output", trunk)
            .push("avgpool", AdaptiveAvgPool2d::global())
            .push("flatten", Flatten)
            .push("fc", Linear::new(c, config.num_classes, true));
        Ok(RegNet {
            net: Classifier {
                family: "RegNet",
                in_channels: config.in_channels,
                classes: config.num_classes,
                stem: (config.stem_width, 2),
                net,
            },
            config,
        })
    }
}

/// The RegNet family in torchvision's layout: RegNet X and Y at any widths.
#[derive(Debug)]
pub struct RegNetFamily;

impl Family for RegNetFamily {
    fn name(&self) -> &'static str {
        "regnet"
    }

    fn title(&self) -> &'static str {
        "RegNet"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["stem.0.weight", "trunk_output.block1.block1-0.f.a.0.weight"]
    }

    fn load(&self, state: &StateDict, _stem: Stem) -> Result<Model> {
        RegNet::from_state_dict(state).map(Model::new)
    }
}

impl FamilyNetwork for RegNet {
    fn family(&self) -> &'static dyn Family {
        &RegNetFamily
    }

    fn in_channels(&self) -> usize {
        self.net.in_channels
    }

    fn num_classes(&self) -> usize {
        self.net.classes
    }
}
