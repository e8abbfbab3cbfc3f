//! Recalibration: changing only normalisation statistics, never a trainable weight.
//!
//! - [`CalibrationData`]: batches a recalibration can go over, as often as it needs,
//!   and [`ImageBatches`]: images of any source, normalised, in batches (both live in
//!   [`crate::data`] and are re-exported here).
//! - [`Rescaler`]: the stage's trait; [`Reflow`] is REFLOW, with the three statistic
//!   modes of [`ReflowMode`].

mod reflow;

pub use crate::data::{CalibrationData, ImageBatches};
pub(crate) use reflow::NormSnapshot;
pub use reflow::{Reflow, ReflowMode};

use crate::error::Result;
use crate::layer::Network;
use serde::{Deserialize, Serialize};

/// What a recalibration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RescaleReport {
    /// Normalisation layers recalibrated.
    pub layers: usize,
    /// Calibration batches in the data.
    pub batches: usize,
    /// Forward passes over the calibration data.
    pub passes: usize,
}

/// Changes a network's normalisation statistics (or, for networks without batch norm,
/// per-channel scales) from calibration data, and nothing else. `I` is the network's
/// input type; the trait is object-safe (`Box<dyn Rescaler<Tensor4>>`).
///
/// ```
/// use reflow::prelude::*;
/// use reflow::nn::Tensor4;
///
/// let rescalers: Vec<Box<dyn Rescaler<Tensor4>>> =
///     vec![Box::new(Reflow::cumulative()), Box::new(Reflow::ema(0.1))];
/// let mut net = ResNet::new(ResNetConfig::cifar_resnet(20)?)?;
/// let data = vec![Tensor4::from_elem((4, 3, 8, 8), 0.5)];
/// for r in &rescalers {
///     assert_eq!(r.rescale(&mut net, &data)?.layers, 21);
/// }
/// # Ok::<(), reflow::Error>(())
/// ```
pub trait Rescaler<I> {
    /// Checks the rescaler's own parameters, so that a pipeline can reject them
    /// before it changes anything.
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// Recalibrates `model` on `data`. On error the statistics are restored to what
    /// they were, so a failed recalibration leaves the model as it was.
    fn rescale(
        &self,
        model: &mut dyn Network<I>,
        data: &dyn CalibrationData<I>,
    ) -> Result<RescaleReport>;
}
