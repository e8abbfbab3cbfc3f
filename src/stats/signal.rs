//! The signal-collapse metric of the paper.

use super::{LayerStats, Recorder, TapSelector};
use crate::data::CalibrationData;
use crate::error::{Error, Result};
use crate::layer::{Layer, Probe};
use serde::{Deserialize, Serialize};

/// The signal metric of each batch-norm layer, in forward order: for the output `Y`
/// `[N, C, H, W]` in eval mode, `v_c` is the biased variance of `Y[:, c]` over
/// `(N, H, W)`, and the layer's value is the mean of `v_c` over the channels.
///
/// Signal collapse is this value shrinking toward zero with depth after pruning;
/// [`Signal::ratio_to`] compares a pruned or recalibrated network with the dense one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// `(batch-norm layer path, metric)`, in forward order.
    pub layers: Vec<(String, f64)>,
}

impl Signal {
    /// The metric of every layer `stats` holds.
    pub fn from_stats(stats: &LayerStats) -> Self {
        Signal {
            layers: stats
                .iter()
                .map(|(name, m)| {
                    let v = m.variance();
                    (
                        name.to_string(),
                        v.iter().sum::<f64>() / v.len().max(1) as f64,
                    )
                })
                .collect(),
        }
    }

    /// The metric of layer `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.layers.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }

    /// The last layer's metric (the deepest batch norm), if any.
    pub fn last(&self) -> Option<(&str, f64)> {
        self.layers.last().map(|(n, v)| (n.as_str(), *v))
    }

    /// The last layer's metric relative to `reference`'s for the same layer: signal
    /// collapse at the deepest batch norm in one number; NaN when there is none.
    pub fn last_ratio_to(&self, reference: &Signal) -> f64 {
        self.ratio_to(reference).last().map_or(f64::NAN, |(_, r)| r)
    }

    /// Layer by layer, `self / reference` for the layers both have.
    pub fn ratio_to(&self, reference: &Signal) -> Signal {
        Signal {
            layers: self
                .layers
                .iter()
                .filter_map(|(n, v)| reference.get(n).map(|r| (n.clone(), v / r)))
                .collect(),
        }
    }
}

/// Runs `data` through `model` in eval mode and returns the signal metric of every
/// batch-norm layer.
///
/// ```
/// use reflow::prelude::*;
/// use reflow::stats::measure_signal;
/// use ndarray::Array4;
///
/// let net = ResNet::new(ResNetConfig::cifar_resnet(20)?)?;
/// let batches = vec![Array4::<f32>::ones((4, 3, 8, 8))];
/// let signal = measure_signal(&net, &batches)?;
/// assert_eq!(signal.layers[0].0, "bn1");
/// # Ok::<(), reflow::Error>(())
/// ```
pub fn measure_signal<L, D>(model: &L, data: &D) -> Result<Signal>
where
    L: Layer + ?Sized,
    D: CalibrationData<L::Input> + ?Sized,
{
    if data.num_batches() == 0 {
        return Err(Error::empty(
            "signal data",
            "no batches to measure the signal on",
        ));
    }
    let mut recorder = Recorder::new(TapSelector::batch_norm_outputs());
    data.try_for_each_batch(&mut |x| {
        model.forward_with(x, &mut Probe::new(&mut recorder))?;
        Ok(())
    })?;
    let stats = recorder.finish()?;
    if let Some((layer, _)) = stats.iter().find(|(_, m)| m.count() == 0) {
        return Err(Error::empty(
            "signal data",
            format!("no value reached {layer}: the batches hold no images"),
        ));
    }
    Ok(Signal::from_stats(&stats))
}
