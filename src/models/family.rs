//! What a model family is: a [`Family`] reads checkpoints of its layout into
//! [`FamilyNetwork`]s, which a [`Model`](super::Model) holds.
//!
//! A family lives in one folder of `models/` and is registered by one line of the
//! table in `models/mod.rs` ([`FAMILIES`](super::FAMILIES)); `Arch`'s names,
//! detection from keys, `reflow inspect` and `reflow prune` all read that table.

use super::{Model, Stem};
use crate::error::Result;
use crate::layer::Layer;
use crate::nn::{Tensor2, Tensor4};
use crate::prune::ChannelScope;
use crate::state_dict::StateDict;
use std::any::Any;
use std::fmt;

/// What a model family is called and how its checkpoints are told apart: the data
/// of a [`Family`], written once in the family's folder ([`Architecture::ABOUT`](super::Architecture::ABOUT)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct About {
    /// The family's name, as `--arch` takes it and reports write it (`resnet`).
    pub name: &'static str,
    /// The family's name in prose, as errors write it (`ResNet`, `VGG`).
    pub title: &'static str,
    /// Keys that every state dict of the family has and no other family's has all of
    /// (`conv1.weight`, `layer1.0.conv1.weight`): how [`Arch::AUTO`](super::Arch::AUTO)
    /// tells the family (the shapes are read by [`Family::load`]).
    pub keys: &'static [&'static str],
    /// The named variants `--arch` also takes, each checked against a checkpoint's
    /// shapes (`vgg16_bn`, `efficientnet_b3`, `mobilenet_v3_small`); none when the
    /// shapes need no name.
    pub variants: &'static [&'static str],
    /// What channel pruning cuts in the family's networks (`VGG (every
    /// convolution)`); `None`: the family has no channel scope.
    pub channel_pruning: Option<&'static str>,
}

impl About {
    /// A family called `name` (`title` in prose) whose checkpoints all hold `keys`,
    /// without named variants or channel pruning.
    pub const fn new(
        name: &'static str,
        title: &'static str,
        keys: &'static [&'static str],
    ) -> About {
        About {
            name,
            title,
            keys,
            variants: &[],
            channel_pruning: None,
        }
    }

    /// The same with named variants.
    pub const fn variants(self, variants: &'static [&'static str]) -> About {
        About { variants, ..self }
    }

    /// The same with channel pruning, which cuts `what`.
    pub const fn channel_pruning(self, what: &'static str) -> About {
        About {
            channel_pruning: Some(what),
            ..self
        }
    }
}

/// A model family in a checkpoint layout: how to recognise its state dicts and build
/// the network one holds. Each family of the crate is a
/// [`FamilyOf<A>`](super::FamilyOf), `A` its config.
///
/// ```
/// use reflow::models::{Arch, FAMILIES};
///
/// let names: Vec<_> = FAMILIES.iter().map(|f| f.about().name).collect();
/// assert!(names.contains(&"resnet") && names.contains(&"vgg"));
/// let vgg16: Arch = "vgg16_bn".parse()?;
/// assert_eq!((vgg16.family(), vgg16.variant()), ("vgg", Some("vgg16_bn")));
/// # Ok::<(), reflow::Error>(())
/// ```
pub trait Family: Sync + fmt::Debug {
    /// Its names, keys, variants and channel pruning.
    fn about(&self) -> &'static About;

    /// Whether `state` has all of the family's [`About::keys`].
    fn detects(&self, state: &StateDict) -> bool {
        self.about().keys.iter().all(|k| state.contains(k))
    }

    /// Builds the network `state` describes, its shape inferred from the keys and
    /// shapes, and loads it strictly. `stem` is the stem of a ResNet (which the keys
    /// tell only by a kernel size, checked against it); other families ignore it.
    fn load(&self, state: &StateDict, stem: Stem) -> Result<Model>;
}

/// A network of a [`Family`]: a [`Layer`] from images to logits that knows its
/// family, shape and variant. A [`Model`](super::Model) holds any of them.
pub trait FamilyNetwork:
    Layer<Input = Tensor4, Output = Tensor2> + fmt::Debug + Send + Sync + Any
{
    /// The family that reads and builds it.
    fn family(&self) -> &'static dyn Family;

    /// The named variant its shapes are (one of its family's
    /// [`About::variants`]), if any; by default none.
    fn variant(&self) -> Option<&'static str> {
        None
    }

    /// Channels of the input images.
    fn in_channels(&self) -> usize;

    /// Outputs (classes).
    fn num_classes(&self) -> usize;

    /// Its shape in words when the variant does not tell it (a ResNet's stem, stages
    /// and blocks); by default an empty string.
    fn describe(&self) -> String {
        String::new()
    }

    /// Which convolutions channel pruning cuts, and which it skips and why; by
    /// default `None`: no channel scope (and [`About::channel_pruning`] is `None`).
    fn channel_scope(&self) -> Option<ChannelScope> {
        None
    }

    /// The network of the same family that `state` (its channel-pruned state dict)
    /// describes, loaded; by default its family's [`Family::load`] with an ImageNet
    /// stem (a family whose load reads the stem overrides it).
    fn rebuild(&self, state: &StateDict) -> Result<Model> {
        self.family().load(state, Stem::Imagenet)
    }
}
