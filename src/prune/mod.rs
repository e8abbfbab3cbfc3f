//! One-shot pruning: deciding which weights to remove ([`Pruner`]), the decision as
//! data ([`Masks`]), and what came of it ([`SparsityReport`]). Unstructured
//! ([`MagnitudePruner`]) and N:M ([`NmPruner`]) pruning zero weights in place;
//! channel pruning ([`ChannelPruner`]) removes whole channels and gives a smaller
//! network.
//!
//! Pruning works on any [`Params`]: it reads the weights through
//! [`Params::visit_params`], and only tensors of role
//! [`ParamRole::Weight`](crate::layer::ParamRole::Weight) — convolution and linear
//! weights — are ever pruned.
//!
//! ```
//! use reflow::prelude::*;
//! use reflow::prune::{MagnitudePruner, Pruner, Scope};
//!
//! let mut net = ResNet::new(ResNetConfig::cifar_resnet(20)?)?;
//! # let mut i = 0u32;
//! # net.visit_params_mut(&mut |p| p.data.iter_mut().for_each(|v| { i = i.wrapping_mul(747796405).wrapping_add(2891336453); *v = (i >> 9) as f32 / 8388608.0 - 1.0; }));
//! let pruner = MagnitudePruner::new(0.9).scope(Scope::Global).exclude("conv1");
//! let masks = pruner.masks(&net)?;     // decide (read-only)
//! masks.apply(&mut net)?;              // apply
//! let report = reflow::prune::SparsityReport::measure(&net);
//! assert!((report.prunable_sparsity() - 0.9).abs() < 0.01);
//! assert_eq!(report.tensor("conv1.weight").unwrap().zeros, 0);
//! # Ok::<(), reflow::Error>(())
//! ```

mod channel;
mod magnitude;
mod mask;
mod nm;
mod plan;
mod random;
mod report;
mod rows;
mod select;
mod shifted;
mod sparsegpt;
mod unfold;
mod wanda;

pub use channel::{
    ChannelCoupling, ChannelPrunable, ChannelPruner, ChannelRemoval, ChannelReport, ChannelScope,
    FilterNorm, SkippedConv,
};
pub use magnitude::MagnitudePruner;
pub use mask::{Masks, TensorMask};
pub use nm::{NmAxis, NmPruner};
pub(crate) use plan::matches;
pub use plan::{removal_count, PrunePlan, Scope};
pub use random::RandomPruner;
pub use report::{SparsityReport, TensorSparsity};
pub use sparsegpt::{Hessians, SparseGptPruner};
pub(crate) use unfold::Unfold;
pub use wanda::{InputNorms, WandaPruner};

use crate::error::Result;
use crate::layer::Params;

/// Decides which prunable weights of a network to remove.
///
/// A pruner reads the model (never changes it) and returns [`Masks`]; applying them
/// is a separate step, so masks can be inspected, saved and re-applied. The trait is
/// object-safe:
///
/// ```
/// use reflow::prelude::*;
///
/// let pruners: Vec<Box<dyn Pruner>> =
///     vec![Box::new(MagnitudePruner::new(0.5)), Box::new(RandomPruner::new(0.5, 7))];
/// let net = ResNet::new(ResNetConfig::cifar_resnet(20)?)?;
/// for p in &pruners {
///     assert_eq!(p.masks(&net)?.len(), 22); // 21 convolutions and the classifier
/// }
/// # Ok::<(), reflow::Error>(())
/// ```
pub trait Pruner {
    /// Validates the pruner's parameters against `model`, then decides the masks.
    fn masks(&self, model: &dyn Params) -> Result<Masks>;

    /// Decides the masks, applies them, and reports the sparsity achieved.
    fn prune(&self, model: &mut dyn Params) -> Result<(Masks, SparsityReport)> {
        let masks = self.masks(model)?;
        masks.apply(model)?;
        Ok((masks, SparsityReport::measure(model)))
    }
}

impl<P: Pruner + ?Sized> Pruner for Box<P> {
    fn masks(&self, model: &dyn Params) -> Result<Masks> {
        (**self).masks(model)
    }

    fn prune(&self, model: &mut dyn Params) -> Result<(Masks, SparsityReport)> {
        (**self).prune(model)
    }
}
