//! RegNet X and Y (Radosavovic et al., 2020) in torchvision's layout.

mod config;

pub use config::{RegNetConfig, RegNetStage};

use super::{About, Architecture, Classifier, Net};
use crate::models::keys::{arch, count_while, inferred, shape_of, width_of};
use config::FAMILY;
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
pub type RegNet = Net<RegNetConfig>;

/// `conv → bn → activation` under `<name>.0` and `<name>.1` (torchvision's
/// `Conv2dNormActivation`), or `0` and `1` for an empty name.
fn unit(name: &str, conv: Conv2dConfig, activation: Activation) -> Result<ConvBn> {
    let bn = BatchNorm2d::new(conv.out_channels, 1e-5);
    let (c, b) = (crate::layer::join(name, "0"), crate::layer::join(name, "1"));
    ConvBn::new(c, Conv2d::new(conv)?, b, bn, activation)
}

impl Architecture for RegNetConfig {
    const ABOUT: About = About::new("regnet", FAMILY, &["stem.0.weight", "trunk_output.block1.block1-0.f.a.0.weight"]);

    /// Reads the network's shape off a torchvision-layout RegNet state dict: stem,
    /// stages and blocks from the keys, widths, bottlenecks and groups from the
    /// shapes, squeeze-excitation (RegNetY) and its ratio from `f.se.fc1`. The strides
    /// are torchvision's (2 in the first block of every stage). The error names the
    /// first key that does not fit.
    ///
    /// ```
    /// use reflow::models::{Architecture, RegNet, RegNetConfig};
    /// use reflow::StateDict;
    ///
    /// let cfg = RegNetConfig::regnet_y_400mf().with_num_classes(10);
    /// let state = StateDict::from_layer(&RegNet::new(cfg.clone())?);
    /// assert_eq!(RegNetConfig::infer(&state)?, cfg);
    /// # Ok::<(), reflow::Error>(())
    /// ```
    fn infer(state: &StateDict) -> Result<Self> {
        let stem = shape_of(state, FAMILY, "stem.0.weight", 4)?;
        let (stem_width, in_channels) = (stem[0], stem[1]);
        let block = |k: usize, j: usize| format!("trunk_output.block{k}.block{k}-{j}");
        let stage_count = count_while(state, |k| format!("{}.f.a.0.weight", block(k + 1, 0)));
        if stage_count == 0 {
            return Err(arch(
                FAMILY,
                &format!("{}.f.a.0.weight", block(1, 0)),
                "missing",
            ));
        }
        let se = state.contains(&format!("{}.f.se.fc1.weight", block(1, 0)));
        let (mut stages, mut c, mut se_ratio) = (Vec::new(), stem_width, None);
        for k in 1..=stage_count {
            let depth = count_while(state, |j| format!("{}.f.a.0.weight", block(k, j)));
            let c_key = format!("{}.f.c.0.weight", block(k, 0));
            let b_key = format!("{}.f.b.0.weight", block(k, 0));
            let width = shape_of(state, FAMILY, &c_key, 4)?[0];
            let b = shape_of(state, FAMILY, &b_key, 4)?;
            let (bottleneck, per_group) = (b[0], b[1]);
            if !bottleneck.is_multiple_of(per_group) {
                return Err(arch(
                    FAMILY,
                    &b_key,
                    format!("{per_group} inputs per group do not divide {bottleneck} channels"),
                ));
            }
            for j in 0..depth {
                let proj = format!("{}.proj.0.weight", block(k, j));
                if state.contains(&proj) != (j == 0) {
                    let why = if j == 0 {
                        "missing: the first block of a stage strides"
                    } else {
                        "unexpected: only a stage's first block has a projection"
                    };
                    return Err(arch(FAMILY, &proj, why));
                }
                let fc1 = format!("{}.f.se.fc1.weight", block(k, j));
                match (se, state.contains(&fc1)) {
                    (true, true) => {
                        let (bias, fc2) = (
                            format!("{}.f.se.fc1.bias", block(k, j)),
                            format!("{}.f.se.fc2.weight", block(k, j)),
                        );
                        let q = width_of(state, FAMILY, (&fc1, 4, 0), &[(&bias, 0), (&fc2, 1)])?;
                        let r = *se_ratio.get_or_insert(q as f64 / c as f64);
                        if (r * c as f64).round_ties_even() as usize != q {
                            return Err(arch(
                                FAMILY,
                                &fc1,
                                format!("a squeeze of {q} for {c} inputs does not follow the ratio {r} of the first block"),
                            ));
                        }
                    }
                    (false, false) => {}
                    (true, false) => return Err(arch(FAMILY, &fc1, "missing (RegNetY)")),
                    (false, true) => return Err(arch(FAMILY, &fc1, "unexpected (RegNetX)")),
                }
                c = width;
            }
            stages.push(RegNetStage {
                depth,
                width,
                bottleneck,
                groups: bottleneck / per_group,
            });
        }
        let num_classes = shape_of(state, FAMILY, "fc.weight", 2)?[0];
        let config = RegNetConfig {
            stem_width,
            stages,
            se_ratio,
            in_channels,
            num_classes,
        };
        inferred(state, FAMILY, "stem.0.weight", config, Self::validate, Self::num_parameters)
    }

    fn build(&self) -> Result<Classifier> {
        self.validate()?;
        let stem = Conv2dConfig::new(self.in_channels, self.stem_width, 3)
            .stride(2)
            .padding(1);
        let mut trunk = Sequential::new();
        let mut c = self.stem_width;
        for (k, stage) in self.stages.iter().enumerate() {
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
                if let Some(q) = self.squeeze(c) {
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
            .push("fc", Linear::new(c, self.num_classes, true));
        Ok(Classifier::new(net, self.in_channels, self.num_classes, (self.stem_width, 2)))
    }
}
