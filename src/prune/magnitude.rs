//! Magnitude pruning: remove the weights of smallest |w|.

use super::plan::PrunePlan;
use super::select::{magnitude_key, rank};
use super::{Masks, Pruner};
use crate::error::Result;
use crate::layer::Params;

/// One-shot magnitude (L1) pruning: in each ranking, exactly `round(s · n)` weights of
/// smallest |w| are removed — the masks of PyTorch's
/// `prune.global_unstructured(..., L1Unstructured)` ([`Scope::Global`](super::Scope::Global)) or per-tensor
/// `prune.l1_unstructured` ([`Scope::Layer`](super::Scope::Layer)). Ties in |w| go to the weight that comes
/// first (parameter walk order, then row-major), so results are deterministic, and a
/// higher sparsity's pruned set always contains a lower one's.
///
/// ```
/// use reflow::prune::{MagnitudePruner, Scope};
///
/// let pruner = MagnitudePruner::new(0.8)
///     .scope(Scope::Layer)
///     .exclude("conv1")                       // never prune the stem
///     .with_override("fc.weight", 0.5);       // a gentler classifier
/// assert_eq!(pruner.plan().sparsity, 0.8);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MagnitudePruner {
    plan: PrunePlan,
}

impl MagnitudePruner {
    /// Removes the fraction `sparsity` of the prunable weights, globally ranked. The
    /// value is checked when the pruner runs: it must lie in `[0, 1)`.
    pub fn new(sparsity: f64) -> Self {
        MagnitudePruner {
            plan: PrunePlan::new(sparsity),
        }
    }

    /// A pruner with a complete plan.
    pub fn from_plan(plan: PrunePlan) -> Self {
        MagnitudePruner { plan }
    }

    super::plan::plan_builder!();
}

impl Pruner for MagnitudePruner {
    fn masks(&self, model: &dyn Params) -> Result<Masks> {
        let groups = self.plan.groups(model)?;
        Ok(rank(model, &groups, |_, _, w| magnitude_key(w)))
    }
}
