//! The choices a [`Study`](super::Study) is made of: how the weights are pruned
//! ([`Pattern`]), how those to remove are chosen ([`Method`]), which network their
//! statistics are measured on ([`Inputs`]) and what follows each pruning
//! ([`RepairChoice`]); each parsed from the name the command line gives it.

use crate::error::{Error, Result};
use crate::prune::NmPruner;
use crate::rescale::Reflow;
use crate::trust::Repair;
use std::fmt;
use std::str::FromStr;

/// How the weights are pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Magnitude pruning at each sparsity, in the study's [`Scope`](crate::prune::Scope).
    Unstructured,
    /// N of every M consecutive weights kept: one run.
    Nm(usize, usize),
    /// Whole channels removed at each sparsity (the fraction of the channels in
    /// scope): a compact network.
    Channel,
}

impl Pattern {
    /// `unstructured`, `N:M` or `channel`: how reports name it.
    pub fn name(self) -> String {
        match self {
            Pattern::Unstructured => "unstructured".into(),
            Pattern::Nm(n, m) => format!("{n}:{m}"),
            Pattern::Channel => "channel".into(),
        }
    }

    /// The file name of a run's network at `sparsity`: `s0.5.safetensors`,
    /// `nm2-4.safetensors`, `channel-s0.3.safetensors`.
    pub fn saved_name(self, sparsity: f64) -> String {
        match self {
            Pattern::Unstructured => format!("s{sparsity}.safetensors"),
            Pattern::Nm(n, m) => format!("nm{n}-{m}.safetensors"),
            Pattern::Channel => format!("channel-s{sparsity}.safetensors"),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Pattern {
    type Err = Error;

    /// `unstructured`, `channel` or `N:M` with 1 ≤ N < M.
    ///
    /// ```
    /// use reflow::protocol::Pattern;
    ///
    /// assert_eq!("2:4".parse::<Pattern>()?, Pattern::Nm(2, 4));
    /// assert!("4:2".parse::<Pattern>().is_err());
    /// # Ok::<(), reflow::Error>(())
    /// ```
    fn from_str(text: &str) -> Result<Pattern> {
        let bad = |why: &str| Error::invalid("pattern", format!("\"{text}\": {why}"));
        match text {
            "unstructured" => Ok(Pattern::Unstructured),
            "channel" => Ok(Pattern::Channel),
            _ => {
                let Some((n, m)) = text.split_once(':') else {
                    return Err(bad("expected unstructured, channel or N:M (e.g. 2:4)"));
                };
                let (Ok(n), Ok(m)) = (n.trim().parse::<usize>(), m.trim().parse::<usize>()) else {
                    return Err(bad("N and M must be whole numbers (e.g. 2:4)"));
                };
                NmPruner::new(n, m).map_err(|_| bad("N must be at least 1 and below M"))?;
                Ok(Pattern::Nm(n, m))
            }
        }
    }
}

crate::names::names! {
    /// How the weights to remove are chosen, for the unstructured and N:M patterns.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum Method as "method", expecting "magnitude, wanda or sparsegpt" {
        /// The smallest |w| ([`MagnitudePruner`](crate::prune::MagnitudePruner), [`NmPruner`]): no data needed.
        #[default]
        Magnitude = "magnitude",
        /// The smallest |w| · ‖x‖ of each row ([`WandaPruner`](crate::prune::WandaPruner)), the input norms measured
        /// on the dense network over the calibration images, once before the runs.
        Wanda = "wanda",
        /// SparseGPT's choice and weight update ([`SparseGptPruner`](crate::prune::SparseGptPruner)), the input Hessians
        /// measured on the dense network over the calibration images, once before the runs.
        SparseGpt = "sparsegpt",
    }
}

crate::names::names! {
    /// Which network the activation-aware methods measure each layer's inputs on.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum Inputs as "inputs", expecting "dense or sequential" {
        /// The dense network, once before the runs (OBC's and Wanda's default).
        #[default]
        Dense = "dense",
        /// The network as pruned so far: layer by layer in forward order, each measured
        /// with the layers before it pruned (and, for SparseGPT, updated), one pass over
        /// the calibration images per layer and run
        /// ([`SparseGptPruner::prune_sequential`](crate::prune::SparseGptPruner::prune_sequential),
        /// [`WandaPruner::prune_sequential`](crate::prune::WandaPruner::prune_sequential)).
        Sequential = "sequential",
    }
}

crate::names::names! {
    /// What follows each pruning.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum RepairChoice as "repair", expecting "reflow, none or auto" {
        /// REFLOW in the study's mode (the paper's method).
        #[default]
        Reflow = "reflow",
        /// Nothing: the pruned network as it is.
        None = "none",
        /// REFLOW or nothing, whichever stays closer to the dense network (see
        /// [`Repair::auto`]).
        Auto = "auto",
    }
}

impl RepairChoice {
    /// The repair, with REFLOW as `reflow`.
    pub fn repair(self, reflow: Reflow) -> Repair {
        match self {
            RepairChoice::Reflow => Repair::reflow(reflow),
            RepairChoice::None => Repair::None,
            RepairChoice::Auto => Repair::auto(reflow),
        }
    }
}
