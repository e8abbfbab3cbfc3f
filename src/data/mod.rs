//! Data every stage reads, apart from the stages: where images come from
//! ([`ImageSource`], [`FloatImages`]), their [`Normalization`], calibration batches
//! walked several times ([`CalibrationData`]) and images drawn from any source in
//! batches ([`ImageBatches`], with folds for cross-fitting). The readers of files
//! (`io`) build on it; `io` re-exports these types where they were first.
//!
//! `stats`, `rescale`, `trust` and the protocol read their data from here, so that no
//! stage imports another for its data (`rescale` re-exports both types, where they
//! were first).

mod batches;
mod normalization;
mod source;

pub(crate) use batches::check_fold;
pub use batches::{CalibrationData, ImageBatches};
pub use normalization::{Normalization, MIN_STD};
pub(crate) use source::{check_indices, numel, runs, stack};
pub use source::{FloatImages, ImageSource};
