//! The evaluation protocol `reflow prune` runs, as library API: for each pruning,
//! from the dense network, prune → evaluate → repair (REFLOW, none, or the automatic
//! choice of [`trust`](crate::trust)) → evaluate, with the signal metric of every
//! batch-norm layer and the fidelity to the dense network at each step.
//!
//! ```
//! use reflow::prelude::*;
//! use reflow::protocol::{Protocol, Shard};
//! use reflow::trust::Repair;
//!
//! let mut net = ResNet::new(ResNetConfig::cifar_resnet(8)?.with_in_channels(1))?;
//! # let mut i = 0u32;
//! # net.visit_params_mut(&mut |p| if p.role.is_prunable() { p.data.iter_mut().for_each(|v| { i = i.wrapping_mul(747796405).wrapping_add(2891336453); *v = (i >> 9) as f32 / 8388608.0 - 1.0; }) });
//! let pixels: Vec<u8> = (0..24 * 64).map(|i| (i * 37 % 251) as u8).collect();
//! let images = IdxImages::from_pixels([24, 1, 8, 8], pixels)?;
//! let labels: Vec<u32> = (0..24).map(|i| i % 10).collect();
//! let norm = Normalization::fashion_mnist();
//! let calibration = ImageBatches::new(&images, 16, 8, &norm)?;
//! let protocol = Protocol {
//!     test: &images,
//!     labels: Some(&labels),
//!     norm: &norm,
//!     calibration: &calibration,
//!     signal_images: 8,
//!     repair: Repair::reflow(Reflow::cumulative()),
//!     shard: Shard::WHOLE,
//! };
//! let dense = protocol.dense(&net)?;
//! let dense_state = StateDict::from_layer(&net);
//! let run = protocol.run(&mut net, &dense_state, &dense, 0.5, MagnitudePruner::new(0.5), &mut || {})?;
//! assert_eq!(run.repair.chosen, "reflow");
//! assert_eq!(run.pruned.accuracy.unwrap().total, 24);
//! println!("agreement with dense after REFLOW: {:?}", run.repaired.fidelity);
//! # Ok::<(), reflow::Error>(())
//! ```

mod calibration;
mod choices;
mod report;
mod sources;
mod study;
pub mod sweep;

pub use choices::{Inputs, Method, Pattern, RepairChoice};
pub use report::{
    CalibrationReport, ChannelLayer, CheckReport, DenseReport, FidelityReport, Layers, ModelReport,
    Number, Report, ResNetShape, RunReport, ScoresReport, SignalReport, TensorLayer,
};
pub use sources::{Images, Labels, Source, TestImages};
pub use study::{Progress, Pruned, Runs, Study};
pub use sweep::{PartialReport, Shard, Tally};

use crate::data::ImageBatches;
use crate::error::Result;
use crate::io::{ImageSource, Normalization};
use crate::layer::{Layer, Probe};
use crate::metrics::{argmax, Accuracy};
use crate::prune::{Pruner, SparsityReport};
use crate::state_dict::StateDict;
use crate::stats::{Recorder, Signal, TapSelector};
use crate::trust::{Fidelity, Reference, Repair, RepairReport};
use serde::Serialize;
use std::ops::Range;
use std::time::Instant;
use sweep::blocks;

/// Batch size for evaluation and signal measurement.
pub const EVAL_BATCH: usize = 256;

/// Test images the signal metric is measured on when none are asked for (all of them
/// when there are fewer).
pub const DEFAULT_SIGNAL_IMAGES: usize = 1000;

/// How many of `test` images the signal metric is measured on: `asked`, at most the
/// test set, or [`DEFAULT_SIGNAL_IMAGES`] (all when there are fewer).
///
/// ```
/// use reflow::protocol::signal_images;
///
/// assert_eq!(signal_images(None, 400)?, 400);
/// assert_eq!(signal_images(None, 10_000)?, 1000);
/// assert_eq!(signal_images(Some(64), 400)?, 64);
/// assert!(signal_images(Some(500), 400).is_err());
/// assert!(signal_images(Some(0), 400).is_err());
/// # Ok::<(), reflow::Error>(())
/// ```
pub fn signal_images(asked: Option<usize>, test: usize) -> Result<usize> {
    match asked {
        Some(0) => Err(crate::Error::zero("signal images")),
        Some(n) if n > test => Err(crate::Error::invalid(
            "signal images",
            format!("{n} asked for, the test set has {test}"),
        )),
        Some(n) => Ok(n),
        None => Ok(DEFAULT_SIGNAL_IMAGES.min(test)),
    }
}

/// One network on the evaluation images: accuracy (when there are labels), the signal
/// on the signal images, and the fidelity to the dense network (for all but it).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Evaluation {
    /// Top-1 on the evaluation images, when they have labels.
    pub accuracy: Option<Accuracy>,
    /// The signal metric of every batch norm on the first `signal_images` images.
    pub signal: Signal,
    /// Agreement and KL to the dense network (`None` for the dense network itself).
    pub fidelity: Option<Fidelity>,
    /// What the three are made of: the results of the blocks of test images (one,
    /// folded, when the first block is among them), what a sweep's shard writes
    /// ([`sweep`]).
    #[serde(skip)]
    pub tallies: Vec<Tally>,
}

impl Evaluation {
    /// Top-1, NaN without labels.
    pub fn top1(&self) -> f64 {
        self.accuracy.map_or(f64::NAN, |a| a.top1())
    }
}

/// The dense network, evaluated, and its outputs kept to compare the others with.
#[derive(Debug, Clone)]
pub struct Dense {
    /// Its evaluation.
    pub evaluation: Evaluation,
    /// Its outputs on the evaluation images.
    pub test: Reference,
    /// Its outputs on the calibration images (what the repair's choice and check judge
    /// by); `None` when the repair is none.
    pub calibration: Option<Reference>,
}

/// One sparsity's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// The sparsity asked for (N:M: 1 − N/M; channel pruning: the channel fraction).
    pub sparsity: f64,
    /// The pruned network, before the repair.
    pub pruned: Evaluation,
    /// After the repair (the pruned network again when the repair made is none).
    pub repaired: Evaluation,
    /// Which repair was made, why, and the calibration check.
    pub repair: RepairReport,
    /// The pruned network's zeros, tensor by tensor.
    pub report: SparsityReport,
    /// Wall time of the run, in seconds.
    pub secs: f64,
}

/// The data a protocol runs on, and the repair it makes.
pub struct Protocol<'a> {
    /// The evaluation images.
    pub test: &'a dyn ImageSource,
    /// Their labels, when there are: without, accuracy is not measured, fidelity is.
    pub labels: Option<&'a [u32]>,
    /// The normalisation of every image.
    pub norm: &'a Normalization,
    /// The calibration images, in batches.
    pub calibration: &'a ImageBatches<'a>,
    /// The signal metric is measured on the first this many test images.
    pub signal_images: usize,
    /// What to do after pruning.
    pub repair: Repair,
    /// The part of the test images evaluated: [`Shard::WHOLE`], or one shard of a
    /// sweep ([`sweep`]).
    pub shard: Shard,
}

impl Protocol<'_> {
    /// Evaluates the dense network and keeps its outputs: on the test images, and on
    /// the calibration images when a repair may be made.
    pub fn dense<N>(&self, net: &N) -> Result<Dense>
    where
        N: Layer<Input = crate::nn::Tensor4, Output = crate::nn::Tensor2>,
    {
        let mut test = Reference::new();
        let evaluation = self.pass(net, Outputs::Record(&mut test))?;
        let calibration = match self.repair.candidates().is_empty() {
            true => None,
            false => Some(Reference::record(net, self.calibration)?),
        };
        Ok(Dense {
            evaluation,
            test,
            calibration,
        })
    }

    /// Top-1 on the test images (when labelled), the fidelity to `dense` on them and
    /// the signal metric on the first `signal_images` of them, in one pass — of the
    /// shard's part alone, when a shard.
    pub fn evaluate<N>(&self, net: &N, dense: &Dense) -> Result<Evaluation>
    where
        N: Layer<Input = crate::nn::Tensor4, Output = crate::nn::Tensor2>,
    {
        self.pass(net, Outputs::Compare(&dense.test))
    }

    /// The test images this protocol evaluates, in blocks (see [`sweep`]): all of
    /// them, or the shard's. Fails when the sweep has more shards than blocks.
    pub fn blocks(&self) -> Result<Vec<Range<usize>>> {
        let all = blocks(self.test.len(), self.signal_images, EVAL_BATCH);
        if self.shard.count() > all.len() {
            return Err(crate::Error::invalid(
                "shard",
                format!(
                    "{}: the test set makes {} block(s) of at most {EVAL_BATCH} images, the unit a shard evaluates; use at most {} shards",
                    self.shard,
                    all.len(),
                    all.len()
                ),
            ));
        }
        Ok(all[self.shard.blocks(all.len())].to_vec())
    }

    /// One pass over the test images (the shard's): each block's accuracy, signal
    /// statistics and outputs — recorded as the reference, or compared with it.
    fn pass<N>(&self, net: &N, mut outputs: Outputs<'_>) -> Result<Evaluation>
    where
        N: Layer<Input = crate::nn::Tensor4, Output = crate::nn::Tensor2>,
    {
        let observed = self.signal_images.min(self.test.len());
        let mut tallies: Vec<Tally> = Vec::new();
        let mut compared = 0;
        for range in self.blocks()? {
            let indices: Vec<usize> = range.clone().collect();
            let x = self.test.tensor(&indices, self.norm)?;
            let mut recorder = Recorder::new(TapSelector::batch_norm_outputs());
            let logits = if range.start < observed {
                net.forward_with(&x, &mut Probe::new(&mut recorder))?
            } else {
                net.forward(&x)?
            };
            let (agree, kl) = match &mut outputs {
                Outputs::Record(reference) => {
                    reference.push(&logits)?;
                    (None, None)
                }
                Outputs::Compare(reference) => {
                    let mut meter = reference.meter_at(compared);
                    meter.add(&logits)?;
                    compared += logits.nrows();
                    let (agree, kl) = meter.sums();
                    (Some(agree), Some(Number(kl)))
                }
            };
            let correct = self.labels.map(|labels| {
                let rows = logits.rows().into_iter().zip(&labels[range.clone()]);
                rows.filter(|(row, &label)| argmax(row.iter().copied()) == label as usize)
                    .count()
            });
            let tally = Tally {
                images: range.len(),
                correct,
                agree,
                kl,
                signal: recorder.finish()?,
            };
            // The first shard's blocks begin the fold: kept folded.
            match tallies.last_mut() {
                Some(last) if self.shard.index() == 0 => last.absorb(&tally)?,
                _ => tallies.push(tally),
            }
        }
        if let Outputs::Compare(reference) = outputs {
            if compared != reference.len() {
                return Err(crate::Error::Data(format!(
                    "{compared} images compared, the dense network's outputs are of {}",
                    reference.len()
                )));
            }
        }
        Evaluation::from_tallies(tallies)
    }

    /// Restores `dense_state` into `net`, then prunes with `pruner`, evaluates, repairs
    /// and evaluates again. Calls `progress` after each evaluation.
    pub fn run<N, P: Pruner>(
        &self,
        net: &mut N,
        dense_state: &StateDict,
        dense: &Dense,
        sparsity: f64,
        pruner: P,
        progress: &mut dyn FnMut(),
    ) -> Result<Run>
    where
        N: Layer<Input = crate::nn::Tensor4, Output = crate::nn::Tensor2>,
    {
        let started = Instant::now();
        dense_state.load_into(net)?;
        pruner.prune(net)?;
        self.run_pruned(net, dense, sparsity, started, progress)
    }

    /// Evaluates `net`, pruned already (a channel-pruned, compact network), repairs it
    /// and evaluates again. `started` is when its pruning began.
    pub fn run_pruned<N>(
        &self,
        net: &mut N,
        dense: &Dense,
        sparsity: f64,
        started: Instant,
        progress: &mut dyn FnMut(),
    ) -> Result<Run>
    where
        N: Layer<Input = crate::nn::Tensor4, Output = crate::nn::Tensor2>,
    {
        let report = SparsityReport::measure(net);
        let pruned = self.evaluate(net, dense)?;
        progress();
        let repair = match &dense.calibration {
            Some(on_calibration) => self.repair.apply(net, self.calibration, on_calibration)?,
            None => self
                .repair
                .apply(net, self.calibration, &Reference::new())?,
        };
        let repaired = match repair.rescale {
            Some(_) => self.evaluate(net, dense)?,
            None => pruned.clone(),
        };
        progress();
        Ok(Run {
            sparsity,
            pruned,
            repaired,
            repair,
            report,
            secs: started.elapsed().as_secs_f64(),
        })
    }
}

/// Where a pass's outputs go: into the dense network's reference, or compared with it.
enum Outputs<'r> {
    Record(&'r mut Reference),
    Compare(&'r Reference),
}
