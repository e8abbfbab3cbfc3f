//! Recording activation statistics at taps during forward passes.

use super::{ActivationStats, ChannelMoments};
use crate::error::{Error, Result};
use crate::layer::{ActivationView, LayerKind, Observer, Site, Tap};
use serde::{Deserialize, Serialize};

/// Statistics by tap, in the order the taps were first seen (forward order).
///
/// Serialisable: statistics gathered in different processes or on different machines
/// merge with [`LayerStats::merge`] exactly as if one process had seen all the data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerStats {
    layers: Vec<(String, ChannelMoments)>,
}

impl LayerStats {
    /// No statistics.
    pub fn new() -> Self {
        Self::default()
    }

    /// The statistics of tap `layer`.
    pub fn get(&self, layer: &str) -> Option<&ChannelMoments> {
        self.layers.iter().find(|(n, _)| n == layer).map(|(_, m)| m)
    }

    /// Layer names and statistics, in forward order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ChannelMoments)> {
        self.layers.iter().map(|(n, m)| (n.as_str(), m))
    }

    /// Number of taps recorded.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    fn entry(&mut self, layer: &str, channels: usize) -> &mut ChannelMoments {
        let i = match self.layers.iter().position(|(n, _)| n == layer) {
            Some(i) => i,
            None => {
                self.layers
                    .push((layer.to_string(), ChannelMoments::new(channels)));
                self.layers.len() - 1
            }
        };
        &mut self.layers[i].1
    }

    /// Folds in statistics gathered elsewhere: layers present in both are merged,
    /// layers only in `other` are added.
    pub fn merge(&mut self, other: &LayerStats) -> Result<()> {
        for (name, m) in &other.layers {
            self.entry(name, m.channels())
                .merge(m)
                .map_err(|e| Error::invalid(format!("statistics of \"{name}\""), e.to_string()))?;
        }
        Ok(())
    }
}

/// Which taps a [`Recorder`] keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapSelector {
    /// Only taps of this kind; `None` for any kind.
    pub kind: Option<LayerKind>,
    /// Input or output.
    pub site: Site,
    /// Only these layer paths; `None` for every layer.
    pub layers: Option<Vec<String>>,
}

impl TapSelector {
    /// Every batch-norm layer's output: what the signal metric needs.
    pub fn batch_norm_outputs() -> Self {
        TapSelector {
            kind: Some(LayerKind::BatchNorm),
            site: Site::Output,
            layers: None,
        }
    }

    /// The given layers' `site`, whatever their kind.
    pub fn layers(layers: impl IntoIterator<Item = impl Into<String>>, site: Site) -> Self {
        TapSelector {
            kind: None,
            site,
            layers: Some(layers.into_iter().map(Into::into).collect()),
        }
    }

    fn selects(&self, tap: &Tap<'_>) -> bool {
        tap.site == self.site
            && self.kind.is_none_or(|k| k == tap.kind)
            && self
                .layers
                .as_ref()
                .is_none_or(|ls| ls.iter().any(|l| l == tap.layer))
    }
}

/// An [`Observer`] that accumulates [`ChannelMoments`] at the selected taps, batch
/// after batch, without keeping any activation.
///
/// ```
/// use reflow::prelude::*;
/// use reflow::stats::{Recorder, TapSelector};
/// use ndarray::Array4;
///
/// let net = ResNet::new(ResNetConfig::cifar_resnet(20)?)?;
/// let mut rec = Recorder::new(TapSelector::batch_norm_outputs());
/// net.forward_with(&Array4::ones((2, 3, 8, 8)), &mut Probe::new(&mut rec))?;
/// let stats = rec.finish()?;
/// assert_eq!(stats.len(), 21); // 19 in the blocks and stem + 2 shortcut BNs
/// assert_eq!(stats.get("layer2.0.downsample.1").unwrap().count(), 2 * 4 * 4);
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug)]
pub struct Recorder {
    selector: TapSelector,
    stats: LayerStats,
    error: Option<Error>,
}

impl Recorder {
    /// Records at the taps `selector` selects.
    pub fn new(selector: TapSelector) -> Self {
        Recorder {
            selector,
            stats: LayerStats::new(),
            error: None,
        }
    }

    /// What was recorded so far; an error if a tap changed its channel count between
    /// batches.
    pub fn finish(self) -> Result<LayerStats> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.stats),
        }
    }
}

impl Observer for Recorder {
    fn wants(&self, tap: &Tap<'_>) -> bool {
        self.selector.selects(tap)
    }

    fn observe(&mut self, tap: &Tap<'_>, activation: ActivationView<'_>) {
        let result = self
            .stats
            .entry(tap.layer, activation.channels)
            .update(activation);
        if let (Err(e), None) = (result, &self.error) {
            self.error = Some(Error::invalid(
                format!("tap \"{}\"", tap.layer),
                e.to_string(),
            ));
        }
    }
}
