//! # reflow
//!
//! One-shot pruning of trained convolutional networks, without gradients, and recovery
//! of their accuracy by REFLOW: re-estimating every batch-norm layer's running
//! statistics on a small calibration set (Saikumar & Varghese, *Signal Collapse in
//! One-Shot Pruning*, arXiv 2502.15790).
//!
//! The crate is organised as stages that see a network only through the [`Layer`]
//! trait, so the bundled torchvision-layout ResNets and a user's own network go
//! through the same code:
//!
//! - [`layer`]: the [`Layer`] trait — forward passes, parameter walks by
//!   torchvision-style name, batch-norm calibration mode, activation taps;
//! - [`nn`]: the ndarray reference backend (conv, batch norm, pooling, linear, ...);
//! - [`cpu`]: which vector instructions the kernels use (AVX-512, AVX2, NEON, or
//!   portable products), chosen at run time, and how to cap them;
//! - [`models`]: seven families in torchvision's layout (ResNet / ResNeXt / Wide
//!   ResNet, RegNet, MobileNetV2 and V3, EfficientNet, VGG with batch norm,
//!   ShuffleNetV2), each a [`models::Family`] registered in [`models::FAMILIES`], with
//!   presets and architecture inference from a checkpoint's keys;
//! - [`data`]: calibration data, image batches and normalisation, which the stages share;
//! - [`trust`]: fidelity to the dense network, the calibration-set check and the
//!   repair choice, without labels;
//! - [`protocol`]: the evaluation protocol `reflow prune` runs, and its report;
//! - [`StateDict`] and [`io`]: safetensors checkpoints (dense or compressed), IDX,
//!   CIFAR, `.npy` and image folders;
//! - [`prune`]: one-shot magnitude (and random) pruning, unstructured, N:M or by
//!   channel; masks, sparsity reports;
//! - [`stats`]: streaming, mergeable activation statistics and the signal metric;
//! - [`rescale`]: REFLOW, re-estimating batch-norm statistics on calibration data;
//! - [`pipeline`]: the stages composed, prune → measure → rescale → measure;
//! - [`metrics`]: top-1 accuracy.
//!
//! ## Quick start
//!
//! Load a torchvision-layout checkpoint, inspect it, and run it:
//!
//! ```
//! use reflow::prelude::*;
//! use ndarray::Array4;
//!
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("resnet20.safetensors");
//! # StateDict::from_layer(&ResNet::new(ResNetConfig::cifar_resnet(20)?)?).write_safetensors(&path)?;
//! // A CIFAR-style ResNet-20 saved from PyTorch with safetensors' `save_file(model.state_dict(), ...)`.
//! let net = ResNet::load(&path)?;
//! println!("{:?}: {} parameters", net.config().layers, count_parameters(&net));
//!
//! let images = Array4::<f32>::zeros((8, 3, 32, 32));
//! let logits = net.forward(&images)?;
//! assert_eq!(logits.dim(), (8, 10));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

//!
//! ## Prune, measure, recalibrate
//!
//! The stages compose in a [`Pipeline`](pipeline::Pipeline): magnitude pruning, the
//! signal metric of every batch-norm layer before and after, and REFLOW.
//!
//! ```
//! use reflow::prelude::*;
//! use ndarray::Array4;
//!
//! # let state = StateDict::read_safetensors(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/resnet20_cifar.safetensors"))?;
//! let mut net = ResNet::from_state_dict(&state)?;
//! // Calibration and held-out batches: any `CalibrationData`, e.g. `ImageBatches`
//! // over an IDX file, or tensors in memory as here.
//! let batch = |seed: usize| Array4::from_shape_fn((16, 3, 16, 16), |(n, c, h, w)| {
//!     (((seed + n) * 7 + c * 5 + h * 3 + w) % 11) as f32 / 5.0 - 1.0
//! });
//! let calibration = vec![batch(0), batch(1), batch(2)];
//! let held_out = vec![batch(3)];
//!
//! let report = Pipeline::new(MagnitudePruner::new(0.8), Reflow::cumulative())
//!     .measure_on(&held_out)
//!     .run(&mut net, &calibration)?;
//!
//! assert!((report.sparsity.prunable_sparsity() - 0.8).abs() < 1e-3);
//! let signal = report.signal.expect("measured on the held-out batch");
//! let (layer, pruned) = signal.pruned_ratio().last().map(|(l, r)| (l.to_string(), r)).unwrap();
//! let rescaled = signal.rescaled_ratio().get(&layer).unwrap();
//! println!("{layer}: signal {pruned:.3} of dense after pruning, {rescaled:.3} after REFLOW");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]
// `unsafe` lives in the kernel modules alone (`nn::kernels`, which allows it), each
// block with its `SAFETY` reason.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod bench;
pub mod cpu;
pub mod data;
pub mod error;
pub mod exec;
mod floats;
pub mod io;
pub mod layer;
pub mod metrics;
pub mod models;
mod names;
pub mod nn;
pub mod pipeline;
pub mod protocol;
pub mod prune;
pub mod rescale;
pub mod state_dict;
pub mod stats;
pub mod trust;

pub use error::{Error, Result};
pub use layer::Layer;
pub use state_dict::StateDict;

/// The items most programs need: `use reflow::prelude::*;`.
pub mod prelude {
    pub use crate::error::{Error, Result};
    pub use crate::io::{Dataset, IdxImages, IdxLabels, LabelledData, Normalization};
    pub use crate::layer::{count_parameters, count_prunable, Layer, Network, NormUpdate, Params};
    pub use crate::layer::{Probe, Schedule};
    pub use crate::metrics::argmax;
    pub use crate::metrics::{accuracy, Accuracy};
    pub use crate::models::{BlockKind, ResNet, ResNetConfig, Stem};
    pub use crate::pipeline::{Pipeline, PipelineReport, Stage};
    pub use crate::prune::{ChannelPrunable, ChannelPruner, NmPruner};
    pub use crate::prune::{MagnitudePruner, Masks, Pruner, RandomPruner, Scope, SparsityReport};
    pub use crate::rescale::{CalibrationData, ImageBatches, Reflow, ReflowMode, Rescaler};
    pub use crate::state_dict::StateDict;
    pub use crate::stats::{measure_signal, ActivationStats, ChannelMoments, Signal};
}

/// The README's examples, compiled as doctests so they stay correct.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
