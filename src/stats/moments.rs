//! Per-channel moments in f64, streaming and mergeable.

use super::ActivationStats;
use crate::error::{Error, Result};
use crate::layer::Activation;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Per-channel count, mean and sum of squared deviations (M2), in `f64`.
///
/// ```
/// use reflow::layer::Activation;
/// use reflow::stats::{ActivationStats, ChannelMoments};
///
/// let data = [1.0, 2.0, 3.0, 10.0, 20.0, 30.0]; // 1 sample, 2 channels, 3 values each
/// let mut m = ChannelMoments::new(2);
/// m.update(Activation::new(&data, 1, 2, 3).unwrap())?;
/// assert_eq!(m.mean(), [2.0, 20.0]);
/// assert_eq!(m.variance(), [2.0 / 3.0, 200.0 / 3.0]);
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelMoments {
    count: u64,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl ChannelMoments {
    /// Empty statistics over `channels` channels.
    pub fn new(channels: usize) -> Self {
        ChannelMoments {
            count: 0,
            mean: vec![0.0; channels],
            m2: vec![0.0; channels],
        }
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// Values seen per channel.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Per-channel mean.
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// Per-channel biased (population) variance, `M2 / count`; zeros before any data.
    pub fn variance(&self) -> Vec<f64> {
        let n = self.count.max(1) as f64;
        self.m2.iter().map(|m2| m2 / n).collect()
    }

    /// Per-channel unbiased variance, `M2 / (count − 1)`; zeros with fewer than two
    /// values.
    pub fn unbiased_variance(&self) -> Vec<f64> {
        if self.count < 2 {
            return vec![0.0; self.channels()];
        }
        let n = (self.count - 1) as f64;
        self.m2.iter().map(|m2| m2 / n).collect()
    }

    /// Combines `(count, mean, m2)` of channel `c` with another set by Chan et al.'s
    /// formula.
    fn combine(&mut self, c: usize, n_b: u64, mean_b: f64, m2_b: f64) {
        let n_a = self.count as f64;
        let n_b = n_b as f64;
        let n = n_a + n_b;
        if n == 0.0 {
            return;
        }
        let delta = mean_b - self.mean[c];
        self.mean[c] += delta * n_b / n;
        self.m2[c] += m2_b + delta * delta * n_a * n_b / n;
    }

    fn check(&self, channels: usize) -> Result<()> {
        if channels != self.channels() {
            return Err(Error::invalid(
                "activation",
                format!("{channels} channels, statistics have {}", self.channels()),
            ));
        }
        Ok(())
    }
}

impl ActivationStats for ChannelMoments {
    fn update(&mut self, a: Activation<'_>) -> Result<()> {
        self.check(a.channels)?;
        let n_b = (a.batch * a.spatial) as u64;
        if n_b == 0 {
            return Ok(());
        }
        // Channels in parallel; within a channel a fixed order, so the result does not
        // depend on the thread count.
        let batch: Vec<(f64, f64)> = (0..a.channels)
            .into_par_iter()
            .map(|c| {
                let planes = (0..a.batch).map(|n| a.plane(n, c));
                let sum: f64 = planes.clone().flatten().map(|&v| v as f64).sum();
                let mean_b = sum / n_b as f64;
                let m2_b: f64 = planes.flatten().map(|&v| (v as f64 - mean_b).powi(2)).sum();
                (mean_b, m2_b)
            })
            .collect();
        for (c, (mean_b, m2_b)) in batch.into_iter().enumerate() {
            self.combine(c, n_b, mean_b, m2_b);
        }
        self.count += n_b;
        Ok(())
    }

    fn merge(&mut self, other: &Self) -> Result<()> {
        self.check(other.channels())?;
        for c in 0..self.channels() {
            self.combine(c, other.count, other.mean[c], other.m2[c]);
        }
        self.count += other.count;
        Ok(())
    }
}
