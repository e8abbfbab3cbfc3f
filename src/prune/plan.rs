//! What to prune: the sparsity, the scope, per-tensor overrides and exclusions, checked
//! against a model before any work.

use crate::error::{Error, Result};
use crate::layer::Params;
use std::collections::BTreeMap;

crate::names::names! {
    /// Which weights compete with each other for removal.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub enum Scope as "scope", expecting "\"global\" or \"layer\"" {
        /// One ranking over every prunable weight of the network: PyTorch's
        /// `prune.global_unstructured`.
        #[default]
        Global = "global",
        /// The same fraction removed from every tensor: PyTorch's `prune.l1_unstructured`
        /// applied tensor by tensor.
        Layer = "layer",
    }
}

/// The parameters every pruner shares: target sparsity, scope, per-tensor overrides
/// (which take a tensor out of the global ranking and prune it on its own) and
/// exclusions (never pruned, not counted).
#[derive(Debug, Clone, PartialEq)]
pub struct PrunePlan {
    /// Fraction of the weights in scope to remove, in `[0, 1)`.
    pub sparsity: f64,
    /// Global or per-tensor ranking.
    pub scope: Scope,
    /// Tensor (or module) name → its own sparsity.
    pub overrides: BTreeMap<String, f64>,
    /// Parameter names or prefixes (`fc`, `layer1.0`, `conv1.weight`) never pruned.
    pub exclude: Vec<String>,
}

/// The builder methods every pruner with a `plan: PrunePlan` field shares.
macro_rules! plan_builder {
    () => {
        /// Sets the scope.
        pub fn scope(mut self, scope: $crate::prune::Scope) -> Self {
            self.plan.scope = scope;
            self
        }

        /// Never prunes the parameters named `name_or_prefix` (`fc`, `layer1.0`,
        /// `conv1.weight`).
        pub fn exclude(mut self, name_or_prefix: impl Into<String>) -> Self {
            self.plan.exclude.push(name_or_prefix.into());
            self
        }

        /// Prunes tensor `name` (`layer1.0.conv1.weight` or `layer1.0.conv1`) on its
        /// own, at `sparsity`.
        pub fn with_override(mut self, name: impl Into<String>, sparsity: f64) -> Self {
            self.plan.overrides.insert(name.into(), sparsity);
            self
        }

        /// The plan.
        pub fn plan(&self) -> &$crate::prune::PrunePlan {
            &self.plan
        }
    };
}
pub(crate) use plan_builder;

/// One ranking: the tensors that compete, and how many of their weights go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    pub tensors: Vec<String>,
    pub remove: usize,
}

/// The number of weights `round(s · n)` removes, rounding halves to even as Python's
/// `round` (and so `torch.nn.utils.prune`) does.
pub fn removal_count(sparsity: f64, n: usize) -> usize {
    (sparsity * n as f64).round_ties_even() as usize
}

fn check_fraction(name: &str, s: f64) -> Result<()> {
    if s.is_nan() || !(0.0..1.0).contains(&s) {
        return Err(Error::out_of_range(name, s, "[0, 1)"));
    }
    Ok(())
}

/// Whether parameter `name` is matched by the name or prefix `pattern` (at a dot
/// boundary: `conv1` matches `conv1.weight`, not `conv10.weight`).
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    name == pattern
        || name
            .strip_prefix(pattern)
            .is_some_and(|rest| rest.starts_with('.'))
}

impl PrunePlan {
    /// Remove the fraction `sparsity` of the prunable weights, globally ranked.
    pub fn new(sparsity: f64) -> Self {
        PrunePlan {
            sparsity,
            scope: Scope::Global,
            overrides: BTreeMap::new(),
            exclude: Vec::new(),
        }
    }

    /// Checks the plan's own numbers: the sparsity and every override must lie in
    /// `[0, 1)`.
    pub fn validate(&self) -> Result<()> {
        check_fraction("sparsity", self.sparsity)?;
        for (name, &s) in &self.overrides {
            check_fraction(&format!("sparsity override for \"{name}\""), s)?;
        }
        Ok(())
    }

    /// Checks the plan against `model` without deciding anything: the numbers, and that
    /// every override and exclusion names a prunable parameter.
    pub fn check(&self, model: &dyn Params) -> Result<()> {
        self.groups(model).map(|_| ())
    }

    /// Checks every parameter against `model` and groups its prunable tensors into
    /// rankings. Fails, before any work, on a sparsity that is NaN or outside
    /// `[0, 1)`, an override or exclusion that names no prunable tensor, a tensor both
    /// excluded and overridden, or a prunable weight that is NaN.
    pub(crate) fn groups(&self, model: &dyn Params) -> Result<Vec<Group>> {
        self.validate()?;
        let mut prunable = Vec::new();
        let mut nan = None;
        model.visit_params(&mut |p| {
            if p.role.is_prunable() {
                if nan.is_none() && p.data.iter().any(|v| v.is_nan()) {
                    nan = Some(p.name.to_string());
                }
                prunable.push((p.name.to_string(), p.data.len()));
            }
        });
        if let Some(name) = nan {
            return Err(Error::invalid(
                "weights",
                format!("\"{name}\" contains NaN; magnitudes cannot be ranked"),
            ));
        }
        for pattern in &self.exclude {
            if !prunable.iter().any(|(n, _)| matches(pattern, n)) {
                return Err(Error::invalid(
                    "exclusion",
                    format!("\"{pattern}\" matches no prunable parameter"),
                ));
            }
        }
        let excluded = |n: &str| self.exclude.iter().any(|pattern| matches(pattern, n));
        if !prunable.is_empty() && prunable.iter().all(|(n, _)| excluded(n)) {
            return Err(Error::invalid(
                "exclusion",
                format!(
                    "the exclusions cover all {} prunable tensors: nothing is left to prune",
                    prunable.len()
                ),
            ));
        }
        // An override names a tensor (`layer1.0.conv1.weight`) or its module
        // (`layer1.0.conv1`).
        let mut override_of = BTreeMap::new();
        for (pattern, &s) in &self.overrides {
            let hit = prunable
                .iter()
                .find(|(n, _)| n == pattern || *n == format!("{pattern}.weight"));
            let Some((name, _)) = hit else {
                return Err(Error::invalid(
                    "override",
                    format!("\"{pattern}\" is not a prunable parameter"),
                ));
            };
            override_of.insert(name.clone(), s);
        }
        let excluded = |n: &str| self.exclude.iter().any(|p| matches(p, n));
        if let Some(n) = override_of.keys().find(|n| excluded(n)) {
            return Err(Error::invalid(
                "override",
                format!("\"{n}\" is both excluded and given its own sparsity"),
            ));
        }

        let mut groups = Vec::new();
        let mut global = Group {
            tensors: Vec::new(),
            remove: 0,
        };
        let mut global_len = 0;
        for (name, len) in prunable {
            if excluded(&name) {
                continue;
            }
            match (override_of.get(&name), self.scope) {
                (Some(&s), _) => groups.push(Group {
                    tensors: vec![name],
                    remove: removal_count(s, len),
                }),
                (None, Scope::Layer) => groups.push(Group {
                    tensors: vec![name],
                    remove: removal_count(self.sparsity, len),
                }),
                (None, Scope::Global) => {
                    global.tensors.push(name);
                    global_len += len;
                }
            }
        }
        if !global.tensors.is_empty() {
            global.remove = removal_count(self.sparsity, global_len);
            groups.push(global);
        }
        Ok(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_round_to_even_like_python() {
        assert_eq!(removal_count(0.5, 5), 2);
        assert_eq!(removal_count(0.5, 7), 4);
        assert_eq!(removal_count(0.9, 144), 130);
        assert_eq!(removal_count(0.0, 10), 0);
    }

    #[test]
    fn prefixes_match_at_dot_boundaries() {
        assert!(matches("conv1", "conv1.weight"));
        assert!(matches("layer1.0", "layer1.0.conv2.weight"));
        assert!(!matches("conv1", "conv10.weight"));
        assert!(matches("fc.weight", "fc.weight"));
    }
}
