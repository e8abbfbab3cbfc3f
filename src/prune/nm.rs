//! N:M (semi-structured) pruning: in every group of M consecutive weights, the M − N
//! of smallest magnitude are removed.

use super::mask::{decide_masks, prune_smallest};
use super::plan::PrunePlan;
use super::{Masks, Pruner, Scope};
use crate::error::{Error, Result};
use crate::layer::Params;
use std::collections::HashSet;

/// Along which axis an [`NmPruner`] groups a weight's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum NmAxis {
    /// NVIDIA ASP's convention for convolutions: for each output channel and kernel
    /// position, the input channels in consecutive groups of M (a linear weight
    /// `[O, I]`: its rows).
    #[default]
    InputChannels,
    /// SparseGPT's and OBC's: consecutive groups of M of each output channel's
    /// flattened row (`I/g · kh · kw` values).
    FlattenedRows,
}

/// N:M pruning (`method.md`, "N:M"): every prunable weight's values in groups of M
/// along [`NmAxis`], the M − N of smallest |w| in each group removed (among equal |w|,
/// the lower index first). A tensor whose grouped axis is not a multiple of M (a
/// 1- or 3-channel stem, a depthwise convolution) is left dense and listed by
/// [`NmPruner::skipped`].
///
/// ```
/// use reflow::layer::{Layer, Params};
/// use reflow::nn::{Conv2d, Conv2dConfig};
/// use reflow::prune::{NmPruner, Pruner};
///
/// let mut conv = Conv2d::new(Conv2dConfig::new(8, 2, 1))?;
/// conv.visit_params_mut(&mut |p| p.data.iter_mut().enumerate().for_each(|(i, v)| *v = (i % 5) as f32));
/// let masks = NmPruner::new(2, 4)?.masks(&conv)?;
/// assert_eq!(masks.get("weight").unwrap().pruned_count(), 8); // half of 16
/// assert!(NmPruner::new(4, 2).is_err());
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NmPruner {
    n: usize,
    m: usize,
    axis: NmAxis,
    exclude: Vec<String>,
}

impl NmPruner {
    /// Keeps `n` of every `m` weights; `0 < n < m` (2:4 is sparse tensor cores').
    pub fn new(n: usize, m: usize) -> Result<Self> {
        if n == 0 || n >= m {
            return Err(Error::invalid(
                "N:M",
                format!("{n}:{m}: N must be at least 1 and below M"),
            ));
        }
        Ok(NmPruner {
            n,
            m,
            axis: NmAxis::InputChannels,
            exclude: Vec::new(),
        })
    }

    /// Groups along `axis` instead of the input channels.
    pub fn axis(mut self, axis: NmAxis) -> Self {
        self.axis = axis;
        self
    }

    /// Never prunes the parameter `name_or_prefix` (a tensor, or a module and all it
    /// holds); an exclusion that matches nothing is an error when the pruner runs.
    pub fn exclude(mut self, name_or_prefix: impl Into<String>) -> Self {
        self.exclude.push(name_or_prefix.into());
        self
    }

    /// `(N, M)`.
    pub fn pattern(&self) -> (usize, usize) {
        (self.n, self.m)
    }

    /// The fraction of a pruned tensor's weights removed: `1 − N/M`.
    pub fn sparsity(&self) -> f64 {
        1.0 - self.n as f64 / self.m as f64
    }

    /// The prunable tensors this pruner would prune (not excluded), after the checks:
    /// exclusions that match, no NaN.
    fn members(&self, model: &dyn Params) -> Result<HashSet<String>> {
        let plan = PrunePlan {
            scope: Scope::Layer,
            exclude: self.exclude.clone(),
            ..PrunePlan::new(0.0)
        };
        Ok(plan
            .groups(model)?
            .into_iter()
            .flat_map(|g| g.tensors)
            .collect())
    }

    /// The length of the runs `shape` is grouped along, and how far apart consecutive
    /// values of a run lie in row-major order.
    fn runs(&self, shape: &[usize]) -> (usize, usize) {
        match (self.axis, shape) {
            (NmAxis::InputChannels, [_, i, rest @ ..]) => (*i, rest.iter().product()),
            (_, [o, ..]) => (shape.iter().product::<usize>() / o.max(&1), 1),
            (_, []) => (1, 1),
        }
    }

    /// The prunable tensors left dense because their grouped axis is not a multiple of
    /// M, in walk order.
    pub fn skipped(&self, model: &dyn Params) -> Result<Vec<String>> {
        let members = self.members(model)?;
        let mut skipped = Vec::new();
        model.visit_params(&mut |p| {
            if members.contains(p.name) && !self.runs(p.shape).0.is_multiple_of(self.m) {
                skipped.push(p.name.to_string());
            }
        });
        Ok(skipped)
    }
}

impl Pruner for NmPruner {
    fn masks(&self, model: &dyn Params) -> Result<Masks> {
        let members = self.members(model)?;
        let masks = decide_masks(model, &members, |p| {
            let (len, stride) = self.runs(p.shape);
            if !len.is_multiple_of(self.m) {
                return Ok(None);
            }
            let mut pruned = vec![false; p.data.len()];
            // Each run: `len` values `stride` apart, starting at `start`.
            let runs = p.data.len() / len;
            let mut order: Vec<usize> = Vec::with_capacity(self.m);
            for r in 0..runs {
                let start = (r / stride) * len * stride + r % stride;
                for g in (0..len).step_by(self.m) {
                    order.clear();
                    order.extend((g..g + self.m).map(|k| start + k * stride));
                    let magnitude = |i: usize| f64::from(p.data[i].abs());
                    prune_smallest(&mut order, self.m - self.n, magnitude, &mut pruned);
                }
            }
            Ok(Some(pruned))
        })?;
        if masks.is_empty() {
            let skipped = self.skipped(model)?;
            return Err(Error::invalid(
                "N:M pruning",
                format!(
                    "{}:{} prunes nothing in this network: no prunable tensor (not excluded) has a multiple of {} along its grouped axis{}",
                    self.n,
                    self.m,
                    self.m,
                    match skipped.first() {
                        Some(first) => format!(" ({} skipped, the first {first})", skipped.len()),
                        None => String::new(),
                    }
                ),
            ));
        }
        Ok(masks)
    }
}
