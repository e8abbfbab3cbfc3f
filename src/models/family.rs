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

/// A model family in a checkpoint layout: how to recognise its state dicts and build
/// the network one holds. Implemented by a unit type in the family's folder.
///
/// ```
/// use reflow::models::{Arch, FAMILIES};
///
/// let names: Vec<_> = FAMILIES.iter().map(|f| f.name()).collect();
/// assert!(names.contains(&"resnet") && names.contains(&"vgg"));
/// let vgg16: Arch = "vgg16_bn".parse()?;
/// assert_eq!((vgg16.family(), vgg16.variant()), ("vgg", Some("vgg16_bn")));
/// # Ok::<(), reflow::Error>(())
/// ```
pub trait Family: Sync + fmt::Debug {
    /// The family's name, as `--arch` takes it and reports write it (`resnet`).
    fn name(&self) -> &'static str;

    /// The named variants `--arch` also takes, each checked against a checkpoint's
    /// shapes (`vgg16_bn`, `efficientnet_b3`, `mobilenet_v3_small`); by default none
    /// (the shapes need no name).
    fn variants(&self) -> &'static [&'static str] {
        &[]
    }

    /// The family's name in prose, as errors write it (`ResNet`, `VGG`).
    fn title(&self) -> &'static str;

    /// Keys that every state dict of the family has and no other family's has all of
    /// (`conv1.weight`, `layer1.0.conv1.weight`): how [`Arch::AUTO`](super::Arch::AUTO)
    /// tells the family (the shapes are read by [`Family::load`]).
    fn keys(&self) -> &'static [&'static str];

    /// Whether `state` has all of [`Family::keys`].
    fn detects(&self, state: &StateDict) -> bool {
        self.keys().iter().all(|k| state.contains(k))
    }

    /// Builds the network `state` describes, its shape inferred from the keys and
    /// shapes, and loads it strictly. `stem` is the stem of a ResNet (which the keys
    /// tell only by a kernel size, checked against it); other families ignore it.
    fn load(&self, state: &StateDict, stem: Stem) -> Result<Model>;

    /// What channel pruning cuts in this family's networks (`VGG (every
    /// convolution)`); by default `None`: the family has no channel scope.
    fn channel_pruning(&self) -> Option<&'static str> {
        None
    }
}

/// A network of a [`Family`]: a [`Layer`] from images to logits that knows its
/// family, shape and variant. A [`Model`](super::Model) holds any of them.
pub trait FamilyNetwork:
    Layer<Input = Tensor4, Output = Tensor2> + fmt::Debug + Send + Sync + Any
{
    /// The family that reads and builds it.
    fn family(&self) -> &'static dyn Family;

    /// The named variant its shapes are (one of its family's
    /// [`variants`](Family::variants)), if any; by default none.
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
    /// default `None`: no channel scope (and [`Family::channel_pruning`] is `None`).
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
