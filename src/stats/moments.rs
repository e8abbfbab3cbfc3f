//! Per-channel moments in f64, streaming and mergeable.

use super::ActivationStats;
use crate::error::{Error, Result};
use crate::layer::ActivationView;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Per-channel count, mean and sum of squared deviations (M2), in `f64`.
///
/// ```
/// use reflow::layer::ActivationView;
/// use reflow::stats::{ActivationStats, ChannelMoments};
///
/// let data = [1.0, 2.0, 3.0, 10.0, 20.0, 30.0]; // 1 sample, 2 channels, 3 values each
/// let mut m = ChannelMoments::new(2);
/// m.update(ActivationView::new(&data, 1, 2, 3).unwrap())?;
/// assert_eq!(m.mean(), [2.0, 20.0]);
/// assert_eq!(m.variance(), [2.0 / 3.0, 200.0 / 3.0]);
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelMoments {
    count: u64,
    // NaN and infinities too (a collapsed or broken network's), in JSON.
    #[serde(with = "crate::floats::seq")]
    mean: Vec<f64>,
    #[serde(with = "crate::floats::seq")]
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

    /// Combines `(count, mean, m2)` of channel `c` with another set by [`chan_merge`].
    fn combine(&mut self, c: usize, n_b: u64, mean_b: f64, m2_b: f64) {
        (self.mean[c], self.m2[c]) = chan_merge(
            self.count as f64,
            (self.mean[c], self.m2[c]),
            n_b as f64,
            (mean_b, m2_b),
        );
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

/// Chan et al.'s merge of the moments of two sets of values: `(mean, m2)` of `n_a`
/// values and of `n_b` values give the `(mean, m2)` of all of them (`m2` is the sum of
/// squared deviations from the mean). The one formula every merge of the crate uses,
/// the vector kernels' included (they are tested against it).
///
/// Rounded as written: `mean_a + δ·(n_b/n)` and `m2_a + (m2_b + δ²·(n_a·n_b/n))` with
/// fused multiply-adds, `δ = mean_b − mean_a`. With no values at all it returns the
/// first set.
#[inline(always)]
pub(crate) fn chan_merge(
    n_a: f64,
    (mean_a, m2_a): (f64, f64),
    n_b: f64,
    (mean_b, m2_b): (f64, f64),
) -> (f64, f64) {
    let n = n_a + n_b;
    if n == 0.0 {
        return (mean_a, m2_a);
    }
    let delta = mean_b - mean_a;
    (
        delta.mul_add(n_b / n, mean_a),
        m2_a + (delta * delta).mul_add(n_a * n_b / n, m2_b),
    )
}

/// Per-channel mean and biased variance of an NCHW tensor, in f64. Each `[H, W]`
/// plane's mean and sum of squared deviations are computed in parallel (two passes over
/// a plane that stays in cache), then merged channel by channel in image order, so the
/// result does not depend on the thread count.
pub(crate) fn channel_moments(x: &[f32], n: usize, c: usize, spatial: usize) -> Vec<(f64, f64)> {
    let planes: Vec<(f64, f64)> = x
        .par_chunks(spatial.max(1))
        .with_min_len(16)
        .map(plane_moments)
        .collect();
    merge_plane_moments(&planes, n, c, spatial)
}

/// The mean of `plane` and the sum of squared deviations from it, in f64.
pub(crate) fn plane_moments(plane: &[f32]) -> (f64, f64) {
    let mean = lane_sum(plane, |v| v) / plane.len().max(1) as f64;
    (mean, lane_sum(plane, |v| (v - mean) * (v - mean)))
}

/// Per-channel mean and biased variance from each plane's `(mean, sum of squared
/// deviations)` (`planes` is `[N × C]`, `spatial` values per plane), merged in image
/// order.
pub(crate) fn merge_plane_moments(
    planes: &[(f64, f64)],
    n: usize,
    c: usize,
    spatial: usize,
) -> Vec<(f64, f64)> {
    (0..c)
        .map(|ch| {
            let of = |i: usize| planes[i * c + ch];
            // Equal-sized planes: the overall mean is the mean of the plane means, and
            // M2 adds the spread of the plane means to the planes' own M2.
            let mean = (0..n).map(|i| of(i).0).sum::<f64>() / n.max(1) as f64;
            let m2: f64 = (0..n)
                .map(|i| {
                    let (m, m2) = of(i);
                    m2 + spatial as f64 * (m - mean).powi(2)
                })
                .sum();
            (mean, m2 / (n * spatial).max(1) as f64)
        })
        .collect()
}

/// The mean of `values` in f64 (0 for none), summed in eight lanes.
pub(crate) fn plane_mean(values: &[f32]) -> f64 {
    lane_sum(values, |v| v) / values.len().max(1) as f64
}

/// `Σ f(v)` over `values` in f64, in eight independent lanes so that the additions
/// pipeline and vectorise (a single running sum waits on each addition in turn).
fn lane_sum(values: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    const LANES: usize = 8;
    let mut lanes = [0.0f64; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v as f64)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v as f64);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

impl ActivationStats for ChannelMoments {
    fn update(&mut self, a: ActivationView<'_>) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `(mean, m2)` of `values`, in two passes.
    fn two_pass(values: &[f64]) -> (f64, f64) {
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        (mean, values.iter().map(|v| (v - mean).powi(2)).sum())
    }

    #[test]
    fn chan_merge_gives_the_moments_of_the_union() {
        let a: Vec<f64> = (0..37)
            .map(|i| (i as f64 * 0.7).sin() * 3.0 + 1.0)
            .collect();
        let b: Vec<f64> = (0..11).map(|i| (i as f64 * 1.9).cos() - 4.0).collect();
        let (n_a, n_b) = (a.len() as f64, b.len() as f64);
        let (mean, m2) = chan_merge(n_a, two_pass(&a), n_b, two_pass(&b));
        let (want_mean, want_m2) = two_pass(&[a.clone(), b.clone()].concat());
        assert!((mean - want_mean).abs() < 1e-12, "{mean} {want_mean}");
        assert!((m2 - want_m2).abs() < 1e-10 * want_m2, "{m2} {want_m2}");
        // Nothing merged into something, and something into nothing.
        assert_eq!(chan_merge(n_a, two_pass(&a), 0.0, (0.0, 0.0)), two_pass(&a));
        assert_eq!(chan_merge(0.0, (0.0, 0.0), n_b, two_pass(&b)), two_pass(&b));
        assert_eq!(chan_merge(0.0, (1.0, 2.0), 0.0, (3.0, 4.0)), (1.0, 2.0));
    }
}
