//! The parameter walk: [`Params`], what pruning, masks, sparsity reports and state dicts
//! need of a network, and the [`Visitor`] it is walked with.
//!
//! A network declares its parameters once per walk, by name: each composite hands its
//! children to [`Visitor::child`], which keeps the name prefix (`layer1.0` +
//! `conv1` → `layer1.0.conv1.weight`); each leaf reports its tensors with
//! [`Visitor::weight_bias`], [`Visitor::batch_norm`] or [`Visitor::tensor`]. The
//! read-only and the mutable walk are written the same way, the second with
//! [`VisitorMut`].
//!
//! ```
//! use reflow::layer::{count_parameters, NormParams, NormParamsMut, Params, Visitor, VisitorMut};
//!
//! /// `y = W x + b`, then a batch norm: parameters `fc.weight`, `fc.bias`, `bn.*`.
//! struct Head {
//!     weight: Vec<f32>, // [2, 3]
//!     bias: Vec<f32>,
//!     bn: [Vec<f32>; 4], // γ, β, running mean, running variance
//!     batches: i64,
//! }
//!
//! impl Params for Head {
//!     fn visit(&self, v: &mut Visitor<'_>) {
//!         v.weight_bias("fc", &[2, 3], &self.weight, Some(&self.bias));
//!         let [g, b, m, var] = &self.bn;
//!         v.batch_norm("bn", NormParams::new(g, b, m, var, self.batches, 1e-5));
//!     }
//!     fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
//!         v.weight_bias("fc", &[2, 3], &mut self.weight, Some(&mut self.bias));
//!         let [g, b, m, var] = &mut self.bn;
//!         v.batch_norm("bn", NormParamsMut::new(g, b, m, var, &mut self.batches, 1e-5));
//!     }
//! }
//!
//! let head = Head { weight: vec![0.0; 6], bias: vec![0.0; 2], bn: Default::default(), batches: 0 };
//! let mut names = Vec::new();
//! head.visit_params(&mut |p| names.push(p.name.to_string()));
//! assert_eq!(names[..3], ["fc.weight", "fc.bias", "bn.weight"]);
//! assert_eq!(count_parameters(&head), 8);
//! ```

use super::join;
use crate::error::{Error, Result};
use std::collections::BTreeMap;

/// What a parameter tensor is for. Stages select parameters by role: magnitude pruning
/// touches only [`ParamRole::Weight`]; REFLOW only the running statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParamRole {
    /// The weight of a convolution or linear layer: the only prunable role.
    Weight,
    /// The bias of a convolution or linear layer.
    Bias,
    /// A normalisation layer's scale γ.
    NormWeight,
    /// A normalisation layer's shift β.
    NormBias,
    /// A normalisation layer's running mean (a buffer, not a trainable parameter).
    RunningMean,
    /// A normalisation layer's running variance (a buffer, not a trainable parameter).
    RunningVar,
}

impl ParamRole {
    /// True for the weights magnitude pruning may zero (conv and linear weights).
    pub fn is_prunable(self) -> bool {
        matches!(self, ParamRole::Weight)
    }

    /// True for what PyTorch counts in `model.parameters()`: everything but the running
    /// statistics.
    pub fn is_trainable(self) -> bool {
        !matches!(self, ParamRole::RunningMean | ParamRole::RunningVar)
    }
}

/// A read-only view of one parameter tensor, in row-major (C) order.
#[derive(Debug, Clone, Copy)]
pub struct Param<'a> {
    /// The torchvision-style name, e.g. `layer1.0.conv1.weight`.
    pub name: &'a str,
    /// What the tensor is for.
    pub role: ParamRole,
    /// The tensor's shape, e.g. `[64, 64, 3, 3]`.
    pub shape: &'a [usize],
    /// The values, row-major.
    pub data: &'a [f32],
}

/// A mutable view of one parameter tensor, in row-major (C) order.
#[derive(Debug)]
pub struct ParamMut<'a> {
    /// The torchvision-style name, e.g. `layer1.0.conv1.weight`.
    pub name: &'a str,
    /// What the tensor is for.
    pub role: ParamRole,
    /// The tensor's shape.
    pub shape: &'a [usize],
    /// The values, row-major.
    pub data: &'a mut [f32],
}

/// The running statistics of one batch-norm layer, as REFLOW needs them.
#[derive(Debug)]
pub struct NormStatsMut<'a> {
    /// Per-channel running mean.
    pub running_mean: &'a mut [f32],
    /// Per-channel running (unbiased) variance.
    pub running_var: &'a mut [f32],
    /// How many calibration batches have been folded in (PyTorch's
    /// `num_batches_tracked`); drives the cumulative average.
    pub num_batches_tracked: &'a mut i64,
    /// The ε added to the variance before normalising.
    pub eps: f32,
}

/// The running statistics of one batch-norm layer, read-only.
#[derive(Debug, Clone, Copy)]
pub struct NormStats<'a> {
    /// Per-channel running mean.
    pub running_mean: &'a [f32],
    /// Per-channel running (unbiased) variance.
    pub running_var: &'a [f32],
    /// How many batches have been folded in (PyTorch's `num_batches_tracked`).
    pub num_batches_tracked: i64,
    /// The ε added to the variance before normalising.
    pub eps: f32,
}

/// Everything a batch-norm layer reports to a read-only walk: γ, β, the running
/// statistics, the batch counter and ε. All four tensors have one value per channel.
#[derive(Debug, Clone, Copy)]
pub struct NormParams<'a> {
    /// γ, the scale.
    pub weight: &'a [f32],
    /// β, the shift.
    pub bias: &'a [f32],
    /// The statistics.
    pub stats: NormStats<'a>,
}

impl<'a> NormParams<'a> {
    /// Gathers a batch norm's parts.
    pub fn new(
        weight: &'a [f32],
        bias: &'a [f32],
        running_mean: &'a [f32],
        running_var: &'a [f32],
        num_batches_tracked: i64,
        eps: f32,
    ) -> Self {
        NormParams {
            weight,
            bias,
            stats: NormStats {
                running_mean,
                running_var,
                num_batches_tracked,
                eps,
            },
        }
    }
}

/// Mutable twin of [`NormParams`].
#[derive(Debug)]
pub struct NormParamsMut<'a> {
    /// γ, the scale.
    pub weight: &'a mut [f32],
    /// β, the shift.
    pub bias: &'a mut [f32],
    /// The statistics.
    pub stats: NormStatsMut<'a>,
}

impl<'a> NormParamsMut<'a> {
    /// Gathers a batch norm's parts.
    pub fn new(
        weight: &'a mut [f32],
        bias: &'a mut [f32],
        running_mean: &'a mut [f32],
        running_var: &'a mut [f32],
        num_batches_tracked: &'a mut i64,
        eps: f32,
    ) -> Self {
        NormParamsMut {
            weight,
            bias,
            stats: NormStatsMut {
                running_mean,
                running_var,
                num_batches_tracked,
                eps,
            },
        }
    }
}

/// The parameters and batch-norm statistics of a network, or of a part of one, walked
/// by torchvision-style name. Object-safe: the stages that only read or write
/// parameters — [`Pruner`](crate::prune::Pruner), [`Masks`](crate::prune::Masks),
/// [`SparsityReport`](crate::prune::SparsityReport),
/// [`StateDict`](crate::StateDict), the counters — take a `&dyn Params`.
///
/// Implement the two walks; the four `visit_*` methods are provided.
pub trait Params {
    /// Reports every parameter tensor and batch norm, read-only, in a fixed order.
    fn visit(&self, v: &mut Visitor<'_>);

    /// Reports the same tensors, in the same order, mutably.
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>);

    /// Calls `f` once for every parameter tensor, in the walk's order.
    fn visit_params(&self, f: &mut dyn FnMut(Param<'_>)) {
        self.visit(&mut Visitor::new(Some(f), None));
    }

    /// Calls `f` once for every parameter tensor, mutably.
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(ParamMut<'_>)) {
        self.visit_mut(&mut VisitorMut::new(Some(f), None));
    }

    /// Calls `f` with the path and running statistics of every batch-norm layer, in
    /// forward order.
    fn visit_norms(&self, f: &mut dyn FnMut(&str, NormStats<'_>)) {
        self.visit(&mut Visitor::new(None, Some(f)));
    }

    /// Mutable twin of [`Params::visit_norms`].
    fn visit_norms_mut(&mut self, f: &mut dyn FnMut(&str, NormStatsMut<'_>)) {
        self.visit_mut(&mut VisitorMut::new(None, Some(f)));
    }
}

/// An optional part: walked when present (a block's shortcut or branch that only
/// some blocks have).
impl<P: Params> Params for Option<P> {
    fn visit(&self, v: &mut Visitor<'_>) {
        if let Some(p) = self {
            p.visit(v)
        }
    }

    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        if let Some(p) = self {
            p.visit_mut(v)
        }
    }
}

impl<P: Params + ?Sized> Params for Box<P> {
    fn visit(&self, v: &mut Visitor<'_>) {
        (**self).visit(v)
    }

    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        (**self).visit_mut(v)
    }
}

/// What a walk calls with each batch norm's path and statistics.
pub type NormSink<'f> = &'f mut dyn FnMut(&str, NormStats<'_>);

/// Mutable twin of [`NormSink`].
pub type NormSinkMut<'f> = &'f mut dyn FnMut(&str, NormStatsMut<'_>);

/// Appends `name` to `path` (with a dot), returning the length to truncate back to.
fn enter(path: &mut String, name: &str) -> usize {
    let len = path.len();
    if !name.is_empty() {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(name);
    }
    len
}

/// The read-only walk over a [`Params`]: it keeps the path of the module being
/// walked and hands each tensor, under its full name, to the walk's callbacks.
pub struct Visitor<'f> {
    path: String,
    params: Option<&'f mut dyn FnMut(Param<'_>)>,
    norms: Option<NormSink<'f>>,
}

/// The mutable walk over a [`Params`]: [`Visitor`]'s twin.
pub struct VisitorMut<'f> {
    path: String,
    params: Option<&'f mut dyn FnMut(ParamMut<'_>)>,
    norms: Option<NormSinkMut<'f>>,
}

/// The methods of both walks, written once: `$visit` is the [`Params`] method that
/// walks a child, `$($mut)?` the borrow the tensors are handed out with.
macro_rules! walk {
    ($walk:ident, $param:ident, $norm_params:ident, $sink:ident, $visit:ident $(, $mut:ident)?) => {
        impl<'f> $walk<'f> {
            /// A walk calling `params` for every tensor and `norms` for every batch norm.
            pub fn new(
                params: Option<&'f mut dyn FnMut($param<'_>)>,
                norms: Option<$sink<'f>>,
            ) -> Self {
                $walk {
                    path: String::new(),
                    params,
                    norms,
                }
            }

            /// The path of the module being walked (`layer1.0`); empty at the top.
            pub fn path(&self) -> &str {
                &self.path
            }

            /// Walks `child` under `name` (an empty name: at this module's level).
            pub fn child<P: Params + ?Sized>(&mut self, name: &str, child: &$($mut)? P) {
                let len = enter(&mut self.path, name);
                child.$visit(self);
                self.path.truncate(len);
            }

            /// Reports one tensor, `name` being its last component (`weight`).
            pub fn tensor(
                &mut self,
                name: &str,
                role: ParamRole,
                shape: &[usize],
                data: &$($mut)? [f32],
            ) {
                if let Some(f) = self.params.as_deref_mut() {
                    f($param {
                        name: &join(&self.path, name),
                        role,
                        shape,
                        data,
                    });
                }
            }

            /// Reports the module `name`'s `weight` (of `shape`, role
            /// [`ParamRole::Weight`]) and, when present, its `bias` (one value per
            /// output, `shape[0]`): a convolution or linear layer. An empty `name`
            /// reports them at this level.
            pub fn weight_bias(
                &mut self,
                name: &str,
                shape: &[usize],
                weight: &$($mut)? [f32],
                bias: Option<&$($mut)? [f32]>,
            ) {
                let len = enter(&mut self.path, name);
                self.tensor("weight", ParamRole::Weight, shape, weight);
                if let Some(bias) = bias {
                    self.tensor("bias", ParamRole::Bias, &[bias.len()], bias);
                }
                self.path.truncate(len);
            }

            /// Reports the batch norm `name`: `weight`, `bias`, `running_mean`,
            /// `running_var`, and its statistics to the norm walk.
            pub fn batch_norm(&mut self, name: &str, bn: $norm_params<'_>) {
                let len = enter(&mut self.path, name);
                let shape = [bn.weight.len()];
                let stats = bn.stats;
                let tensors = [
                    ("weight", ParamRole::NormWeight, bn.weight),
                    ("bias", ParamRole::NormBias, bn.bias),
                    ("running_mean", ParamRole::RunningMean, &$($mut)? *stats.running_mean),
                    ("running_var", ParamRole::RunningVar, &$($mut)? *stats.running_var),
                ];
                for (name, role, data) in tensors {
                    self.tensor(name, role, &shape, data);
                }
                if let Some(f) = self.norms.as_deref_mut() {
                    f(&self.path, stats);
                }
                self.path.truncate(len);
            }
        }
    };
}

walk!(Visitor, Param, NormParams, NormSink, visit);
walk!(
    VisitorMut,
    ParamMut,
    NormParamsMut,
    NormSinkMut,
    visit_mut,
    mut
);

/// Counts the parameters PyTorch's `sum(p.numel() for p in model.parameters())` counts:
/// all but the running statistics.
pub fn count_parameters<P: Params + ?Sized>(model: &P) -> usize {
    let mut n = 0;
    model.visit_params(&mut |p| {
        if p.role.is_trainable() {
            n += p.data.len();
        }
    });
    n
}

/// Counts the prunable weights (conv and linear weights).
pub fn count_prunable<P: Params + ?Sized>(model: &P) -> usize {
    let mut n = 0;
    model.visit_params(&mut |p| {
        if p.role.is_prunable() {
            n += p.data.len();
        }
    });
    n
}

/// Checks that the two walks agree: every `<norm>.running_mean` and
/// `<norm>.running_var` tensor belongs to a batch norm `<norm>` of the norm walk, with
/// as many channels, and every batch norm of the norm walk has both tensors. REFLOW
/// runs it before it changes anything, so a hand-written walk that forgets a batch
/// norm is an error, not a silently stale statistic.
///
/// ```
/// use reflow::layer::check_norm_walk;
/// use reflow::nn::BatchNorm2d;
///
/// check_norm_walk(&BatchNorm2d::new(4, 1e-5))?;
/// # Ok::<(), reflow::Error>(())
/// ```
pub fn check_norm_walk<P: Params + ?Sized>(model: &P) -> Result<()> {
    // Per batch-norm path: channels of (running_mean, running_var) in the parameter walk.
    let mut tensors: BTreeMap<String, [Option<usize>; 2]> = BTreeMap::new();
    model.visit_params(&mut |p| {
        let (suffix, slot) = match p.role {
            ParamRole::RunningMean => (".running_mean", 0),
            ParamRole::RunningVar => (".running_var", 1),
            _ => return,
        };
        // A batch norm walked on its own is at the top: its tensors have no prefix.
        let layer = match p.name.strip_suffix(suffix) {
            Some(layer) => layer,
            None if p.name == &suffix[1..] => "",
            None => p.name,
        };
        tensors.entry(layer.to_string()).or_default()[slot] = Some(p.data.len());
    });
    let mut problem = None;
    model.visit_norms(&mut |name, s| {
        let found = tensors.remove(name);
        let expected = [Some(s.running_mean.len()), Some(s.running_var.len())];
        if problem.is_none() && found != Some(expected) {
            problem = Some(Error::invalid(
                format!("batch norm \"{name}\""),
                format!(
                    "the norm walk reports {} channels but the parameter walk has {}",
                    s.running_mean.len(),
                    match found {
                        None => "no running statistics under that name".to_string(),
                        Some(f) => format!("running_mean/running_var of {f:?} values"),
                    }
                ),
            ));
        }
    });
    if let Some(e) = problem {
        return Err(e);
    }
    match tensors.into_keys().next() {
        None => Ok(()),
        Some(name) => Err(Error::invalid(
            format!("batch norm \"{name}\""),
            "has running statistics in the parameter walk but no entry in the norm walk",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{BatchNorm2d, Sequential};

    /// A batch norm whose hand-written walk reports its running statistics as plain
    /// tensors and forgets the norm entry.
    struct Forgetful(BatchNorm2d);

    impl Params for Forgetful {
        fn visit(&self, v: &mut Visitor<'_>) {
            let bn = &self.0;
            v.tensor(
                "running_mean",
                ParamRole::RunningMean,
                &[2],
                bn.running_mean(),
            );
            v.tensor("running_var", ParamRole::RunningVar, &[2], bn.running_var());
        }
        fn visit_mut(&mut self, _: &mut VisitorMut<'_>) {}
    }

    #[test]
    fn the_norm_walk_check_finds_a_forgotten_batch_norm() {
        let good = Sequential::new().push("bn", BatchNorm2d::new(2, 1e-5));
        check_norm_walk(&good).unwrap();
        let err = check_norm_walk(&Forgetful(BatchNorm2d::new(2, 1e-5))).unwrap_err();
        assert!(
            err.to_string().contains("no entry in the norm walk"),
            "{err}"
        );
    }

    #[test]
    fn children_are_named_under_their_parent() {
        let net = Sequential::new().push(
            "block",
            Sequential::new().push("bn", BatchNorm2d::new(1, 1e-5)),
        );
        let (mut params, mut norms) = (vec![], vec![]);
        net.visit_params(&mut |p| params.push(p.name.to_string()));
        net.visit_norms(&mut |n, _| norms.push(n.to_string()));
        assert_eq!(params[0], "block.bn.weight");
        assert_eq!(params[3], "block.bn.running_var");
        assert_eq!(norms, ["block.bn"]);
        let mut seen = vec![];
        let mut net = net;
        net.visit_params_mut(&mut |p| seen.push((p.name.to_string(), p.role)));
        assert_eq!(seen[1], ("block.bn.bias".to_string(), ParamRole::NormBias));
    }
}
