//! Channel pruning: whole output channels of a convolution removed — its filter, its
//! batch-norm channel and the next convolution's matching input slice — so that the
//! network becomes a smaller dense one.
//!
//! Unlike a [`Pruner`](super::Pruner), which zeroes weights in place, channel pruning
//! changes the network's shapes: it works on the network's [`StateDict`] and rebuilds
//! the network from the result ([`ChannelPrunable::rebuild`]). Zeroing a filter alone
//! would not be the same network: its batch norm would still emit β.

use super::plan::{matches, removal_count};
use crate::error::{Error, Result, Shape};
use crate::layer::{count_parameters, Params};
use crate::state_dict::{StateDict, StoredTensor, TensorData};
use serde::{Deserialize, Serialize};

/// A convolution whose output channels may be removed, and what reads them: the
/// channels feed only `norm` and then `next`, never a residual addition.
///
/// The names are module prefixes as in a state dict (`layer1.0.conv1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChannelCoupling {
    /// The ungrouped convolution that loses filters: `weight` `[C, I, kh, kw]` loses
    /// rows (and `bias`, when there is one, entries).
    pub conv: String,
    /// The batch norm after it: `weight`, `bias`, `running_mean` and `running_var`
    /// lose entries.
    pub norm: String,
    /// The ungrouped convolution (or linear layer) that reads the channels: `weight`
    /// `[O, C · per_channel, ...]` loses the inputs of every removed channel.
    pub next: String,
    /// How many consecutive inputs of `next` each channel feeds: 1 for a
    /// convolution, `p²` for a linear layer reading a flattened `p × p` map.
    pub per_channel: usize,
}

impl ChannelCoupling {
    /// `conv` → `norm` → the convolution `next`.
    pub fn new(conv: impl Into<String>, norm: impl Into<String>, next: impl Into<String>) -> Self {
        ChannelCoupling {
            conv: conv.into(),
            norm: norm.into(),
            next: next.into(),
            per_channel: 1,
        }
    }

    /// The same, with `next` a linear layer reading each channel as `per_channel`
    /// consecutive inputs (a flattened map, channel-major as PyTorch's `flatten`).
    pub fn flattened(mut self, per_channel: usize) -> Self {
        self.per_channel = per_channel;
        self
    }
}

/// A convolution a network's structure keeps from losing channels, and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SkippedConv {
    /// The convolution's module name.
    pub conv: String,
    /// Why its channels stay (e.g. "feeds a grouped convolution").
    pub reason: String,
}

/// Which convolutions of a network can lose output channels
/// ([`ChannelPrunable::channel_scope`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelScope {
    /// The convolutions that can lose channels, in network order.
    pub couplings: Vec<ChannelCoupling>,
    /// Convolutions of the kinds that could, kept by the structure (reported).
    pub skipped: Vec<SkippedConv>,
}

/// A network whose channels a [`ChannelPruner`] can remove.
///
/// A downstream network implements it by naming its couplings and by building itself
/// from a state dict with narrower tensors (an architecture read off the shapes).
pub trait ChannelPrunable: Params + Sized {
    /// The convolutions that can lose channels without changing any residual's width.
    fn channel_scope(&self) -> ChannelScope;

    /// Builds the network `state` describes — the same architecture with the widths
    /// of `state`'s tensors — and loads it strictly.
    fn rebuild(&self, state: &StateDict) -> Result<Self>;
}

crate::names::names! {
    /// How a filter's importance is scored.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
    pub enum FilterNorm as "filter norm", expecting "\"l1\" or \"l2\"" {
        /// Σ |w| over the filter (Li et al., 2017).
        #[default]
        L1 = "l1",
        /// √Σ w² over the filter.
        L2 = "l2",
    }
}

/// The channels removed from one convolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRemoval {
    /// The convolution's module name.
    pub conv: String,
    /// Its output channels before.
    pub channels: usize,
    /// The removed channels' indices, ascending.
    pub removed: Vec<usize>,
}

impl ChannelRemoval {
    /// The channels that remain.
    pub fn kept(&self) -> usize {
        self.channels - self.removed.len()
    }
}

/// What a [`ChannelPruner`] removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelReport {
    /// One entry per convolution in scope (not excluded), in network order.
    pub removals: Vec<ChannelRemoval>,
    /// The convolutions the network's structure kept whole.
    pub skipped: Vec<SkippedConv>,
    /// Parameters before and after.
    pub params: (usize, usize),
}

impl ChannelReport {
    /// The fraction of the in-scope convolutions' output channels removed.
    pub fn channel_fraction(&self) -> f64 {
        let total: usize = self.removals.iter().map(|r| r.channels).sum();
        let removed: usize = self.removals.iter().map(|r| r.removed.len()).sum();
        if total == 0 {
            0.0
        } else {
            removed as f64 / total as f64
        }
    }

    /// The fraction of the network's parameters removed.
    pub fn param_fraction(&self) -> f64 {
        match self.params {
            (0, _) => 0.0,
            (before, after) => 1.0 - after as f64 / before as f64,
        }
    }
}

/// Channel pruning (`method.md`, "Channel pruning"): in every convolution of the
/// network's [`ChannelScope`], the `round(s · C)` output channels of smallest filter
/// norm are removed (among equal norms, the lower index first; at least one channel
/// always stays), together with their batch-norm channels and the next convolution's
/// matching inputs. Every score is taken on the network as given, before any removal.
///
/// ```
/// use reflow::layer::{count_parameters, Layer, Params};
/// use reflow::models::{ResNet, ResNetConfig};
/// use reflow::prune::ChannelPruner;
///
/// let mut net = ResNet::new(ResNetConfig::cifar_resnet(20)?)?;
/// # let mut i = 0u32;
/// # net.visit_params_mut(&mut |p| if p.role.is_prunable() { p.data.iter_mut().for_each(|v| { i = i.wrapping_mul(747796405).wrapping_add(2891336453); *v = (i >> 9) as f32 / 8388608.0 - 1.0; }) });
/// let (compact, report) = ChannelPruner::new(0.5)?.prune(&net)?;
/// assert_eq!(report.removals.len(), 9); // conv1 of each basic block
/// assert_eq!(report.removals[0].kept(), 8); // 16 → 8 channels in layer1
/// assert_eq!(compact.config().branch_widths(2, 0), (32, 64));
/// assert!(count_parameters(&compact) < count_parameters(&net));
/// let logits = compact.forward(&ndarray::Array4::zeros((1, 3, 8, 8)))?;
/// assert_eq!(logits.dim(), (1, 10));
///
/// // REFLOW on the compact network, as on any other.
/// use reflow::rescale::{Reflow, Rescaler};
/// let mut compact = compact;
/// let batch = |s: usize| ndarray::Array4::from_shape_fn((8, 3, 8, 8), |(n, c, h, w)| ((s + n * c + h * w) % 5) as f32);
/// Reflow::cumulative().rescale(&mut compact, &vec![batch(0), batch(1)])?;
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelPruner {
    fraction: f64,
    norm: FilterNorm,
    exclude: Vec<String>,
}

impl ChannelPruner {
    /// Removes the fraction `fraction` (in `[0, 1)`) of every in-scope convolution's
    /// output channels, by L1 filter norm.
    pub fn new(fraction: f64) -> Result<Self> {
        if fraction.is_nan() || !(0.0..1.0).contains(&fraction) {
            return Err(Error::out_of_range("channel fraction", fraction, "[0, 1)"));
        }
        Ok(ChannelPruner {
            fraction,
            norm: FilterNorm::L1,
            exclude: Vec::new(),
        })
    }

    /// Scores filters by `norm` instead of L1.
    pub fn norm(mut self, norm: FilterNorm) -> Self {
        self.norm = norm;
        self
    }

    /// Never removes channels of the convolutions matched by `name_or_prefix` (a
    /// convolution's name, its `.weight`, or a module holding it: `layer1`); an
    /// exclusion that matches no parameter of the network is an error.
    pub fn exclude(mut self, name_or_prefix: impl Into<String>) -> Self {
        self.exclude.push(name_or_prefix.into());
        self
    }

    /// The fraction of channels removed per convolution.
    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    fn excluded(&self, conv: &str) -> bool {
        let weight = format!("{conv}.weight");
        self.exclude
            .iter()
            .any(|e| matches(e, conv) || matches(e, &weight))
    }

    /// Decides which channels go, reading `state` (the network's tensors) only.
    ///
    /// Fails before any work when the scope is empty, an exclusion matches nothing,
    /// a coupling's tensors are missing or mis-shaped, or a filter holds NaN.
    pub fn select(&self, state: &StateDict, scope: &ChannelScope) -> Result<Vec<ChannelRemoval>> {
        if scope.couplings.is_empty() {
            let why = match scope.skipped.first() {
                Some(s) => format!(
                    " ({} skipped; {}: {})",
                    scope.skipped.len(),
                    s.conv,
                    s.reason
                ),
                None => String::new(),
            };
            return Err(Error::invalid(
                "channel pruning",
                format!("the network has no convolution whose channels can be removed{why}"),
            ));
        }
        if let Some(e) = self
            .exclude
            .iter()
            .find(|e| !state.keys().any(|k| matches(e, k)))
        {
            return Err(Error::invalid(
                "exclude",
                format!("\"{e}\" matches no parameter of the network"),
            ));
        }
        if scope.couplings.iter().all(|c| self.excluded(&c.conv)) {
            return Err(Error::invalid(
                "exclude",
                format!(
                    "the exclusions cover all {} convolutions whose channels can be removed: nothing is left to prune",
                    scope.couplings.len()
                ),
            ));
        }
        let mut removals = Vec::new();
        for c in &scope.couplings {
            let channels = check_coupling(state, c)?;
            if self.excluded(&c.conv) {
                continue;
            }
            let key = format!("{}.weight", c.conv);
            let weight = floats(state, &key)?;
            if weight.iter().any(|v| v.is_nan()) {
                return Err(Error::invalid(
                    "channel pruning",
                    format!("\"{key}\" contains NaN; filter norms cannot be ranked"),
                ));
            }
            let per_filter = weight.len() / channels;
            let scores: Vec<f64> = weight
                .chunks_exact(per_filter)
                .map(|f| match self.norm {
                    FilterNorm::L1 => f.iter().map(|&v| (v as f64).abs()).sum(),
                    FilterNorm::L2 => f
                        .iter()
                        .map(|&v| (v as f64) * (v as f64))
                        .sum::<f64>()
                        .sqrt(),
                })
                .collect();
            let count = removal_count(self.fraction, channels).min(channels - 1);
            let mut order: Vec<usize> = (0..channels).collect();
            // Stable: among equal norms, the lower index goes first.
            order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
            let mut removed = order[..count].to_vec();
            removed.sort_unstable();
            removals.push(ChannelRemoval {
                conv: c.conv.clone(),
                channels,
                removed,
            });
        }
        Ok(removals)
    }

    /// `state` with the channels of `removals` taken out (see [`ChannelCoupling`]).
    pub fn remove(
        state: &StateDict,
        scope: &ChannelScope,
        removals: &[ChannelRemoval],
    ) -> Result<StateDict> {
        let mut out = state.clone();
        for r in removals {
            let c = scope
                .couplings
                .iter()
                .find(|c| c.conv == r.conv)
                .ok_or_else(|| {
                    Error::invalid(
                        "channel removal",
                        format!("\"{}\" is not a convolution of the scope", r.conv),
                    )
                })?;
            if check_coupling(&out, c)? != r.channels || r.removed.iter().any(|&i| i >= r.channels)
            {
                return Err(Error::invalid(
                    "channel removal",
                    format!(
                        "\"{}\": the removal does not fit its {} channels",
                        r.conv, r.channels
                    ),
                ));
            }
            let keep: Vec<usize> = (0..r.channels)
                .filter(|i| r.removed.binary_search(i).is_err())
                .collect();
            let mut slice = |key: String, axis: usize| -> Result<()> {
                if let Some(t) = out.get(&key) {
                    let narrowed = take(t, axis, r.channels, &keep)?;
                    out.insert(key, narrowed);
                }
                Ok(())
            };
            slice(format!("{}.weight", c.conv), 0)?;
            slice(format!("{}.bias", c.conv), 0)?;
            for part in ["weight", "bias", "running_mean", "running_var"] {
                slice(format!("{}.{part}", c.norm), 0)?;
            }
            slice(format!("{}.weight", c.next), 1)?;
        }
        Ok(out)
    }

    /// Removes the channels from a copy of `model`: selects, takes them out of its
    /// state dict, and rebuilds the smaller network. `model` is not changed.
    pub fn prune<M: ChannelPrunable>(&self, model: &M) -> Result<(M, ChannelReport)> {
        let state = StateDict::from_layer(model);
        let scope = model.channel_scope();
        let removals = self.select(&state, &scope)?;
        let compact = model.rebuild(&Self::remove(&state, &scope, &removals)?)?;
        let params = (count_parameters(model), count_parameters(&compact));
        Ok((
            compact,
            ChannelReport {
                removals,
                skipped: scope.skipped,
                params,
            },
        ))
    }
}

fn floats<'s>(state: &'s StateDict, key: &str) -> Result<&'s [f32]> {
    state
        .get(key)
        .and_then(StoredTensor::as_f32)
        .ok_or_else(|| {
            Error::invalid(
                "channel coupling",
                format!("\"{key}\" is missing or not a float tensor"),
            )
        })
}

/// The coupling's channel count `C`, after checking every tensor it touches: the
/// convolution's weight `[C, ...]` (and bias `[C]`), the norm's four `[C]` tensors, the
/// next layer's weight `[_, C, ...]`.
fn check_coupling(state: &StateDict, c: &ChannelCoupling) -> Result<usize> {
    let shape = |key: &str| -> Result<Vec<usize>> {
        floats(state, key)?;
        Ok(state.get(key).map(|t| t.shape.clone()).unwrap_or_default())
    };
    let conv = format!("{}.weight", c.conv);
    let s = shape(&conv)?;
    let channels = match s.as_slice() {
        [c, _, ..] if *c > 0 => *c,
        _ => return Err(Error::shape(conv, "[C, I, ...]", Shape(s))),
    };
    let mut vectors = vec![];
    let bias = format!("{}.bias", c.conv);
    if state.contains(&bias) {
        vectors.push(bias);
    }
    vectors.extend(
        ["weight", "bias", "running_mean", "running_var"].map(|p| format!("{}.{p}", c.norm)),
    );
    for key in vectors {
        let s = shape(&key)?;
        if s != [channels] {
            return Err(Error::shape(key, format!("[{channels}]"), Shape(s)));
        }
    }
    let next = format!("{}.weight", c.next);
    let s = shape(&next)?;
    let inputs = channels.saturating_mul(c.per_channel);
    if s.len() < 2 || s[1] != inputs || c.per_channel == 0 {
        return Err(Error::shape(
            next,
            format!("[_, {inputs}, ...] (ungrouped)"),
            Shape(s),
        ));
    }
    Ok(channels)
}

/// `t` with only the channels `keep` of `channels` along `axis`, each channel a run
/// of `t.shape[axis] / channels` consecutive entries there.
fn take(t: &StoredTensor, axis: usize, channels: usize, keep: &[usize]) -> Result<StoredTensor> {
    let outer: usize = t.shape[..axis].iter().product();
    let inner = t.numel() / (outer * channels).max(1);
    let mut shape = t.shape.clone();
    shape[axis] = shape[axis] / channels * keep.len();
    fn gather<T: Copy>(v: &[T], outer: usize, len: usize, inner: usize, keep: &[usize]) -> Vec<T> {
        let mut out = Vec::with_capacity(outer * keep.len() * inner);
        for o in 0..outer {
            for &k in keep {
                let at = (o * len + k) * inner;
                out.extend_from_slice(&v[at..at + inner]);
            }
        }
        out
    }
    match &t.data {
        TensorData::F32(v) => StoredTensor::f32(shape, gather(v, outer, channels, inner, keep)),
        TensorData::I64(v) => StoredTensor::i64(shape, gather(v, outer, channels, inner, keep)),
    }
}
