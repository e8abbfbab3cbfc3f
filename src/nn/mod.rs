//! The ndarray reference backend: NCHW `f32` layers that implement [`Layer`].
//!
//! | layer | input → output |
//! |---|---|
//! | [`Conv2d`] | `[N, C, H, W]` → `[N, O, H', W']` (stride, padding, dilation, groups, bias) |
//! | [`BatchNorm2d`] | `[N, C, H, W]` → same (eval and calibration modes) |
//! | [`Relu`] | `[N, C, H, W]` → same |
//! | [`MaxPool2d`] | `[N, C, H, W]` → `[N, C, H', W']` (padding acts as −∞) |
//! | [`AdaptiveAvgPool2d`] | `[N, C, H, W]` → `[N, C, 1, 1]` |
//! | [`Flatten`] | `[N, C, H, W]` → `[N, C·H·W]` |
//! | [`Linear`] | `[N, I]` → `[N, O]` |
//! | [`ConvBn`] | `relu?(bn(conv(x)))`, fused in eval mode |
//! | [`Sequential`] | a named chain of `[N, C, H, W]` layers |
//! | [`Residual`] | `relu(body(x) + shortcut(x))` |
//!
//! The layers hold the semantics ([`layers`](self) of this module); a convolution
//! engine chooses how each call computes (Winograd or direct image kernels, plain,
//! shifted or im2col products) from the configuration, the shape and the instruction
//! set of [`crate::cpu`]; the image kernels are written once over sixteen lanes and
//! compiled for AVX-512, AVX2 and NEON; a runtime keeps activation memory and decides
//! how many threads a layer may use. Images of a batch are spread over rayon's threads.
//!
//! [`Layer`]: crate::layer::Layer
pub use layers::{AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, ConvBn, Flatten};
pub use layers::{Linear, MaxPool2d, Relu, Residual, Sequential};
pub(crate) use runtime::{recycle, serially};

pub(crate) mod engine;
pub(crate) mod kernels;
mod layers;
pub(crate) mod runtime;

use ndarray::{Array2, Array4};

/// An NCHW `f32` activation tensor.
pub type Tensor4 = Array4<f32>;

/// A `[N, features]` `f32` activation matrix.
pub type Tensor2 = Array2<f32>;

/// A boxed layer of the ndarray backend that maps NCHW tensors to NCHW tensors, as
/// [`Sequential`] holds them.
pub type BoxedLayer = Box<dyn crate::layer::Layer<Input = Tensor4, Output = Tensor4> + Send + Sync>;
