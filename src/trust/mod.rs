//! Trust without labels: how far a pruned or repaired network is from the dense one,
//! whether the calibration images are enough for a repair, and a repair chosen so that
//! it does no harm.
//!
//! A repair such as REFLOW estimates statistics from the calibration images; with too
//! few of them the estimates are noisy, and the repair can make a network that had not
//! collapsed worse, silently. Users often have no labels to see it. This module
//! measures against the dense network instead:
//!
//! - [`Reference`] and [`Fidelity`]: a network's top-1 agreement with the dense
//!   network's predictions and the mean KL divergence of its softmax outputs from the
//!   dense network's, on any images, no label needed;
//! - [`Split`]: calibration data divided into disjoint interleaved folds;
//! - [`CalibrationCheck`]: the repair made from each half of the calibration images,
//!   and how far the two results disagree: a prediction of the repair's own noise,
//!   with a warning and the number of images that look needed;
//! - [`Repair`]: none, a given repair, or `auto`, which keeps whichever of the pruned
//!   network and each repair is closest to the dense network on the calibration
//!   images, cross-fitted so that no image judges statistics estimated from it.
//!
//! Nothing here reads an evaluation image or a label: the choice and the check see
//! the calibration images only.

mod check;
mod fidelity;
mod folds;
mod repair;

pub use check::{CalibrationCheck, NOISE_KL_LIMIT};
pub use fidelity::{Fidelity, FidelityMeter, Reference};
pub use folds::Split;
pub use repair::{Candidate, Repair, RepairReport, RepairScore, MIN_AUTO_IMAGES};
