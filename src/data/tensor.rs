//! The tensors every stage passes: `ndarray` arrays of `f32`, PyTorch's layouts.

use ndarray::{Array2, Array4};

/// An NCHW `f32` activation tensor.
pub type Tensor4 = Array4<f32>;

/// A `[N, features]` `f32` activation matrix.
pub type Tensor2 = Array2<f32>;
