//! The ResNet network: stem, residual stages, classifier.

use super::config::{BlockKind, ResNetConfig, Stem};
use crate::error::{Error, Result};
use crate::layer::{Layer, NormUpdate, Params, Probe, Schedule, Visitor, VisitorMut};
use crate::nn::{recycle, serially, Activation, MaxPool2d, Residual, Sequential, Tensor2, Tensor4};
use crate::nn::{AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, ConvBn, Linear};
use crate::state_dict::StateDict;
use ndarray::Axis;
use rayon::prelude::*;
use std::path::Path;

/// PyTorch's default batch-norm ε.
const BN_EPS: f32 = 1e-5;

/// The size of the widest activation of a micro-batch in a fused eval pass (see
/// [`ResNet::forward_with`]): small enough to stay in a core's level-2 cache between
/// layers at CIFAR sizes (sizes from 256 KiB to 1 MiB ran ResNet-20 at 28 × 28 equally
/// fast, 15–20 % faster than whole-batch layers at batch 256).
const MICRO_BATCH_BYTES: usize = 1 << 19;

/// A ResNet, ResNeXt or Wide ResNet with torchvision's module names, so that its
/// parameters are named exactly as in a torchvision `state_dict`.
///
/// Input `[N, in_channels, H, W]`, output logits `[N, num_classes]`.
///
/// An eval pass with the [`Schedule::Fused`] schedule ([`Layer::forward`], or a
/// [`Probe`] without an observer) runs large batches in micro-batches, in parallel,
/// each through the whole network while its activations stay in the core's cache (a
/// few images at a time, so that the widest activation is about 512 KiB); the logits
/// are those of one pass over the whole batch. With [`Schedule::LayerByLayer`] (always
/// the schedule of an observed pass) each layer runs over the whole batch, so that
/// every tap shows the whole batch's activation.
///
/// ```
/// use reflow::layer::{count_parameters, Layer};
/// use reflow::models::{ResNet, ResNetConfig};
/// use ndarray::Array4;
///
/// let net = ResNet::new(ResNetConfig::cifar_resnet(20)?.with_in_channels(1))?;
/// assert_eq!(count_parameters(&net), 272_186);
/// let logits = net.forward(&Array4::zeros((2, 1, 28, 28)))?;
/// assert_eq!(logits.dim(), (2, 10));
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug)]
pub struct ResNet {
    config: ResNetConfig,
    /// `conv1` → `bn1` → ReLU.
    stem: ConvBn,
    maxpool: Option<MaxPool2d>,
    /// `layer1`, `layer2`, ...: each a chain of residual blocks named `0`, `1`, ...
    stages: Vec<(String, Sequential)>,
    fc: Linear,
}

impl ResNet {
    /// Builds the network with zero weights, γ = 1, β = 0 and running statistics
    /// (0, 1); fill it from a checkpoint with [`StateDict::load_into`], or use
    /// [`ResNet::from_state_dict`].
    pub fn new(config: ResNetConfig) -> Result<Self> {
        config.validate()?;
        let k = config.stem.kernel();
        let stem = unit(
            Conv2dConfig::new(config.in_channels, config.stem_width, k)
                .stride(if config.stem == Stem::Imagenet { 2 } else { 1 })
                .padding(k / 2),
            "conv1",
            "bn1",
            true,
        )?;
        let maxpool = match config.stem {
            Stem::Imagenet => Some(MaxPool2d::new(3, 2, 1)?),
            Stem::Cifar => None,
        };
        let mut inp = config.stem_width;
        let mut stages = Vec::with_capacity(config.layers.len());
        for (s, (&blocks, &planes)) in config.layers.iter().zip(&config.planes).enumerate() {
            let mut stage = Sequential::new();
            for b in 0..blocks {
                let stride = if b == 0 {
                    ResNetConfig::stage_stride(s)
                } else {
                    1
                };
                stage = stage.push(b.to_string(), block(&config, inp, planes, stride)?);
                inp = config.stage_out(planes);
            }
            stages.push((format!("layer{}", s + 1), stage));
        }
        Ok(ResNet {
            fc: Linear::new(inp, config.num_classes, true),
            stem,
            maxpool,
            stages,
            config,
        })
    }

    /// Builds the network a torchvision-layout state dict describes (see
    /// [`ResNetConfig::infer`]) and loads it strictly.
    pub fn from_state_dict(state: &StateDict, stem: Stem) -> Result<Self> {
        let mut net = ResNet::new(ResNetConfig::infer(state, stem)?)?;
        state.load_into(&mut net)?;
        Ok(net)
    }

    /// Reads a safetensors checkpoint in torchvision layout and builds the network it
    /// describes.
    pub fn load(path: impl AsRef<Path>, stem: Stem) -> Result<Self> {
        Self::from_state_dict(&StateDict::read_safetensors(path)?, stem)
    }

    /// The network's shape.
    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// Runs the stem and the stages, returning the feature map before pooling.
    fn features(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        let mut y = self.stem.forward_with(x, probe)?;
        if let Some(pool) = &self.maxpool {
            let next = probe.scoped("maxpool", |p| pool.forward_with(&y, p))?;
            recycle(std::mem::replace(&mut y, next));
        }
        for (name, stage) in &self.stages {
            let next = probe.scoped(name, |p| stage.forward_with(&y, p))?;
            recycle(std::mem::replace(&mut y, next));
        }
        Ok(y)
    }

    fn features_train(
        &mut self,
        x: &Tensor4,
        update: NormUpdate,
        probe: &mut Probe<'_>,
    ) -> Result<Tensor4> {
        let mut y = self.stem.forward_train(x, update, probe)?;
        if let Some(pool) = &self.maxpool {
            let next = probe.scoped("maxpool", |p| pool.forward_with(&y, p))?;
            recycle(std::mem::replace(&mut y, next));
        }
        for (name, stage) in &mut self.stages {
            let next = probe.scoped(name, |p| stage.forward_train(&y, update, p))?;
            recycle(std::mem::replace(&mut y, next));
        }
        Ok(y)
    }

    /// How many images to run through the whole network at a time in an unobserved
    /// eval pass: enough that the widest activation of a micro-batch is about
    /// [`MICRO_BATCH_BYTES`], and at least two (products over several small images
    /// run faster than one at a time).
    fn micro_batch(&self, x: &Tensor4) -> usize {
        let (n, _, h, w) = x.dim();
        let (ho, wo) = self.stem.conv().output_size(h, w).unwrap_or((h, w));
        let per_image = self.config.stem_width * ho * wo * std::mem::size_of::<f32>();
        let m = (MICRO_BATCH_BYTES / per_image.max(1)).max(2);
        // As many micro-batches as that takes, of (nearly) equal size.
        n.div_ceil(n.div_ceil(m).max(1))
    }

    /// The eval pass of `x` in micro-batches of `m` images, run in parallel, each
    /// through the whole network while its activations stay in the core's cache,
    /// instead of each layer over the whole batch. Each image's logits are computed
    /// exactly as in one pass (batch norm uses its running statistics).
    fn forward_in_micro_batches(&self, x: &Tensor4, m: usize) -> Result<Tensor2> {
        let parts = x
            .axis_chunks_iter(Axis(0), m)
            .into_par_iter()
            .map(|chunk| {
                serially(|| {
                    let mut probe = Probe::none();
                    let y = self.features(&chunk.to_owned(), &mut probe)?;
                    let logits = self.head(&y, &mut probe);
                    recycle(y);
                    logits
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut logits = Tensor2::zeros((x.dim().0, self.config.num_classes));
        for (mut rows, part) in logits.axis_chunks_iter_mut(Axis(0), m).zip(&parts) {
            rows.assign(part);
        }
        Ok(logits)
    }

    fn head(&self, y: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor2> {
        let y = probe.scoped("avgpool", |p| AdaptiveAvgPool2d::global().pool_flat(y, p))?;
        probe.scoped("fc", |p| self.fc.forward_with(&y, p))
    }

    fn check_input(&self, x: &Tensor4) -> Result<()> {
        if x.dim().1 != self.config.in_channels {
            return Err(Error::shape(
                "ResNet input",
                format!("[_, {}, _, _]", self.config.in_channels),
                x.shape(),
            ));
        }
        Ok(())
    }
}

/// `conv → bn (→ relu)` under the given names, fused in eval mode.
fn unit(conv: Conv2dConfig, conv_name: &str, bn_name: &str, relu: bool) -> Result<ConvBn> {
    let bn = BatchNorm2d::new(conv.out_channels, BN_EPS);
    let activation = if relu {
        Activation::Relu
    } else {
        Activation::Identity
    };
    ConvBn::new(conv_name, Conv2d::new(conv)?, bn_name, bn, activation)
}

/// One residual block with torchvision's child names.
fn block(cfg: &ResNetConfig, inp: usize, planes: usize, stride: usize) -> Result<Residual> {
    let (w, out) = (cfg.inner_width(planes), cfg.stage_out(planes));
    let body = match cfg.block {
        BlockKind::Basic => Sequential::new()
            .push(
                "",
                unit(
                    Conv2dConfig::new(inp, w, 3).stride(stride).padding(1),
                    "conv1",
                    "bn1",
                    true,
                )?,
            )
            .push(
                "",
                unit(
                    Conv2dConfig::new(w, out, 3).padding(1),
                    "conv2",
                    "bn2",
                    false,
                )?,
            ),
        BlockKind::Bottleneck => Sequential::new()
            .push(
                "",
                unit(Conv2dConfig::new(inp, w, 1), "conv1", "bn1", true)?,
            )
            .push(
                "",
                unit(
                    Conv2dConfig::new(w, w, 3)
                        .stride(stride)
                        .padding(1)
                        .groups(cfg.groups),
                    "conv2",
                    "bn2",
                    true,
                )?,
            )
            .push(
                "",
                unit(Conv2dConfig::new(w, out, 1), "conv3", "bn3", false)?,
            ),
    };
    Ok(if stride != 1 || inp != out {
        let shortcut = Sequential::new().push(
            "",
            unit(
                Conv2dConfig::new(inp, out, 1).stride(stride),
                "0",
                "1",
                false,
            )?,
        );
        Residual::with_shortcut(body, "downsample", shortcut)
    } else {
        Residual::identity(body)
    })
}

impl Layer for ResNet {
    type Input = Tensor4;
    type Output = Tensor2;

    fn forward_with(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor2> {
        self.check_input(x)?;
        let n = x.dim().0;
        let m = self.micro_batch(x);
        if n > m && probe.schedule() == Schedule::Fused {
            return self.forward_in_micro_batches(x, m);
        }
        let y = self.features(x, probe)?;
        let logits = self.head(&y, probe);
        recycle(y);
        logits
    }

    fn forward_train(
        &mut self,
        x: &Tensor4,
        update: NormUpdate,
        probe: &mut Probe<'_>,
    ) -> Result<Tensor2> {
        self.check_input(x)?;
        let y = self.features_train(x, update, probe)?;
        let logits = self.head(&y, probe);
        recycle(y);
        logits
    }
}

impl Params for ResNet {
    fn visit(&self, v: &mut Visitor<'_>) {
        v.child("", &self.stem);
        for (name, stage) in &self.stages {
            v.child(name, stage);
        }
        v.child("fc", &self.fc);
    }

    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        v.child("", &mut self.stem);
        for (name, stage) in &mut self.stages {
            v.child(name, stage);
        }
        v.child("fc", &mut self.fc);
    }
}
