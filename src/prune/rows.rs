//! What the activation-aware pruners share: every output row loses the same share (or
//! N of every M of a row are kept), the exclusions, and the checks against a network
//! that need no data.

use super::mask::decide_masks;
use super::plan::PrunePlan;
use super::{Masks, Scope, SparsityReport};
use crate::data::CalibrationData;
use crate::error::{Error, Result};
use crate::layer::{LayerKind, Network, Observer, Params, Probe, Site, Tap};
use std::collections::{HashMap, HashSet};

/// The sparsity of each row, or N:M within rows, and the exclusions.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowPlan {
    pub sparsity: f64,
    pub nm: Option<(usize, usize)>,
    pub exclude: Vec<String>,
}

impl RowPlan {
    pub fn new(sparsity: f64) -> Self {
        RowPlan {
            sparsity,
            nm: None,
            exclude: Vec::new(),
        }
    }

    /// `n` of every `m` consecutive weights of each row kept; `0 < n < m`.
    pub fn set_nm(&mut self, n: usize, m: usize) -> Result<()> {
        if n == 0 || n >= m {
            return Err(Error::invalid(
                "N:M",
                format!("{n}:{m}: N must be at least 1 and below M"),
            ));
        }
        self.nm = Some((n, m));
        Ok(())
    }

    /// Whether N:M leaves a tensor of `shape` dense (its rows not a multiple of M).
    pub fn leaves_dense(&self, shape: &[usize]) -> bool {
        self.nm
            .is_some_and(|(_, m)| !row_of(shape).is_multiple_of(m))
    }

    /// The prunable tensors in scope, after the plan's checks (the sparsity,
    /// exclusions that match, no NaN).
    pub fn members(&self, model: &dyn Params) -> Result<HashSet<String>> {
        let plan = PrunePlan {
            scope: Scope::Layer,
            exclude: self.exclude.clone(),
            ..PrunePlan::new(if self.nm.is_some() {
                0.0
            } else {
                self.sparsity
            })
        };
        Ok(plan
            .groups(model)?
            .into_iter()
            .flat_map(|g| g.tensors)
            .collect())
    }

    /// The checks that need no data, against `model`: those of [`RowPlan::members`],
    /// and with N:M at least one tensor whose rows it can group.
    pub fn check(&self, model: &dyn Params) -> Result<()> {
        if let Some((n, m)) = self.nm {
            let skipped = self.skipped(model)?;
            let members = self.members(model)?;
            if skipped.len() == members.len() {
                return Err(Error::invalid(
                    "N:M pruning",
                    format!("{n}:{m} prunes nothing in this network: no prunable tensor (not excluded) has rows of a multiple of {m} weights"),
                ));
            }
        }
        self.members(model).map(drop)
    }

    /// With N:M, the prunable tensors in scope left dense, in walk order.
    pub fn skipped(&self, model: &dyn Params) -> Result<Vec<String>> {
        let members = self.members(model)?;
        let mut skipped = Vec::new();
        model.visit_params(&mut |p| {
            if members.contains(p.name) && self.leaves_dense(p.shape) {
                skipped.push(p.name.to_string());
            }
        });
        Ok(skipped)
    }
}

/// The taps the activation-aware pruners measure: the inputs of the convolutions and
/// linear layers, or of one of them.
#[derive(Debug, Clone, Default)]
pub(crate) struct InputTaps {
    /// The one layer measured (all when `None`).
    pub only: Option<String>,
}

impl InputTaps {
    /// Layer `layer` alone.
    pub fn of(layer: &str) -> Self {
        InputTaps {
            only: Some(layer.to_string()),
        }
    }

    /// [`Observer::wants`] for them.
    pub fn wants(&self, tap: &Tap<'_>) -> bool {
        tap.site == Site::Input
            && matches!(tap.kind, LayerKind::Conv | LayerKind::Linear)
            && self.only.as_deref().is_none_or(|only| only == tap.layer)
    }
}

/// One eval pass of `model` over every batch of `data`, shown to `observer`; an empty
/// `data` is an error.
pub(crate) fn observe_calibration<I>(
    model: &dyn Network<I>,
    data: &dyn CalibrationData<I>,
    observer: &mut dyn Observer,
) -> Result<()> {
    if data.num_batches() == 0 {
        return Err(Error::empty("calibration data", "no batches"));
    }
    data.try_for_each_batch(&mut |x| model.infer(x, &mut Probe::new(&mut *observer)))
}

/// The new values of a tensor and which of them are zero, or `None` to leave it.
pub(crate) type Decision = Option<(Vec<f32>, Vec<bool>)>;

/// A tensor [`prune_sequentially`] asks about.
pub(crate) struct Turn<'a> {
    /// The layer's path (`layer1.0.conv1`).
    pub layer: &'a str,
    /// The tensor's name (`layer1.0.conv1.weight`), shape and values.
    pub name: &'a str,
    pub shape: &'a [usize],
    pub values: &'a [f32],
}

/// Prunes the tensors `plan` takes one at a time, in walk order (the forward order of
/// the bundled networks, which REFLOW's exact mode relies on too): `decide(model,
/// turn)` measures what it needs on `model` as pruned so far and gives the tensor's
/// new values, which are written before the next tensor's turn.
pub(crate) fn prune_sequentially<I>(
    model: &mut dyn Network<I>,
    plan: &RowPlan,
    mut decide: impl FnMut(&dyn Network<I>, Turn<'_>) -> Result<Decision>,
) -> Result<(Masks, SparsityReport)> {
    let members = plan.members(model)?;
    let mut order = Vec::new();
    model.visit_params(&mut |p| {
        if members.contains(p.name) {
            order.push((p.name.to_string(), p.shape.to_vec(), p.data.to_vec()));
        }
    });
    let mut pruned = HashMap::new();
    for (name, shape, values) in order {
        let layer = name.strip_suffix(".weight").unwrap_or("");
        let turn = Turn {
            layer,
            name: &name,
            shape: &shape,
            values: &values,
        };
        let Some((values, zeros)) = decide(&*model, turn)? else {
            continue;
        };
        model.visit_params_mut(&mut |p| {
            if p.name == name {
                p.data.copy_from_slice(&values);
            }
        });
        pruned.insert(name, zeros);
    }
    let masks = decide_masks(model, &members, |p| Ok(pruned.remove(p.name)))?;
    Ok((masks, SparsityReport::measure(model)))
}

/// The length of a weight's rows: all but its first (output) dimension.
pub(crate) fn row_of(shape: &[usize]) -> usize {
    shape.get(1..).map_or(1, |rest| rest.iter().product())
}

/// The builder and check methods of a pruner with a `plan: RowPlan` field.
macro_rules! row_plan_methods {
    () => {
        /// Keeps `n` of every `m` consecutive weights of each row instead of a share
        /// of the row; `0 < n < m`. A tensor whose rows are not a multiple of `m` is
        /// left dense.
        pub fn nm(mut self, n: usize, m: usize) -> $crate::error::Result<Self> {
            self.plan.set_nm(n, m)?;
            Ok(self)
        }

        /// Never prunes the parameter `name_or_prefix` (a tensor, or a module and all
        /// it holds); an exclusion that matches nothing is an error when it runs.
        pub fn exclude(mut self, name_or_prefix: impl Into<String>) -> Self {
            self.plan.exclude.push(name_or_prefix.into());
            self
        }

        /// The checks that need no data, against `model`: the sparsity, exclusions
        /// that match, no NaN, and with N:M at least one row it can group.
        pub fn check(&self, model: &dyn $crate::layer::Params) -> $crate::error::Result<()> {
            self.plan.check(model)
        }

        /// With N:M, the prunable tensors left dense because their rows are not a
        /// multiple of M, in walk order; none otherwise.
        pub fn skipped(
            &self,
            model: &dyn $crate::layer::Params,
        ) -> $crate::error::Result<Vec<String>> {
            self.plan.skipped(model)
        }
    };
}
pub(crate) use row_plan_methods;
