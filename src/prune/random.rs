//! Random pruning: the baseline magnitude pruning must beat.

use super::plan::PrunePlan;
use super::select::rank;
use super::{Masks, Pruner};
use crate::error::Result;
use crate::layer::Params;

/// Removes `round(s · n)` weights chosen uniformly at random in each ranking, from a
/// seed: the same seed gives the same masks on every machine and thread count.
///
/// ```
/// use reflow::prelude::*;
/// use reflow::prune::{Pruner, RandomPruner};
///
/// let net = ResNet::new(ResNetConfig::cifar_resnet(20)?)?;
/// let a = RandomPruner::new(0.5, 7).masks(&net)?;
/// assert_eq!(a, RandomPruner::new(0.5, 7).masks(&net)?);
/// assert_eq!(a.pruned_count(), count_prunable(&net) / 2);
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RandomPruner {
    plan: PrunePlan,
    seed: u64,
}

impl RandomPruner {
    /// Removes the fraction `sparsity` of the prunable weights at random.
    pub fn new(sparsity: f64, seed: u64) -> Self {
        RandomPruner {
            plan: PrunePlan::new(sparsity),
            seed,
        }
    }

    /// A pruner with a complete plan.
    pub fn from_plan(plan: PrunePlan, seed: u64) -> Self {
        RandomPruner { plan, seed }
    }

    super::plan::plan_builder!();
}

/// SplitMix64: a small, well-mixed, portable hash of a 64-bit value.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Pruner for RandomPruner {
    fn masks(&self, model: &dyn Params) -> Result<Masks> {
        let groups = self.plan.groups(model)?;
        let seed = splitmix64(self.seed);
        Ok(rank(model, &groups, |t, i, _| {
            (splitmix64(seed ^ splitmix64((t as u64) << 40 ^ i as u64)) >> 32) as u32
        }))
    }
}
