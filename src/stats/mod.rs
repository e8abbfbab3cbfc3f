//! Streaming activation statistics and the signal-collapse metric.
//!
//! - [`ActivationStats`]: the trait of everything that accumulates per-channel
//!   statistics from activations seen at taps.
//! - [`ChannelMoments`]: its reference implementation — count, mean and sum of squared
//!   deviations per channel in `f64`, updated batch by batch and mergeable across
//!   shards (Chan et al.'s parallel formula).
//! - [`Recorder`]: an [`Observer`](crate::layer::Observer) that keeps
//!   [`ChannelMoments`] at the taps it selects, and [`LayerStats`], what it recorded:
//!   serialisable, so statistics from several processes merge.
//! - [`Signal`]: the signal metric of each batch-norm layer — the mean over channels
//!   of the variance of its output — and its ratio to the dense network's.

mod moments;
mod recorder;
mod signal;

pub use moments::ChannelMoments;
pub(crate) use moments::{
    chan_merge, channel_moments, merge_plane_moments, plane_mean, plane_moments,
};
pub use recorder::{LayerStats, Recorder, TapSelector};
pub use signal::{measure_signal, Signal};

use crate::error::Result;
use crate::layer::ActivationView;

/// Statistics that absorb activations batch by batch and merge with statistics of the
/// same kind gathered elsewhere.
pub trait ActivationStats {
    /// Folds in one activation tensor `[batch, channels, spatial]`.
    fn update(&mut self, activation: ActivationView<'_>) -> Result<()>;

    /// Folds in statistics gathered on other data, as if their data had been seen
    /// here.
    fn merge(&mut self, other: &Self) -> Result<()>;
}
