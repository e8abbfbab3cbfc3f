//! The ndarray reference backend: NCHW `f32` layers that implement [`Layer`].
//!
//! | layer | input → output |
//! |---|---|
//! | [`Conv2d`] | `[N, C, H, W]` → `[N, O, H', W']` (stride, padding, dilation, groups, bias) |
//! | [`BatchNorm2d`] | `[N, C, H, W]` → same (eval and calibration modes) |
//! | [`Activation`] | any rank → same: identity, ReLU, ReLU6, Hardswish, Hardsigmoid, SiLU, sigmoid |
//! | [`Dropout`], [`StochasticDepth`], [`Identity`] | any rank → same (the identity in eval and calibration) |
//! | [`MaxPool2d`] | `[N, C, H, W]` → `[N, C, H', W']` (padding acts as −∞) |
//! | [`AdaptiveAvgPool2d`] | `[N, C, H, W]` → `[N, C, oh, ow]` |
//! | [`Flatten`] | `[N, C, H, W]` → `[N, C·H·W]` |
//! | [`Linear`] | `[N, I]` → `[N, O]` |
//! | [`SqueezeExcitation`] | `[N, C, H, W]` → same, channels gated by their means |
//! | [`ConvBn`] | `activation(bn(conv(x)))`, fused in eval mode |
//! | [`Sequential`] | a named chain of layers of any rank ([`AnyTensor`], [`Rank`]) |
//! | [`Residual`] | `post(body(x) + shortcut(x))`, `post` ReLU unless set |
//!
//! Inside, four parts, each importing only those after it:
//!
//! - the layers above: what each computes, its parameters and its taps;
//! - a convolution engine: which way each call computes (Winograd or direct image
//!   kernels; plain, shifted or im2col products on faer) — one pure function of the
//!   configuration, the input's shape and the instruction set of [`crate::cpu`]. An
//!   unobserved eval pass of a bundled network runs on channel-blocked activations
//!   instead (`docs/engine.md`): each layer's blocked form, its input in blocks of
//!   sixteen channels, reorders only around layers without one;
//! - the image kernels, written once over sixteen lanes and compiled for AVX-512,
//!   AVX2 + FMA and NEON (the crate's only `unsafe` code);
//! - a runtime: the per-thread activation pool, how many threads a layer may use, and
//!   the per-channel maps that travel with activations.
//!
//! Images of a batch are spread over rayon's threads.
//!
//! [`Layer`]: crate::layer::Layer

pub use crate::exec::{set_sparse_policy, sparse_policy, SparsePolicy};
pub use crate::layer::{LayerTime, Profile};
pub use engine::sparse::SparseChoice;
pub use layers::{AdaptiveAvgPool2d, AnyTensor, BatchNorm2d, Conv2d, Conv2dConfig, ConvBn};
pub use layers::{Dropout, Flatten, Identity, Linear, MaxPool2d, Rank, Residual, Sequential};
pub use layers::{SqueezeExcitation, StochasticDepth, Tensor2, Tensor4};
pub(crate) use runtime::recycle;
pub use runtime::Activation;

#[doc(hidden)]
pub mod blocked;
pub(crate) mod engine;
pub(crate) mod kernels;
pub(crate) mod layers;
#[doc(hidden)]
pub mod layout_candidates;
pub(crate) mod runtime;
