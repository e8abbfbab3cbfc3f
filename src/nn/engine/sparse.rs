//! Which pruned convolutions run on the sparse kernel ([`crate::nn::kernels::blocked_sparse`]):
//! each convolution's sparse form and the choices it measured under the pass's
//! [`SparsePolicy`].
//!
//! Under the default policy, [`SparsePolicy::Measured`], a convolution with at most
//! 40 % of its weights non-zero ([`SparsePolicy::MEASURED_DENSITY`]) times its dense and its sparse kernels the first time
//! it runs on an input of a new size (with as many threads), and keeps the faster one
//! for that size: a pruned layer is never slower than dense by more than the timing's
//! noise, and a dense checkpoint never pays for the measurement.

use crate::exec::SparsePolicy;
use crate::nn::kernels::blocked_sparse::SparseConv;
use crate::nn::Conv2dConfig;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// How much faster than dense the sparse kernel must have been measured to be chosen.
const MARGIN: f64 = 0.95;

/// What a convolution ran on for one input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Choice {
    Dense,
    Sparse,
}

/// A convolution's measured choice between its dense and sparse kernels for one input
/// size, under [`SparsePolicy::Measured`] (see [`crate::nn::Conv2d::sparse_choices`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseChoice {
    /// The input's `[n, h, w]`.
    pub input: [usize; 3],
    /// The threads the call had.
    pub threads: usize,
    /// Whether the sparse kernel was the faster, and runs for this size.
    pub sparse: bool,
}

/// The input size a choice holds for: `[n, h, w, threads]`.
type Key = [usize; 4];

/// A convolution's sparse form, made on first use, and the choices measured for it.
#[derive(Debug, Default)]
pub(crate) struct SparseForm {
    packed: OnceLock<Option<SparseConv>>,
    choices: Mutex<Vec<(Key, Choice)>>,
}

impl Clone for SparseForm {
    /// A copy measures again: it may run elsewhere.
    fn clone(&self) -> Self {
        SparseForm::default()
    }
}

impl SparseForm {
    /// The weights packed for the sparse kernel, if the policy lets it run and it can.
    pub(crate) fn packed(
        &self,
        config: &Conv2dConfig,
        weight: &[f32],
        policy: SparsePolicy,
    ) -> Option<&SparseConv> {
        if policy == SparsePolicy::Never || config.dilation != [1, 1] {
            return None;
        }
        let packed = self
            .packed
            .get_or_init(|| SparseConv::new(weight, config.geometry([0, 0], [0, 0])))
            .as_ref()?;
        let density = packed.nonzeros() as f64 / weight.len().max(1) as f64;
        (policy == SparsePolicy::Always || density <= SparsePolicy::MEASURED_DENSITY)
            .then_some(packed)
    }

    /// Runs `dense` or `sparse` (which gives `None` when it declines the input) as
    /// `policy` and the choice for `key` say, measuring the choice on the first call
    /// for `key`; returns the output and whether `sparse` made it.
    pub(crate) fn run<T>(
        &self,
        policy: SparsePolicy,
        key: Key,
        mut dense: impl FnMut() -> T,
        mut sparse: impl FnMut() -> Option<T>,
    ) -> (T, bool) {
        let mut sparse_or_dense = || match sparse() {
            Some(y) => (y, true),
            None => (dense(), false),
        };
        match (policy, self.choice(key)) {
            (SparsePolicy::Never, _) | (_, Some(Choice::Dense)) => (dense(), false),
            (SparsePolicy::Always, _) | (_, Some(Choice::Sparse)) => sparse_or_dense(),
            (SparsePolicy::Measured, None) => (self.measure(key, dense, sparse), false),
        }
    }

    /// The choice measured for `key`, if any.
    pub(crate) fn choice(&self, key: Key) -> Option<Choice> {
        let choices = self.choices.lock().unwrap_or_else(|e| e.into_inner());
        choices.iter().find(|(k, _)| *k == key).map(|(_, c)| *c)
    }

    /// Every choice measured so far.
    pub(crate) fn choices(&self) -> Vec<SparseChoice> {
        let choices = self.choices.lock().unwrap_or_else(|e| e.into_inner());
        choices
            .iter()
            .map(|&([n, h, w, threads], choice)| SparseChoice {
                input: [n, h, w],
                threads,
                sparse: choice == Choice::Sparse,
            })
            .collect()
    }

    /// Times `dense` and `sparse` (each run once to warm up, then three times
    /// alternately) and keeps for `key` the sparse kernel if its fastest run was at
    /// least 5 % faster than dense's, else dense; returns `dense`'s output. `sparse` gives `None`
    /// when it declines the input: then nothing is kept.
    pub(crate) fn measure<T>(
        &self,
        key: Key,
        mut dense: impl FnMut() -> T,
        mut sparse: impl FnMut() -> Option<T>,
    ) -> T {
        let time = |f: &mut dyn FnMut() -> bool| {
            let start = Instant::now();
            let ran = f();
            (ran, start.elapsed().as_secs_f64())
        };
        let mut out = dense();
        if sparse().is_none() {
            return out;
        }
        let (mut fastest_dense, mut fastest_sparse) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..3 {
            let (_, t) = time(&mut || {
                out = dense();
                true
            });
            fastest_dense = fastest_dense.min(t);
            let (ran, t) = time(&mut || sparse().is_some());
            if !ran {
                return out;
            }
            fastest_sparse = fastest_sparse.min(t);
        }
        // Only a clear win counts: a layer on the sparse kernel by the timing's noise
        // alone could make the network slower.
        let choice = if fastest_sparse < MARGIN * fastest_dense {
            Choice::Sparse
        } else {
            Choice::Dense
        };
        let mut choices = self.choices.lock().unwrap_or_else(|e| e.into_inner());
        if !choices.iter().any(|(k, _)| *k == key) {
            choices.push((key, choice));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> Conv2dConfig {
        Conv2dConfig::new(4, 2, 1)
    }

    #[test]
    fn measured_policy_packs_only_layers_at_most_40_percent_dense() {
        let fewer = [1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 0.0, 0.0];
        // 2:4: half dense, never faster on the sparse kernel.
        let half = [1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 0.0, 4.0];
        let most = [1.0, 5.0, 2.0, 0.0, 6.0, 3.0, 0.0, 4.0];
        for (weight, measured) in [(fewer, true), (half, false), (most, false)] {
            let form = SparseForm::default();
            let packed = form.packed(&config(), &weight, SparsePolicy::Measured);
            assert_eq!(packed.is_some(), measured, "{weight:?}");
            assert!(form
                .packed(&config(), &weight, SparsePolicy::Always)
                .is_some());
            assert!(form
                .packed(&config(), &weight, SparsePolicy::Never)
                .is_none());
        }
        let dilated = config().dilation(2);
        let form = SparseForm::default();
        assert!(form.packed(&dilated, &half, SparsePolicy::Always).is_none());
    }

    #[test]
    fn measurement_keeps_the_faster_kernel_per_input_size() {
        let form = SparseForm::default();
        let slow = || std::thread::sleep(Duration::from_millis(3));
        // The dense kernel's output comes back, whichever is kept.
        let out = form.measure([1, 7, 7, 1], || 1, || Some(2));
        assert_eq!(out, 1);
        let out = form.measure(
            [8, 7, 7, 1],
            || {
                slow();
                1
            },
            || Some(2),
        );
        assert_eq!(out, 1);
        let out = form.measure(
            [8, 14, 14, 2],
            || 1,
            || {
                slow();
                Some(2)
            },
        );
        assert_eq!(out, 1);
        assert_eq!(form.choice([8, 7, 7, 1]), Some(Choice::Sparse));
        assert_eq!(form.choice([8, 14, 14, 2]), Some(Choice::Dense));
        assert_eq!(form.choice([2, 7, 7, 1]), None);
        // A kernel that declines the input decides nothing.
        let form = SparseForm::default();
        assert_eq!(form.measure([1, 7, 7, 1], || 1, || None), 1);
        assert_eq!(form.choice([1, 7, 7, 1]), None);
        assert!(form.choices().is_empty());
    }

    #[test]
    fn policies_have_names() {
        for p in SparsePolicy::ALL {
            assert_eq!(p.name().parse::<SparsePolicy>().unwrap(), p);
            assert_eq!(p.to_string(), p.name());
        }
        let err = "sometimes".parse::<SparsePolicy>().unwrap_err();
        assert!(err.to_string().contains("sometimes"), "{err}");
    }
}
