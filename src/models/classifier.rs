//! What every model family shares: a chain from images to logits, the check of its
//! input, and the micro-batch scheduler of fused eval passes.

use crate::error::{Error, Result};
use crate::exec::{Exec, Par};
use crate::layer::{Layer, Probe, Schedule};
use crate::nn::blocked::{BlockedLayer, Pass, Value};
use crate::nn::runtime::team;
use crate::nn::{recycle, Profile, Sequential, Tensor2, Tensor4};
use ndarray::Axis;
use rayon::prelude::*;

/// The size of the widest activation of a micro-batch in a fused eval pass: small
/// enough to stay in a core's level-2 cache between layers at CIFAR sizes (sizes from
/// 256 KiB to 1 MiB ran ResNet-20 at 28 × 28 equally fast, 15–20 % faster than
/// whole-batch layers at batch 256).
const MICRO_BATCH_BYTES: usize = 1 << 19;

/// A whole network of one family: images `[N, in_channels, H, W]` → logits
/// `[N, classes]` through one chain of named layers.
///
/// An eval pass with the [`Schedule::Fused`] schedule runs a large batch in
/// micro-batches, in parallel, each through the whole chain while its activations
/// stay in the core's cache (a few images at a time, so that the stem's output is
/// about 512 KiB); the logits are those of one pass over the whole
/// batch. With [`Schedule::LayerByLayer`] (always the schedule of an observed pass)
/// each layer runs over the whole batch, so that every tap shows the whole batch.
///
/// A family's [`Architecture::build`](super::Architecture::build) makes one with
/// [`Classifier::new`].
#[derive(Debug)]
pub struct Classifier {
    /// The family's name, for errors ("ResNet", "VGG", ...).
    pub(crate) family: &'static str,
    pub(crate) in_channels: usize,
    pub(crate) classes: usize,
    /// Channels and stride of the stem's output: its size per image sizes the
    /// micro-batches.
    stem: (usize, usize),
    net: Sequential<Tensor4, Tensor2>,
}

impl Classifier {
    /// The chain `net` from images of `in_channels` channels to `classes` logits,
    /// whose first layer (the stem) gives `stem.0` channels at stride `stem.1`.
    pub fn new(
        net: Sequential<Tensor4, Tensor2>,
        in_channels: usize,
        classes: usize,
        stem: (usize, usize),
    ) -> Classifier {
        Classifier {
            family: "network",
            in_channels,
            classes,
            stem,
            net,
        }
    }

    fn check_input(&self, x: &Tensor4) -> Result<()> {
        if x.dim().1 != self.in_channels {
            return Err(Error::shape(
                format!("{} input", self.family),
                format!("[_, {}, _, _]", self.in_channels),
                x.shape(),
            ));
        }
        Ok(())
    }

    /// How many images to run through the whole network at a time in an unobserved
    /// eval pass: enough that the stem's output for a micro-batch is about
    /// [`MICRO_BATCH_BYTES`], and at least two (products over several small images
    /// run faster than one at a time).
    fn micro_batch(&self, x: &Tensor4) -> usize {
        let (n, _, h, w) = x.dim();
        let (channels, stride) = self.stem;
        let per_image = channels * h.div_ceil(stride) * w.div_ceil(stride) * 4;
        let m = (MICRO_BATCH_BYTES / per_image.max(1)).max(2);
        // As many micro-batches as that takes, of (nearly) equal size.
        n.div_ceil(n.div_ceil(m).max(1))
    }

    /// The eval pass of `x` in one go: on blocks (see [`crate::nn::blocked`]) when
    /// nobody observes it and the processor has vector kernels, else layer by layer on
    /// NCHW tensors.
    fn forward_whole(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor2> {
        let exec = probe.exec();
        if Pass::available(probe) && exec.threads() > 1 && rayon::current_thread_index().is_none() {
            // The layers' fork-joins are cheap from a thread of the pool, and cost a
            // wake-up and a wait each from outside it: the pass moves into the pool.
            // (An unobserved probe at the top has nothing else to carry.)
            let profile = probe.profile();
            return rayon::scope(|_| self.forward_whole(x, &mut unobserved(profile, exec)));
        }
        let Some(mut pass) = Pass::for_eval(probe) else {
            return self.net.forward_with(x, probe);
        };
        // The layers split their work between the threads: a team keeps them awake
        // from one layer to the next.
        let threads = exec.threads();
        let y = team::with_team(threads, || {
            self.net.forward_blocked(Value::Input(x), &mut pass)
        })?;
        self.matrix(y.into_plain(&mut pass))
    }

    /// The eval pass of `x` in micro-batches of `m` images, each through the whole
    /// network on one thread, in parallel when `exec` has several threads. Each
    /// image's logits are computed exactly as in one pass (batch norm uses its running
    /// statistics).
    fn forward_in_micro_batches(
        &self,
        x: &Tensor4,
        m: usize,
        profile: Option<&Profile>,
        exec: Exec,
    ) -> Result<Tensor2> {
        // The micro-batches run side by side: each layer stays on its thread. On
        // blocks, each stops at its pooled features, and the classifier then runs
        // once over the whole batch: its weights (VGG's 123 M) read once, not once per
        // micro-batch.
        let serial = exec.with_par(Par::Seq);
        let blocked = Pass::available(&unobserved(profile, exec));
        let part = |chunk: ndarray::ArrayView4<'_, f32>| {
            let chunk = chunk.to_owned();
            let mut probe = unobserved(profile, serial);
            let out = match blocked {
                true => self.features(&chunk, &mut probe),
                false => Ok((self.forward_whole(&chunk, &mut probe)?, self.net.len())),
            };
            recycle(chunk);
            out
        };
        let chunks = x.axis_chunks_iter(Axis(0), m);
        let parts = match exec.par() {
            Par::Rayon => chunks.into_par_iter().map(part).collect::<Result<Vec<_>>>(),
            Par::Seq => chunks.map(part).collect::<Result<Vec<_>>>(),
        }?;
        let width = parts.first().map_or(self.classes, |(p, _)| p.dim().1);
        let mut joined = Tensor2::zeros((x.dim().0, width));
        for (mut rows, (part, _)) in joined.axis_chunks_iter_mut(Axis(0), m).zip(&parts) {
            rows.assign(part);
        }
        match parts.first().map(|(_, next)| *next) {
            Some(head) if head < self.net.len() => {
                self.head(joined, head, &mut unobserved(profile, exec))
            }
            _ => Ok(joined),
        }
    }

    /// The blocked eval pass of `x` up to its pooled features `[N, features]` (the
    /// first matrix a layer gives), and the index of the layer after them; the
    /// logits and the number of layers if no layer gives a matrix before the last.
    fn features(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<(Tensor2, usize)> {
        let Some(mut pass) = Pass::for_eval(probe) else {
            return Ok((self.forward_whole(x, probe)?, self.net.len()));
        };
        let (y, next) = self
            .net
            .forward_blocked_from(Value::Input(x), 0, true, &mut pass)?;
        Ok((self.matrix(y.into_plain(&mut pass))?, next))
    }

    /// The layers from `from` on (the classifier) over the whole batch's `features`.
    fn head(&self, features: Tensor2, from: usize, probe: &mut Probe<'_>) -> Result<Tensor2> {
        let mut pass = Pass::for_eval(probe).expect("the micro-batches ran on blocks");
        let x = Value::Plain(crate::nn::AnyTensor::Matrix(features));
        let (y, _) = self.net.forward_blocked_from(x, from, false, &mut pass)?;
        self.matrix(y.into_plain(&mut pass))
    }

    /// The network's output as logits `[N, classes]`, or the error that says it is not.
    fn matrix(&self, y: crate::nn::AnyTensor) -> Result<Tensor2> {
        let shape = y.shape().to_vec();
        y.into_matrix().ok_or_else(|| {
            Error::shape(
                format!("{} (output)", self.family),
                "a 2-d tensor",
                shape.as_slice(),
            )
        })
    }
}

/// A probe for a part of an unobserved pass: no observer, the pass's profile and
/// `exec`.
fn unobserved(profile: Option<&Profile>, exec: Exec) -> Probe<'_> {
    let probe = Probe::none().with_exec(exec);
    match profile {
        Some(profile) => probe.with_profile(profile),
        None => probe,
    }
}

crate::params!(Classifier { net as "" });

impl Layer for Classifier {
    type Input = Tensor4;
    type Output = Tensor2;

    fn forward_with(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor2> {
        self.check_input(x)?;
        let mut m = self.micro_batch(x);
        if Pass::available(probe) {
            // On blocks, a batch of at least one image per thread is split between the
            // threads, each running whole networks alone: no fork-join per layer.
            m = m.min(x.dim().0.div_ceil(probe.exec().threads()));
        }
        if x.dim().0 > m && probe.schedule() == Schedule::Fused {
            return self.forward_in_micro_batches(x, m, probe.profile(), probe.exec());
        }
        self.forward_whole(x, probe)
    }

    fn forward_train(&mut self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor2> {
        self.check_input(x)?;
        self.net.forward_train(x, probe)
    }
}
