//! The [`Layer`] trait: what every pruning, statistics and recalibration stage needs to
//! know about a network.
//!
//! A network — a whole ResNet, one block, one convolution, or a user's own type — is
//! seen by the stages only through four things:
//!
//! 1. an inference pass, [`Layer::forward`], which takes `&self`;
//! 2. a calibration pass, [`Layer::forward_train`], which takes `&mut self`: every
//!    batch-norm layer normalises by the batch's statistics and updates its running
//!    statistics by the rule given as a [`NormUpdate`];
//! 3. a walk over its parameters and batch norms by torchvision-style name, through
//!    the object-safe supertrait [`Params`], each tensor with a [`ParamRole`].
//!
//! Both passes carry a [`Probe`], which tracks the path of the layer being run (so that
//! errors name it) and lets an [`Observer`] see activations at *taps*: the input and
//! output of every layer that reports one.
//!
//! The trait is generic over the tensor type through [`Layer::Input`] and
//! [`Layer::Output`]: the ndarray backend in [`crate::nn`] is one implementation, and a
//! network with its own tensor type plugs into the same stages. Parameters and
//! activations cross the boundary as host `f32` slices, which every CPU backend can
//! provide without copying.

use crate::error::Result;
use crate::exec::Exec;

mod children;
mod params;
mod profile;

pub use params::{check_norm_walk, count_parameters, count_prunable};
pub use params::{NormParams, NormParamsMut, NormStats, NormStatsMut, Param, ParamMut, ParamRole};
pub use params::{NormSink, NormSinkMut, Params, Visitor, VisitorMut};
pub use profile::{LayerTime, Profile};

/// How a batch-norm layer updates its running statistics during
/// [`Layer::forward_train`]. In both rules the layer normalises by the batch's own
/// (biased) statistics, and folds the batch mean and the *unbiased* batch variance into
/// its running statistics — PyTorch's train-mode `BatchNorm`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum NormUpdate {
    /// Equal-weight average over batches: after batch k,
    /// `running += (batch − running) / k`, with k the layer's `num_batches_tracked`
    /// after increment. PyTorch's `momentum=None`.
    Cumulative,
    /// Exponential moving average: `running = (1 − m)·running + m·batch`.
    /// PyTorch's `momentum=m`.
    Ema {
        /// The weight of the new batch, in (0, 1].
        momentum: f64,
    },
}

impl NormUpdate {
    /// The weight given to the new batch, once `num_batches_tracked` has been
    /// incremented for it.
    pub fn factor(self, num_batches_tracked: i64) -> f64 {
        match self {
            NormUpdate::Cumulative => 1.0 / num_batches_tracked.max(1) as f64,
            NormUpdate::Ema { momentum } => momentum,
        }
    }
}

/// What kind of layer a tap belongs to, so observers can select e.g. every
/// batch-norm output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LayerKind {
    /// A convolution.
    Conv,
    /// A batch-normalisation layer (1-d or 2-d).
    BatchNorm,
    /// A fully connected layer.
    Linear,
    /// A pooling layer.
    Pool,
    /// A composite such as a residual block.
    Block,
    /// Anything else a user reports.
    Other,
}

/// Which side of a layer a tap is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    /// The tensor the layer receives.
    Input,
    /// The tensor the layer produces.
    Output,
}

/// Identifies one tap: a layer (by its torchvision-style path, e.g.
/// `layer2.0.downsample.1`), its kind, and the side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tap<'a> {
    /// The layer's path, as in the state dict without the parameter suffix.
    pub layer: &'a str,
    /// The layer's kind.
    pub kind: LayerKind,
    /// Input or output.
    pub site: Site,
    /// At a convolution's input: how it reads that input (`None` elsewhere), so that
    /// an observer can unfold it into the columns each weight multiplies.
    pub window: Option<ConvWindow>,
}

/// How a convolution reads its input tensor: its window, groups and the input's size.
/// Column `(c, ky, kx)` of the unfolded input, for output position `(oy, ox)`, is
/// the input at row `oy·stride[0] + ky·dilation[0] − padding[0]` and column
/// `ox·stride[1] + kx·dilation[1] − padding[1]` (zero outside), PyTorch's `unfold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvWindow {
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// Zero rows and columns on each side, `[ph, pw]`.
    pub padding: [usize; 2],
    /// `[dh, dw]`.
    pub dilation: [usize; 2],
    /// Channel groups: output channel `o` reads the input channels of group
    /// `o / (out / groups)`.
    pub groups: usize,
    /// The input's `[h, w]`.
    pub size: [usize; 2],
}

/// An activation tensor seen at a tap, as `[batch, channels, spatial]` in row-major
/// order: for NCHW, `spatial = H·W`; for a `[N, C]` matrix, `spatial = 1`.
#[derive(Debug, Clone, Copy)]
pub struct ActivationView<'a> {
    /// The values.
    pub data: &'a [f32],
    /// Number of samples.
    pub batch: usize,
    /// Number of channels (features).
    pub channels: usize,
    /// Values per sample and channel.
    pub spatial: usize,
}

impl<'a> ActivationView<'a> {
    /// Wraps a row-major `[batch, channels, spatial]` slice.
    ///
    /// Returns `None` when the lengths disagree.
    pub fn new(data: &'a [f32], batch: usize, channels: usize, spatial: usize) -> Option<Self> {
        (batch.checked_mul(channels)?.checked_mul(spatial)? == data.len()).then_some(Self {
            data,
            batch,
            channels,
            spatial,
        })
    }

    /// The `spatial` values of sample `n`, channel `c`.
    pub fn plane(&self, n: usize, c: usize) -> &'a [f32] {
        let start = (n * self.channels + c) * self.spatial;
        &self.data[start..start + self.spatial]
    }
}

/// Receives activations at taps during a forward pass.
///
/// # Example: record the mean of every batch-norm output
///
/// ```
/// use reflow::layer::{ActivationView, LayerKind, Observer, Site, Tap};
/// use std::collections::BTreeMap;
///
/// #[derive(Default)]
/// struct Means(BTreeMap<String, f64>);
///
/// impl Observer for Means {
///     fn wants(&self, tap: &Tap<'_>) -> bool {
///         tap.kind == LayerKind::BatchNorm && tap.site == Site::Output
///     }
///     fn observe(&mut self, tap: &Tap<'_>, act: ActivationView<'_>) {
///         let sum: f64 = act.data.iter().map(|&v| v as f64).sum();
///         self.0.insert(tap.layer.to_string(), sum / act.data.len() as f64);
///     }
/// }
/// ```
pub trait Observer {
    /// Whether this observer wants the activation at `tap`. Layers skip the work of
    /// reporting (and fused kernels stay fused) where this returns `false`.
    fn wants(&self, tap: &Tap<'_>) -> bool;

    /// Called with the activation at `tap` when [`Observer::wants`] said yes.
    fn observe(&mut self, tap: &Tap<'_>, activation: ActivationView<'_>);
}

/// The order in which a pass may run its layers. Both compute the same values; the
/// schedule changes only the speed and what an observer could see.
///
/// ```
/// use reflow::layer::{Probe, Schedule};
///
/// assert_eq!(Probe::none().schedule(), Schedule::Fused);
/// let probe = Probe::none().with_schedule(Schedule::LayerByLayer);
/// assert_eq!(probe.schedule(), Schedule::LayerByLayer);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Schedule {
    /// The fastest order: an eval pass of a large batch runs in micro-batches through
    /// the whole network (each micro-batch's activations stay in a core's cache), and a
    /// calibration pass applies each batch norm where its output is next read. The
    /// default of a probe without an observer.
    #[default]
    Fused,
    /// Each layer over the whole batch in turn, each batch norm as a pass of its own:
    /// the order in which an observer sees every tap once per pass, with the whole
    /// batch. Always the schedule of a probe with an observer.
    LayerByLayer,
}

/// The context a forward pass carries: the path of the layer being run, an optional
/// [`Observer`], the [`Schedule`] the layers may follow, and how they may compute
/// ([`Exec`]: kernel cap, threads, sparse policy).
///
/// Composite layers run a child inside [`Probe::scoped`] with the child's name, so the
/// path always names the running layer in torchvision style (`layer3.1.bn2`); leaf
/// layers use [`Probe::path`] in their errors and [`Probe::emit`] to report activations.
pub struct Probe<'o> {
    observer: Option<&'o mut dyn Observer>,
    path: String,
    schedule: Schedule,
    profile: Option<&'o Profile>,
    exec: Exec,
    update: NormUpdate,
}

impl Default for Probe<'_> {
    fn default() -> Self {
        Self::none()
    }
}

impl std::fmt::Debug for Probe<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("path", &self.path)
            .field("observed", &self.observer.is_some())
            .field("schedule", &self.schedule())
            .field("profiled", &self.profile.is_some())
            .field("exec", &self.exec)
            .field("update", &self.update)
            .finish()
    }
}

impl<'o> Probe<'o> {
    /// A probe that observes nothing, with the [`Schedule::Fused`] schedule and the
    /// process's [`Exec::defaults`].
    pub fn none() -> Self {
        Probe {
            observer: None,
            path: String::new(),
            schedule: Schedule::Fused,
            profile: None,
            exec: Exec::defaults(),
            update: NormUpdate::Cumulative,
        }
    }

    /// A probe that shows activations to `observer`; it runs
    /// [`Schedule::LayerByLayer`].
    pub fn new(observer: &'o mut dyn Observer) -> Self {
        Probe {
            observer: Some(observer),
            path: String::new(),
            schedule: Schedule::LayerByLayer,
            profile: None,
            exec: Exec::defaults(),
            update: NormUpdate::Cumulative,
        }
    }

    /// The probe with `exec` deciding how the layers compute.
    pub fn with_exec(mut self, exec: Exec) -> Self {
        self.exec = exec;
        self
    }

    /// How the layers compute: kernel cap, threads, sparse policy.
    pub fn exec(&self) -> Exec {
        self.exec
    }

    /// The probe with `update` folding each batch's statistics into the running ones
    /// in a calibration pass ([`Layer::forward_train`]); [`NormUpdate::Cumulative`]
    /// by default.
    pub fn with_update(mut self, update: NormUpdate) -> Self {
        self.update = update;
        self
    }

    /// How a calibration pass folds each batch's statistics into the running ones.
    pub fn update(&self) -> NormUpdate {
        self.update
    }

    /// The probe with `schedule` for the layers of a pass without an observer (with
    /// one, the pass runs [`Schedule::LayerByLayer`] whatever is set here, so that
    /// every tap shows the whole batch).
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// The probe with `profile` attached: the convolutions of a pass on blocked
    /// activations record their time in it.
    pub fn with_profile(mut self, profile: &'o Profile) -> Self {
        self.profile = Some(profile);
        self
    }

    /// The profile attached, if any.
    pub fn profile(&self) -> Option<&'o Profile> {
        self.profile
    }

    /// The schedule the layers follow: the one set, or [`Schedule::LayerByLayer`]
    /// when an observer is attached.
    pub fn schedule(&self) -> Schedule {
        match self.observer {
            Some(_) => Schedule::LayerByLayer,
            None => self.schedule,
        }
    }

    /// The path of the layer now running; empty at the top.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path of a child of the running layer, e.g. `layer1.0` + `conv1`.
    pub fn child_path(&self, name: &str) -> String {
        join(&self.path, name)
    }

    /// Runs `f` with `name` appended to the path, then restores the path.
    pub fn scoped<R>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        let len = self.path.len();
        if !name.is_empty() {
            if !self.path.is_empty() {
                self.path.push('.');
            }
            self.path.push_str(name);
        }
        let result = f(self);
        self.path.truncate(len);
        result
    }

    /// Whether the observer wants the running layer's activation at `site`.
    pub fn wants(&self, kind: LayerKind, site: Site) -> bool {
        self.wants_at(kind, site, None)
    }

    /// [`Probe::wants`] for a tap with a convolution's `window`.
    pub fn wants_at(&self, kind: LayerKind, site: Site, window: Option<ConvWindow>) -> bool {
        match &self.observer {
            Some(o) => o.wants(&Tap {
                layer: &self.path,
                kind,
                site,
                window,
            }),
            None => false,
        }
    }

    /// Shows the running layer's activation at `site` to the observer, if it wants it.
    pub fn emit(&mut self, kind: LayerKind, site: Site, activation: ActivationView<'_>) {
        self.emit_at(kind, site, None, activation)
    }

    /// [`Probe::emit`] for a tap with a convolution's `window` (a convolution's input).
    pub fn emit_at(
        &mut self,
        kind: LayerKind,
        site: Site,
        window: Option<ConvWindow>,
        activation: ActivationView<'_>,
    ) {
        if let Some(o) = self.observer.as_deref_mut() {
            let tap = Tap {
                layer: &self.path,
                kind,
                site,
                window,
            };
            if o.wants(&tap) {
                o.observe(&tap, activation);
            }
        }
    }
}

/// Joins a parent path and a child name with a dot, as PyTorch names modules.
pub fn join(prefix: &str, name: &str) -> String {
    match (prefix.is_empty(), name.is_empty()) {
        (true, _) => name.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}.{name}"),
    }
}

/// A network, or a part of one, as the statistics and recalibration stages see it:
/// its [`Params`] and its two passes.
///
/// Implement it for your own network to run it through the same stages as the bundled
/// models: a composite runs each child in [`Probe::scoped`] under the child's name, and
/// declares each child once per walk with [`Visitor::child`]; a leaf reports its
/// tensors under their own short names (`weight`, `bias`, ...). See the
/// `custom_layer` example.
pub trait Layer: Params {
    /// What the layer consumes.
    type Input;
    /// What the layer produces.
    type Output;

    /// The inference pass: batch-norm layers use their running statistics.
    fn forward_with(&self, input: &Self::Input, probe: &mut Probe<'_>) -> Result<Self::Output>;

    /// The inference pass without an observer.
    fn forward(&self, input: &Self::Input) -> Result<Self::Output> {
        self.forward_with(input, &mut Probe::none())
    }

    /// The calibration pass: every batch-norm layer normalises by the batch's statistics
    /// and folds them into its running statistics by the probe's
    /// [`update`](Probe::update). No other state changes.
    fn forward_train(&mut self, input: &Self::Input, probe: &mut Probe<'_>)
        -> Result<Self::Output>;

    /// The layer's eval pass on the engine's channel-blocked activations, for the
    /// bundled layers that have blocked kernels. The default, `None`, is right for
    /// every other layer: an unobserved eval pass then reorders the layer's input to
    /// NCHW and calls [`Layer::forward_with`], and counts the reorder. Not a stable
    /// interface yet.
    #[doc(hidden)]
    fn blocked(&self) -> Option<&dyn crate::nn::blocked::BlockedLayer> {
        None
    }
}

/// A network with its output type erased: what a [`Rescaler`](crate::rescale::Rescaler)
/// needs, so that rescalers are usable as trait objects. Every [`Layer`] is one.
pub trait Network<I>: Params {
    /// [`Layer::forward_with`], the output dropped.
    fn infer(&self, input: &I, probe: &mut Probe<'_>) -> Result<()>;

    /// [`Layer::forward_train`], the output dropped.
    fn calibrate(&mut self, input: &I, probe: &mut Probe<'_>) -> Result<()>;
}

impl<L: Layer + ?Sized> Network<L::Input> for L {
    fn infer(&self, input: &L::Input, probe: &mut Probe<'_>) -> Result<()> {
        self.forward_with(input, probe).map(drop)
    }

    fn calibrate(&mut self, input: &L::Input, probe: &mut Probe<'_>) -> Result<()> {
        self.forward_train(input, probe).map(drop)
    }
}
