//! Prune → measure → rescale → measure, in one call.

use crate::data::CalibrationData;
use crate::error::{Error, Result};
use crate::layer::{Layer, Params};
use crate::prune::{Masks, Pruner, SparsityReport};
use crate::rescale::{NormSnapshot, RescaleReport, Rescaler};
use crate::stats::{measure_signal, Signal};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The signal metric of every batch-norm layer before pruning, after pruning, and
/// after rescaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalReport {
    /// The dense network.
    pub dense: Signal,
    /// After pruning.
    pub pruned: Signal,
    /// After rescaling.
    pub rescaled: Signal,
}

impl SignalReport {
    /// `pruned / dense`, layer by layer: signal collapse shows as values ≪ 1.
    pub fn pruned_ratio(&self) -> Signal {
        self.pruned.ratio_to(&self.dense)
    }

    /// `rescaled / dense`, layer by layer: recovery shows as values near 1.
    pub fn rescaled_ratio(&self) -> Signal {
        self.rescaled.ratio_to(&self.dense)
    }
}

/// A point between the stages of a [`Pipeline`], where
/// [`Pipeline::run_inspecting`] shows the model to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Before pruning.
    Dense,
    /// Pruned, not yet rescaled.
    Pruned,
    /// Pruned and rescaled.
    Rescaled,
}

/// What a [`Pipeline`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineReport {
    /// The sparsity achieved, tensor by tensor.
    pub sparsity: SparsityReport,
    /// The recalibration.
    pub rescale: RescaleReport,
    /// The signal metric, when the pipeline was given data to measure it on.
    pub signal: Option<SignalReport>,
    /// The masks that were applied.
    #[serde(skip)]
    pub masks: Masks,
}

/// The stages composed: prune with `P`, rescale with `R`, and — when given data to
/// measure on — the signal metric of every batch norm before, between and after.
///
/// Every parameter of both stages and the calibration set are checked before the
/// model is touched.
///
/// ```
/// use reflow::prelude::*;
/// use reflow::pipeline::Pipeline;
/// use reflow::prune::MagnitudePruner;
/// use reflow::rescale::Reflow;
/// use ndarray::Array4;
///
/// let mut net = ResNet::new(ResNetConfig::cifar_resnet(20)?)?;
/// # let mut i = 0u32;
/// # net.visit_params_mut(&mut |p| if p.role.is_prunable() { p.data.iter_mut().for_each(|v| { i = i.wrapping_mul(747796405).wrapping_add(2891336453); *v = (i >> 9) as f32 / 8388608.0 - 1.0; }) });
/// let batch = |s: usize| Array4::from_shape_fn((8, 3, 8, 8), |(n, c, h, w)| ((s + n * c + h * w) % 5) as f32);
/// let calibration = vec![batch(0), batch(1)];
/// let held_out = vec![batch(2)];
///
/// let report = Pipeline::new(MagnitudePruner::new(0.9), Reflow::cumulative())
///     .measure_on(&held_out)
///     .run(&mut net, &calibration)?;
/// assert!((report.sparsity.prunable_sparsity() - 0.9).abs() < 1e-3);
/// let signal = report.signal.unwrap();
/// println!("last BN, pruned/dense: {:?}", signal.pruned_ratio().last());
/// # Ok::<(), reflow::Error>(())
/// ```
pub struct Pipeline<'d, P, R, I> {
    pruner: P,
    rescaler: R,
    measure: Option<&'d dyn CalibrationData<I>>,
    dense_signal: Option<Signal>,
}

impl<'d, P: Pruner, R: Rescaler<I>, I> Pipeline<'d, P, R, I> {
    /// Prune with `pruner`, then rescale with `rescaler`.
    pub fn new(pruner: P, rescaler: R) -> Self {
        Pipeline {
            pruner,
            rescaler,
            measure: None,
            dense_signal: None,
        }
    }

    /// Measures the signal metric on `data` (held-out batches) before pruning, after
    /// pruning and after rescaling.
    pub fn measure_on(mut self, data: &'d dyn CalibrationData<I>) -> Self {
        self.measure = Some(data);
        self
    }

    /// The dense network's signal, measured before on the same data: the pipeline
    /// then does not measure it again (useful when one dense network is pruned at
    /// several sparsities).
    pub fn dense_signal(mut self, signal: Signal) -> Self {
        self.dense_signal = Some(signal);
        self
    }

    /// Runs the stages on `model`, rescaling on `calibration`.
    pub fn run<L>(
        &self,
        model: &mut L,
        calibration: &dyn CalibrationData<I>,
    ) -> Result<PipelineReport>
    where
        L: Layer<Input = I>,
    {
        self.run_inspecting(model, calibration, |_, _| Ok(()))
    }

    /// Like [`Pipeline::run`], and calls `inspect` with the model at each [`Stage`] —
    /// to evaluate its accuracy, say, or to report progress. An error from `inspect`
    /// stops the pipeline.
    pub fn run_inspecting<L>(
        &self,
        model: &mut L,
        calibration: &dyn CalibrationData<I>,
        mut inspect: impl FnMut(Stage, &L) -> Result<()>,
    ) -> Result<PipelineReport>
    where
        L: Layer<Input = I>,
    {
        self.rescaler.validate()?;
        if calibration.num_batches() == 0 {
            return Err(Error::empty(
                "calibration data",
                "empty calibration set (0 batches)",
            ));
        }
        let masks = self.pruner.masks(model)?;
        inspect(Stage::Dense, model)?;
        let dense = match &self.dense_signal {
            Some(known) => self.measure.map(|_| known.clone()),
            None => self.measure.map(|d| measure_signal(model, d)).transpose()?,
        };
        // What the masks will zero, and the running statistics, so that a failure
        // after pruning leaves the model as it was given.
        let weights = Snapshot::take(model, &masks);
        masks.apply(model)?;
        let after = (|| {
            let sparsity = SparsityReport::measure(model);
            inspect(Stage::Pruned, model)?;
            let pruned = self.measure.map(|d| measure_signal(model, d)).transpose()?;
            let rescale = self.rescaler.rescale(model, calibration)?;
            inspect(Stage::Rescaled, model)?;
            let rescaled = self.measure.map(|d| measure_signal(model, d)).transpose()?;
            Ok((sparsity, pruned, rescale, rescaled))
        })();
        let (sparsity, pruned, rescale, rescaled) = match after {
            Ok(done) => done,
            Err(e) => {
                weights.restore(model);
                return Err(e);
            }
        };
        let signal = match (dense, pruned, rescaled) {
            (Some(dense), Some(pruned), Some(rescaled)) => Some(SignalReport {
                dense,
                pruned,
                rescaled,
            }),
            _ => None,
        };
        Ok(PipelineReport {
            sparsity,
            rescale,
            signal,
            masks,
        })
    }
}

/// The tensors a set of masks covers and every batch norm's running statistics, as
/// they were before a pipeline changed them.
struct Snapshot {
    params: HashMap<String, Vec<f32>>,
    norms: NormSnapshot,
}

impl Snapshot {
    fn take(model: &dyn Params, masks: &Masks) -> Self {
        let mut params = HashMap::new();
        model.visit_params(&mut |p| {
            if masks.get(p.name).is_some() {
                params.insert(p.name.to_string(), p.data.to_vec());
            }
        });
        Snapshot {
            params,
            norms: NormSnapshot::take(model),
        }
    }

    fn restore(self, model: &mut dyn Params) {
        let mut params = self.params;
        model.visit_params_mut(&mut |p| {
            if let Some(data) = params.remove(p.name) {
                p.data.copy_from_slice(&data);
            }
        });
        self.norms.restore(model);
    }
}
