#![allow(dead_code)] // each example uses its own part of this module

//! The evaluation protocol shared by the `prune` and `resnet` examples: for each
//! sparsity, from the dense checkpoint, prune → evaluate → REFLOW → evaluate, with the
//! signal metric of every batch-norm layer at each step.

use indicatif::{ProgressBar, ProgressStyle};
use reflow::prelude::*;
use std::time::Instant;

/// Batch size for evaluation and signal measurement.
pub const EVAL_BATCH: usize = 256;

/// Accuracy on the test set and signal on the signal images.
pub struct Evaluation {
    pub accuracy: Accuracy,
    pub signal: Signal,
}

/// One sparsity's results.
pub struct Run {
    pub sparsity: f64,
    pub pruned: Evaluation,
    pub reflow: Evaluation,
    pub report: PipelineReport,
    pub secs: f64,
}

/// The data a protocol runs on.
pub struct Protocol<'a> {
    pub test: &'a Dataset,
    pub norm: &'a Normalization,
    pub calibration: &'a ImageBatches<'a>,
    pub signal_images: &'a ImageBatches<'a>,
    pub reflow: Reflow,
}

/// A progress bar on stderr for `steps` evaluations.
pub fn progress_bar(steps: u64) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    bar
}

impl Protocol<'_> {
    /// Evaluates the network as it is.
    pub fn evaluate(&self, net: &ResNet) -> reflow::Result<Evaluation> {
        Ok(Evaluation {
            accuracy: accuracy(net, self.test, EVAL_BATCH, self.norm)?,
            signal: measure_signal(net, self.signal_images)?,
        })
    }

    /// Restores `dense` (whose signal is `dense_signal`) into `net`, then prunes with `pruner`, evaluates, recalibrates
    /// and evaluates again. Ticks `progress` after each evaluation.
    pub fn run(
        &self,
        net: &mut ResNet,
        dense: &StateDict,
        dense_signal: &Signal,
        sparsity: f64,
        pruner: MagnitudePruner,
        progress: &ProgressBar,
    ) -> reflow::Result<Run> {
        let started = Instant::now();
        dense.load_into(net)?;
        progress.set_message(format!("sparsity {sparsity}"));
        let (mut pruned, mut reflow) = (Accuracy::default(), Accuracy::default());
        let report = Pipeline::new(pruner, self.reflow)
            .measure_on(self.signal_images)
            .dense_signal(dense_signal.clone())
            .run_inspecting(net, self.calibration, |stage, model| {
                let slot = match stage {
                    Stage::Dense => return Ok(()),
                    Stage::Pruned => &mut pruned,
                    Stage::Rescaled => &mut reflow,
                };
                *slot = accuracy(model, self.test, EVAL_BATCH, self.norm)?;
                progress.inc(1);
                Ok(())
            })?;
        let signal = report
            .signal
            .clone()
            .expect("measured on the signal images");
        Ok(Run {
            sparsity,
            pruned: Evaluation {
                accuracy: pruned,
                signal: signal.pruned,
            },
            reflow: Evaluation {
                accuracy: reflow,
                signal: signal.rescaled,
            },
            report,
            secs: started.elapsed().as_secs_f64(),
        })
    }
}

/// The last batch-norm layer's signal relative to the dense network's.
pub fn last_ratio(signal: &Signal, dense: &Signal) -> f64 {
    signal.ratio_to(dense).last().map_or(f64::NAN, |(_, r)| r)
}
