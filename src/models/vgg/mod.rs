//! VGG with batch norm (`vgg11_bn` … `vgg19_bn`) in torchvision's layout.

mod config;

pub use config::{VggConfig, VggLayer};

use super::{About, Architecture, Classifier, Net};
use crate::models::keys::{arch, inferred, shape_of};
use config::FAMILY;
use crate::error::Result;
use crate::nn::{Activation, AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, ConvBn};
use crate::nn::{Dropout, Flatten, Linear, MaxPool2d, Sequential, Tensor2};
use crate::prune::{ChannelCoupling, ChannelScope};
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
pub type Vgg = Net<VggConfig>;

impl Architecture for VggConfig {
    const ABOUT: About = About::new("vgg", FAMILY, &["features.0.weight", "classifier.6.weight"])
        .variants(&["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"])
        .channel_pruning("VGG (every convolution)");

    /// Reads the network's shape off a torchvision-layout `VGG` (with batch norm)
    /// state dict: convolutions and pools from the indices of `features` (a gap of one
    /// index between a ReLU and the next convolution is a pool; like every
    /// torchvision VGG, the features end with one), input channels, the pool size
    /// (from `classifier.0`'s inputs), the hidden width and the classes.
    ///
    /// ```
    /// use reflow::models::{Architecture, Vgg, VggConfig};
    /// use reflow::StateDict;
    ///
    /// let cfg = VggConfig::from_widths(&[8, 0, 16, 16, 0]).with_hidden(32).with_in_channels(1);
    /// let state = StateDict::from_layer(&Vgg::new(cfg.clone())?);
    /// assert_eq!(VggConfig::infer(&state)?, cfg);
    /// # Ok::<(), reflow::Error>(())
    /// ```
    fn infer(state: &StateDict) -> Result<Self> {
        let last = state
            .keys()
            .filter_map(|k| k.strip_prefix("features.")?.split('.').next()?.parse().ok())
            .max()
            .ok_or_else(|| arch(FAMILY, "features.0.weight", "missing"))?;
        let first = shape_of(state, FAMILY, "features.0.weight", 4)?;
        let in_channels = first[1];
        let (mut features, mut c, mut i) = (Vec::new(), in_channels, 0usize);
        while i <= last {
            let conv = format!("features.{i}.weight");
            if !state.contains(&conv) {
                // A pool takes one index and has no parameters.
                features.push(VggLayer::Pool);
                i += 1;
                continue;
            }
            let shape = shape_of(state, FAMILY, &conv, 4)?;
            if shape[1] != c || shape[2..] != [3, 3] {
                return Err(arch(
                    FAMILY,
                    &conv,
                    format!("expected a [_, {c}, 3, 3] convolution, found {shape:?}"),
                ));
            }
            let bn = format!("features.{}.running_var", i + 1);
            if shape_of(state, FAMILY, &bn, 1)? != [shape[0]] {
                return Err(arch(FAMILY, &bn, format!("expected {} channels", shape[0])));
            }
            c = shape[0];
            features.push(VggLayer::Conv(c));
            i += 3; // conv, batch norm, ReLU
        }
        features.push(VggLayer::Pool);
        let fc = shape_of(state, FAMILY, "classifier.0.weight", 2)?;
        let (hidden, flat) = (fc[0], fc[1]);
        let pool = (1..=flat).find(|p| c * p * p >= flat).unwrap_or(1);
        if c * pool * pool != flat {
            return Err(arch(
                FAMILY,
                "classifier.0.weight",
                format!("{flat} inputs are not {c} channels × a square pool"),
            ));
        }
        let num_classes = shape_of(state, FAMILY, "classifier.6.weight", 2)?[0];
        let config = VggConfig {
            features,
            in_channels,
            pool,
            hidden,
            num_classes,
        };
        inferred(state, FAMILY, "features.0.weight", config, Self::validate, Self::num_parameters)
    }

    fn build(&self) -> Result<Classifier> {
        self.validate()?;
        let (mut features, mut c, mut i) = (Sequential::new(), self.in_channels, 0);
        for layer in &self.features {
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
        let (flat, hidden) = (c * self.pool * self.pool, self.hidden);
        let classifier = Sequential::with_input::<Tensor2>()
            .push("0", Linear::new(flat, hidden, true))
            .push("1", Activation::Relu)
            .push("2", Dropout::new(0.5)?)
            .push("3", Linear::new(hidden, hidden, true))
            .push("4", Activation::Relu)
            .push("5", Dropout::new(0.5)?)
            .push("6", Linear::new(hidden, self.num_classes, true));
        let net = Sequential::new()
            .push("features", features)
            .push("avgpool", AdaptiveAvgPool2d::new(self.pool, self.pool)?)
            .push("flatten", Flatten)
            .push("classifier", classifier);
        let first = self.features.iter().find_map(|l| match l {
            super::VggLayer::Conv(w) => Some(*w),
            super::VggLayer::Pool => None,
        });
        Ok(Classifier::new(net, self.in_channels, self.num_classes, (first.unwrap_or(c), 1)))
    }

    fn variant(&self) -> Option<&'static str> {
        let same = |name: &&str| VggConfig::preset(name).is_some_and(|p| p.features == self.features);
        Self::ABOUT.variants.iter().copied().find(same)
    }

    /// Every convolution: its channels feed its batch norm, a ReLU, perhaps a pool,
    /// and the next convolution — or, for the last, the classifier's first linear
    /// layer, `pool²` inputs per channel.
    fn channel_scope(&self) -> Option<ChannelScope> {
        let (mut convs, mut i) = (Vec::new(), 0);
        for layer in &self.features {
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
                        .flattened(self.pool * self.pool),
                }
            })
            .collect();
        Some(ChannelScope {
            couplings,
            skipped: Vec::new(),
        })
    }
}

