//! Any supported network: the family detected from a state dict's keys, or named.

use super::{Family, FamilyNetwork, Stem, FAMILIES};
use crate::error::{Error, Result};
use crate::layer::{Layer, Params, Probe, Visitor, VisitorMut};
use crate::nn::{Tensor2, Tensor4};
use crate::prune::{ChannelPrunable, ChannelScope};
use crate::state_dict::StateDict;
use std::any::Any;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// Which network a checkpoint holds: detected from its keys ([`Arch::AUTO`]), a
/// family (its shape read off the keys), or a family's named variant, which is
/// checked against the keys. Parsed from the names of the families in
/// [`FAMILIES`] and their variants ([`Arch::names`]).
///
/// ```
/// use reflow::models::Arch;
///
/// let arch: Arch = "mobilenet_v3_small".parse()?;
/// assert_eq!((arch.family(), arch.to_string()), ("mobilenet_v3", "mobilenet_v3_small".into()));
/// assert_eq!("auto".parse::<Arch>()?, Arch::AUTO);
/// assert!("alexnet".parse::<Arch>().is_err());
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Arch {
    /// `None`: detected from the keys.
    family: Option<&'static str>,
    variant: Option<&'static str>,
}

impl Arch {
    /// The family detected from the keys.
    pub const AUTO: Arch = Arch {
        family: None,
        variant: None,
    };

    /// Every name [`Arch::from_str`] accepts: `auto`, then each family's name and
    /// variants, in [`FAMILIES`]' order.
    pub fn names() -> String {
        let mut names = vec!["auto"];
        for family in FAMILIES {
            names.push(family.about().name);
            names.extend(family.about().variants);
        }
        names.join(", ")
    }

    /// The family's name (`auto` for [`Arch::AUTO`]), as reports write it.
    pub fn family(self) -> &'static str {
        self.family.unwrap_or("auto")
    }

    /// The named variant, if one is given.
    pub fn variant(self) -> Option<&'static str> {
        self.variant
    }

    /// The family this is: [`Arch::AUTO`] is the first family of [`FAMILIES`] that
    /// detects `state`'s keys (without a variant: [`Model::arch`] tells it).
    ///
    /// ```
    /// use reflow::models::{Arch, ResNet, ResNetConfig};
    /// use reflow::StateDict;
    ///
    /// let state = StateDict::from_layer(&ResNet::new(ResNetConfig::cifar_resnet(20)?)?);
    /// assert_eq!(Arch::AUTO.resolve(&state)?, "resnet".parse()?);
    /// assert!(Arch::AUTO.resolve(&StateDict::new()).is_err());
    /// # Ok::<(), reflow::Error>(())
    /// ```
    pub fn resolve(self, state: &StateDict) -> Result<Arch> {
        if self.family.is_some() {
            return Ok(self);
        }
        Ok(Arch::of(detect(state)?, None))
    }

    fn of(family: &'static dyn Family, variant: Option<&'static str>) -> Arch {
        Arch {
            family: Some(family.about().name),
            variant,
        }
    }

    /// The registered family of this name (`None` for [`Arch::AUTO`]).
    fn lookup(self) -> Option<&'static dyn Family> {
        let name = self.family?;
        FAMILIES.iter().copied().find(|f| f.about().name == name)
    }
}

/// The first family of [`FAMILIES`] whose keys `state` has.
fn detect(state: &StateDict) -> Result<&'static dyn Family> {
    if let Some(family) = FAMILIES.iter().copied().find(|f| f.detects(state)) {
        return Ok(family);
    }
    let key = state
        .keys()
        .next()
        .unwrap_or("(none: the state dict is empty)");
    let marks: Vec<_> = FAMILIES
        .iter()
        .map(|f| format!("{} for a {}", f.about().keys.join(" + "), f.about().title))
        .collect();
    Err(Error::Architecture {
        family: "supported".into(),
        key: key.to_string(),
        reason: format!("fits no supported family (keys like {})", marks.join(", ")),
    })
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.variant.unwrap_or(self.family()))
    }
}

impl FromStr for Arch {
    type Err = Error;

    /// Parses one of [`Arch::names`].
    fn from_str(s: &str) -> Result<Self> {
        if s == "auto" {
            return Ok(Arch::AUTO);
        }
        for &family in FAMILIES {
            if family.about().name == s {
                return Ok(Arch::of(family, None));
            }
            if let Some(&v) = family.about().variants.iter().find(|&&v| v == s) {
                return Ok(Arch::of(family, Some(v)));
            }
        }
        Err(Error::invalid(
            "arch",
            format!("\"{s}\" is none of {}", Arch::names()),
        ))
    }
}

/// A network of any registered family (see [`FAMILIES`]), built from a state dict in
/// its layout, or any [`FamilyNetwork`] given to [`Model::new`].
///
/// ```
/// use reflow::layer::Layer;
/// use reflow::models::{Arch, Model, RegNet, RegNetConfig, Stem};
/// use reflow::StateDict;
/// use ndarray::Array4;
///
/// let state = StateDict::from_layer(&RegNet::new(RegNetConfig::regnet_x_400mf().with_num_classes(5))?);
/// let net = Model::from_state_dict(&state, Arch::AUTO, Stem::Imagenet)?;
/// assert_eq!((net.arch().family(), net.num_classes()), ("regnet", 5));
/// assert_eq!(net.forward(&Array4::zeros((1, 3, 32, 32)))?.dim(), (1, 5));
/// assert!(net.downcast_ref::<RegNet>().is_some());
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug)]
pub struct Model {
    net: Box<dyn FamilyNetwork>,
}

impl Model {
    /// Holds `net`.
    pub fn new(net: impl FamilyNetwork) -> Model {
        Model { net: Box::new(net) }
    }

    /// Builds the network `state` holds, of `arch`'s family (or the family its keys
    /// show), and loads it strictly. `stem` is the stem kind of a ResNet (the keys
    /// cannot tell a CIFAR stem from an ImageNet one but by its kernel, which is
    /// checked against it); the other families ignore it. A named variant is checked
    /// against the shapes.
    pub fn from_state_dict(state: &StateDict, arch: Arch, stem: Stem) -> Result<Model> {
        let family = match arch.lookup() {
            Some(family) => family,
            None => detect(state)?,
        };
        let model = family.load(state, stem)?;
        let Some(wanted) = arch.variant else {
            return Ok(model);
        };
        let found = model.net.variant();
        if found == Some(wanted) {
            return Ok(model);
        }
        Err(Error::Architecture {
            family: family.about().title.into(),
            key: state.keys().next().unwrap_or_default().to_string(),
            reason: match found {
                Some(found) => format!("the shapes are {found}'s, not {wanted}'s"),
                None => format!(
                    "the shapes are no named variant's, not {wanted}'s (--arch {} reads any)",
                    family.about().name
                ),
            },
        })
    }

    /// Reads a safetensors checkpoint and builds the network it holds (see
    /// [`Model::from_state_dict`]).
    pub fn load(path: impl AsRef<Path>, arch: Arch, stem: Stem) -> Result<Model> {
        Self::from_state_dict(&StateDict::read_safetensors(path)?, arch, stem)
    }

    /// The network's family and, where the shapes tell it, its variant.
    pub fn arch(&self) -> Arch {
        Arch::of(self.net.family(), self.net.variant())
    }

    /// The network's shape in words beyond its variant (see [`FamilyNetwork::describe`]).
    pub fn describe(&self) -> String {
        self.net.describe()
    }

    /// Channels of the input images.
    pub fn in_channels(&self) -> usize {
        self.net.in_channels()
    }

    /// Outputs (classes).
    pub fn num_classes(&self) -> usize {
        self.net.num_classes()
    }

    /// The network, if it is a `N`.
    pub fn downcast_ref<N: FamilyNetwork>(&self) -> Option<&N> {
        (&*self.net as &dyn Any).downcast_ref()
    }

    /// The network, if it is a `N`; else the model back.
    pub fn downcast<N: FamilyNetwork>(self) -> std::result::Result<N, Model> {
        if !(&*self.net as &dyn Any).is::<N>() {
            return Err(self);
        }
        let net: Box<dyn Any> = self.net;
        Ok(*net.downcast::<N>().expect("checked above"))
    }

    /// The network's family.
    pub fn family(&self) -> &'static dyn Family {
        self.net.family()
    }
}

impl<N: FamilyNetwork> From<N> for Model {
    fn from(net: N) -> Model {
        Model::new(net)
    }
}

impl ChannelPrunable for Model {
    /// The network's scope (see [`FamilyNetwork::channel_scope`]); empty for a family
    /// without one, whose convolutions feed residual additions, or depthwise,
    /// grouped or squeeze-excitation layers.
    fn channel_scope(&self) -> ChannelScope {
        self.net.channel_scope().unwrap_or_default()
    }

    fn rebuild(&self, state: &StateDict) -> Result<Self> {
        self.net.rebuild(state)
    }
}

impl Params for Model {
    fn visit(&self, v: &mut Visitor<'_>) {
        self.net.visit(v)
    }

    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        self.net.visit_mut(v)
    }
}

impl Layer for Model {
    type Input = Tensor4;
    type Output = Tensor2;

    fn forward_with(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor2> {
        self.net.forward_with(x, probe)
    }

    fn forward_train(&mut self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor2> {
        self.net.forward_train(x, probe)
    }
}
