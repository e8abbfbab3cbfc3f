//! Data every stage reads, apart from the stages: the tensors ([`Tensor4`],
//! [`Tensor2`]), where images come from
//! ([`ImageSource`], [`FloatImages`]), their [`Normalization`], calibration batches
//! walked several times ([`CalibrationData`]), labelled batches ([`LabelledData`]) and images drawn from any source in
//! batches ([`ImageBatches`], with folds for cross-fitting). The readers of files
//! (`io`) build on it; `io` re-exports these types where they were first.
//!
//! `stats`, `rescale`, `trust` and the protocol read their data from here, so that no
//! stage imports another for its data (`rescale` re-exports both types, where they
//! were first).

mod batches;
mod labelled;
mod normalization;
mod source;
mod tensor;

pub(crate) use batches::check_fold;
pub use batches::{CalibrationData, ImageBatches};
pub use labelled::LabelledData;
pub use normalization::{Normalization, MIN_STD};
pub(crate) use source::{check_indices, numel, runs, stack};
pub use source::{FirstImages, FloatImages, ImageSource};
pub use tensor::{Tensor2, Tensor4};
