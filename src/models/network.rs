//! One network type for every family: [`Net<A>`](Net), the layers its shape `A` (an
//! [`Architecture`], the family's config) builds, and [`FamilyOf<A>`](FamilyOf), the
//! [`Family`] that reads its checkpoints.
//!
//! A family's folder defines its config, implements [`Architecture`] for it (what the
//! family is called and how its keys are told apart, how the keys give a config, the
//! layers a config builds) and names the network (`pub type Vgg = Net<VggConfig>`);
//! construction, loading, the parameter walk, the passes, the family's entry in
//! [`FAMILIES`](super::FAMILIES) and channel pruning are written once, here.

use super::classifier::Classifier;
use super::family::{About, Family, FamilyNetwork};
use super::{Model, Stem};
use crate::error::Result;
use crate::layer::{Layer, Params, Probe, Visitor, VisitorMut};
use crate::nn::{Tensor2, Tensor4};
use crate::prune::{ChannelPrunable, ChannelScope};
use crate::state_dict::StateDict;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

/// The shape of a family's networks (its config type): what [`Net`] needs to build,
/// read and describe them.
///
/// ```
/// use reflow::models::{Architecture, Net, VggConfig};
///
/// assert_eq!(VggConfig::ABOUT.name, "vgg");
/// let cfg = VggConfig::from_widths(&[8, 0, 16, 0]).with_hidden(32).with_num_classes(10);
/// let net: Net<VggConfig> = Net::new(cfg)?; // a `Vgg`
/// assert_eq!(net.num_classes(), 10);
/// # Ok::<(), reflow::Error>(())
/// ```
pub trait Architecture: Clone + fmt::Debug + Send + Sync + Sized + 'static {
    /// The family's names and the keys that tell its checkpoints.
    const ABOUT: About;

    /// The config `state`'s keys and shapes describe, checked: valid, and needing no
    /// more parameters than `state` holds values (a mis-shaped tensor must not make
    /// the network, and its allocation, huge). Errors name the key.
    fn infer(state: &StateDict) -> Result<Self>;

    /// Checks what a caller says of the network's stem (`--stem`) against this
    /// config read off the keys: a ResNet's stem kind, which the keys tell only by
    /// the stem's kernel. The other families have nothing to check.
    fn check_stem(&self, stem: Stem) -> Result<()> {
        let _ = stem;
        Ok(())
    }

    /// The layers, with zero weights, γ = 1, β = 0 and running statistics (0, 1),
    /// once the config is checked.
    fn build(&self) -> Result<Classifier>;

    /// The named variant (one of [`About::variants`]) these shapes are, if any; by
    /// default none.
    fn variant(&self) -> Option<&'static str> {
        None
    }

    /// The shape in words where the variant does not tell it; by default nothing.
    fn describe(&self) -> String {
        String::new()
    }

    /// Which convolutions channel pruning cuts (see [`ChannelPrunable`]); by default
    /// `None`, and then [`About::channel_pruning`] is `None` too.
    fn channel_scope(&self) -> Option<ChannelScope> {
        None
    }
}

/// A network of a model family, whose shape `A` builds it: [`ResNet`](super::ResNet)
/// is `Net<ResNetConfig>`, [`Vgg`](super::Vgg) `Net<VggConfig>`, and so on. A
/// [`Layer`] from images `[N, in_channels, H, W]` to logits `[N, num_classes]`, with
/// torchvision's parameter names.
#[derive(Debug)]
pub struct Net<A> {
    config: A,
    net: Classifier,
}

impl<A: Architecture> Net<A> {
    /// Builds the network with zero weights, γ = 1, β = 0 and running statistics
    /// (0, 1); fill it from a checkpoint with [`StateDict::load_into`], or read one
    /// with `from_state_dict`.
    pub fn new(config: A) -> Result<Self> {
        let mut net = config.build()?;
        net.family = A::ABOUT.title;
        Ok(Net { config, net })
    }

    /// The network's shape.
    pub fn config(&self) -> &A {
        &self.config
    }

    /// Channels of the input images.
    pub fn in_channels(&self) -> usize {
        self.net.in_channels
    }

    /// Outputs of the classifier.
    pub fn num_classes(&self) -> usize {
        self.net.classes
    }

    /// Builds the network a checkpoint in the family's layout describes (its keys and
    /// shapes tell everything, [`Architecture::infer`]) and loads it strictly.
    pub fn from_state_dict(state: &StateDict) -> Result<Self> {
        Self::loaded(A::infer(state)?, state)
    }

    /// Reads a safetensors checkpoint in the family's layout and builds the network it
    /// describes.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_state_dict(&StateDict::read_safetensors(path)?)
    }

    /// The network of shape `config` with `state` loaded strictly.
    fn loaded(config: A, state: &StateDict) -> Result<Self> {
        let mut net = Self::new(config)?;
        state.load_into(&mut net)?;
        Ok(net)
    }
}

impl<A> Params for Net<A> {
    fn visit(&self, v: &mut Visitor<'_>) {
        self.net.visit(v)
    }

    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        self.net.visit_mut(v)
    }
}

impl<A: Architecture> Layer for Net<A> {
    type Input = Tensor4;
    type Output = Tensor2;

    fn forward_with(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor2> {
        self.net.forward_with(x, probe)
    }

    fn forward_train(&mut self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor2> {
        self.net.forward_train(x, probe)
    }
}

impl<A: Architecture> ChannelPrunable for Net<A> {
    /// The family's scope ([`Architecture::channel_scope`]); empty for a family
    /// without one.
    fn channel_scope(&self) -> ChannelScope {
        self.config.channel_scope().unwrap_or_default()
    }

    fn rebuild(&self, state: &StateDict) -> Result<Self> {
        Self::from_state_dict(state)
    }
}

impl<A: Architecture> FamilyNetwork for Net<A> {
    fn family(&self) -> &'static dyn Family {
        &FamilyOf::<A>::NEW
    }

    fn variant(&self) -> Option<&'static str> {
        self.config.variant()
    }

    fn in_channels(&self) -> usize {
        self.net.in_channels
    }

    fn num_classes(&self) -> usize {
        self.net.classes
    }

    fn describe(&self) -> String {
        self.config.describe()
    }

    fn channel_scope(&self) -> Option<ChannelScope> {
        self.config.channel_scope()
    }

    fn rebuild(&self, state: &StateDict) -> Result<Model> {
        ChannelPrunable::rebuild(self, state).map(Model::new)
    }
}

/// The [`Family`] of the networks of shape `A`: what [`FAMILIES`](super::FAMILIES)
/// lists, one line a family.
pub struct FamilyOf<A>(PhantomData<fn() -> A>);

impl<A> FamilyOf<A> {
    /// The family (a value without data).
    pub const NEW: Self = FamilyOf(PhantomData);
}

impl<A: Architecture> fmt::Debug for FamilyOf<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FamilyOf({})", A::ABOUT.name)
    }
}

impl<A: Architecture> Family for FamilyOf<A> {
    fn about(&self) -> &'static About {
        &A::ABOUT
    }

    fn load(&self, state: &StateDict, stem: Stem) -> Result<Model> {
        let config = A::infer(state)?;
        config.check_stem(stem)?;
        Net::loaded(config, state).map(Model::new)
    }
}
