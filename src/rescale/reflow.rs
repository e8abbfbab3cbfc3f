//! REFLOW: re-estimating batch-norm statistics after pruning.

use super::{CalibrationData, RescaleReport, Rescaler};
use crate::error::{Error, Result};
use crate::layer::{check_norm_walk, LayerKind, Network, NormUpdate, Params, Probe, Site};
use crate::stats::{Recorder, TapSelector};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// How REFLOW estimates the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ReflowMode {
    /// Every batch-norm layer is reset (mean 0, variance 1, 0 batches), then the
    /// calibration batches run through the network in train mode, each layer
    /// normalising by the batch's statistics and averaging the batches' means and
    /// unbiased variances with equal weight. Exactly PyTorch's `momentum=None`
    /// train-mode `BatchNorm`; the paper's method.
    Cumulative,
    /// Like [`ReflowMode::Cumulative`], but an exponential moving average with
    /// `momentum` (PyTorch's `momentum=m`), starting from the reset statistics.
    Ema {
        /// The weight of each new batch, in (0, 1].
        momentum: f64,
    },
    /// Layer by layer in forward order, with every batch norm in eval mode and the
    /// upstream ones already recalibrated: a layer's running mean and (unbiased)
    /// variance become the population statistics of its input over the whole
    /// calibration set. Independent of the batch size; one pass over the data per
    /// batch-norm layer.
    Exact,
}

/// The REFLOW rescaler (Saikumar & Varghese, arXiv 2502.15790): re-estimates every
/// batch-norm layer's running statistics on calibration data. It changes no
/// convolution or linear weight, no bias, no γ or β.
///
/// ```
/// use reflow::prelude::*;
/// use reflow::rescale::{Reflow, Rescaler};
/// use ndarray::Array4;
///
/// let mut net = ResNet::new(ResNetConfig::cifar_resnet(20)?)?;
/// let calibration: Vec<Array4<f32>> = (0..4)
///     .map(|i| Array4::from_shape_fn((8, 3, 8, 8), |(n, c, h, w)| ((i + n + c * h + w) % 7) as f32))
///     .collect();
/// let report = Reflow::cumulative().rescale(&mut net, &calibration)?;
/// assert_eq!((report.layers, report.batches), (21, 4));
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reflow {
    mode: ReflowMode,
}

impl Default for Reflow {
    fn default() -> Self {
        Self::cumulative()
    }
}

impl Reflow {
    /// REFLOW with the given mode; the momentum of [`ReflowMode::Ema`] is checked when
    /// it runs.
    pub fn new(mode: ReflowMode) -> Self {
        Reflow { mode }
    }

    /// The paper's REFLOW: PyTorch's cumulative average (the default).
    pub fn cumulative() -> Self {
        Self::new(ReflowMode::Cumulative)
    }

    /// An exponential moving average with `momentum` in (0, 1].
    pub fn ema(momentum: f64) -> Self {
        Self::new(ReflowMode::Ema { momentum })
    }

    /// Layer-sequential population statistics.
    pub fn exact() -> Self {
        Self::new(ReflowMode::Exact)
    }

    /// The mode.
    pub fn mode(&self) -> ReflowMode {
        self.mode
    }

    /// Checks the mode's parameter: an EMA momentum must lie in (0, 1].
    pub fn validate(&self) -> Result<()> {
        if let ReflowMode::Ema { momentum } = self.mode {
            if !(momentum > 0.0 && momentum <= 1.0) {
                return Err(Error::out_of_range("momentum", momentum, "(0, 1]"));
            }
        }
        Ok(())
    }
}

impl<I> Rescaler<I> for Reflow {
    fn validate(&self) -> Result<()> {
        Reflow::validate(self)
    }

    fn rescale(
        &self,
        model: &mut dyn Network<I>,
        data: &dyn CalibrationData<I>,
    ) -> Result<RescaleReport> {
        Reflow::validate(self)?;
        check_norm_walk(model)?;
        let batches = data.num_batches();
        if batches == 0 {
            return Err(Error::empty(
                "calibration data",
                "empty calibration set (0 batches)",
            ));
        }
        let snapshot = NormSnapshot::take(model);
        let result = match self.mode {
            ReflowMode::Cumulative => running(model, data, NormUpdate::Cumulative),
            ReflowMode::Ema { momentum } => running(model, data, NormUpdate::Ema { momentum }),
            ReflowMode::Exact => exact(model, data),
        };
        match result {
            Ok(report) => Ok(report),
            Err(e) => {
                snapshot.restore(model);
                Err(e)
            }
        }
    }
}

/// A copy of every batch norm's running statistics, by name, to restore after a
/// failure.
pub(crate) struct NormSnapshot(HashMap<String, (Vec<f32>, Vec<f32>, i64)>);

impl NormSnapshot {
    pub(crate) fn take(model: &dyn Params) -> Self {
        let mut all = HashMap::new();
        model.visit_norms(&mut |name, s| {
            let saved = (
                s.running_mean.to_vec(),
                s.running_var.to_vec(),
                s.num_batches_tracked,
            );
            all.insert(name.to_string(), saved);
        });
        NormSnapshot(all)
    }

    pub(crate) fn restore(&self, model: &mut dyn Params) {
        model.visit_norms_mut(&mut |name, s| {
            if let Some((m, v, n)) = self.0.get(name) {
                s.running_mean.copy_from_slice(m);
                s.running_var.copy_from_slice(v);
                *s.num_batches_tracked = *n;
            }
        });
    }
}

/// Reset, then one train-mode pass.
fn running<I>(
    model: &mut dyn Network<I>,
    data: &dyn CalibrationData<I>,
    update: NormUpdate,
) -> Result<RescaleReport> {
    let mut layers = 0;
    model.visit_norms_mut(&mut |_, s| {
        s.running_mean.fill(0.0);
        s.running_var.fill(1.0);
        *s.num_batches_tracked = 0;
        layers += 1;
    });
    data.try_for_each_batch(&mut |x| {
        model.calibrate(x, &mut Probe::none().with_update(update))?;
        Ok(())
    })?;
    Ok(RescaleReport {
        layers,
        batches: data.num_batches(),
        passes: 1,
    })
}

/// One eval-mode pass per batch norm, in forward order, recording its input.
fn exact<I>(model: &mut dyn Network<I>, data: &dyn CalibrationData<I>) -> Result<RescaleReport> {
    let mut names = Vec::new();
    model.visit_norms(&mut |name, _| names.push(name.to_string()));
    for name in &names {
        let mut recorder = Recorder::new(TapSelector {
            kind: Some(LayerKind::BatchNorm),
            site: Site::Input,
            layers: Some(vec![name.clone()]),
        });
        data.try_for_each_batch(&mut |x| {
            model.infer(x, &mut Probe::new(&mut recorder))?;
            Ok(())
        })?;
        let stats = recorder.finish()?;
        let moments = stats.get(name).ok_or_else(|| {
            Error::invalid(
                format!("batch norm \"{name}\""),
                "reported no input during the forward pass",
            )
        })?;
        // As the running modes, which need each batch's statistics: at least two
        // values per channel (one gives no variance; PyTorch would write a NaN).
        if moments.count() < 2 {
            return Err(Error::invalid(
                format!("batch norm \"{name}\""),
                format!(
                    "{} value(s) per channel in the whole calibration set: more than one is needed to compute a variance",
                    moments.count()
                ),
            ));
        }
        let (mean, var) = (moments.mean(), moments.unbiased_variance());
        let batches = data.num_batches() as i64;
        model.visit_norms_mut(&mut |n, s| {
            if n == name {
                for (dst, &src) in s.running_mean.iter_mut().zip(mean) {
                    *dst = src as f32;
                }
                for (dst, &src) in s.running_var.iter_mut().zip(&var) {
                    *dst = src as f32;
                }
                *s.num_batches_tracked = batches;
            }
        });
    }
    Ok(RescaleReport {
        layers: names.len(),
        batches: data.num_batches(),
        passes: names.len(),
    })
}
