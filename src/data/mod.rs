//! Data every stage reads, apart from the stages: calibration batches walked several
//! times ([`CalibrationData`]) and images drawn from any source in batches
//! ([`ImageBatches`], with folds for cross-fitting).
//!
//! `stats`, `rescale`, `trust` and the protocol read their data from here, so that no
//! stage imports another for its data (`rescale` re-exports both types, where they
//! were first).

mod batches;

pub(crate) use batches::check_fold;
pub use batches::{CalibrationData, ImageBatches};
