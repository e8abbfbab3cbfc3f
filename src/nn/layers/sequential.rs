//! Composition: a named chain of layers of any tensor rank.

use super::pending::Pending;
use super::tensor::{input_as, AnyTensor, Rank};
use super::{layer_context, ConvBn, Tensor4};
use crate::error::{Error, Result};
use crate::layer::{Layer, Params, Probe, Schedule, Visitor, VisitorMut};
use crate::nn::blocked::{forward_value, BlockedLayer, BlockedTensor, Pass, Value};
use crate::nn::kernels::blocked_map::add_activate;
use crate::nn::runtime::{recycle, Activation};
use std::any::Any;
use std::borrow::Cow;
use std::marker::PhantomData;

/// Layers run one after the other, each under its own name: PyTorch's
/// `nn.Sequential` (whose children are named `0`, `1`, ...) or a module with named
/// attributes (`conv1`, `bn1`, ...). Parameter names are `<child>.<param>`.
///
/// A chain takes an `I` and returns an `O`, each a [`Tensor4`], a
/// [`Tensor2`](super::Tensor2) or an [`AnyTensor`]: [`Sequential::new`] starts a
/// 4-d → 4-d chain and every [`Sequential::push`] makes the chain's output the new
/// layer's (a layer of any rank, such as an [`Activation`](crate::nn::Activation),
/// keeps it). So features, a flatten and a classifier make one chain:
///
/// ```
/// use reflow::layer::{count_parameters, Layer};
/// use reflow::nn::{Activation, AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig};
/// use reflow::nn::{Dropout, Flatten, Linear, Sequential};
/// use ndarray::Array4;
///
/// let net = Sequential::new()
///     .push("conv", Conv2d::new(Conv2dConfig::new(1, 4, 3).padding(1))?)
///     .push("bn", BatchNorm2d::new(4, 1e-5))
///     .push("relu", Activation::Relu)
///     .push("pool", AdaptiveAvgPool2d::global())
///     .push("flatten", Flatten)
///     .push("dropout", Dropout::new(0.5)?)
///     .push("fc", Linear::new(4, 10, true));
/// assert_eq!(count_parameters(&net), 4 * 9 + 4 + 4 + 4 * 10 + 10);
/// let logits = net.forward(&Array4::zeros((2, 1, 8, 8)))?; // a `Tensor2`
/// assert_eq!(logits.dim(), (2, 10));
/// # Ok::<(), reflow::Error>(())
/// ```
pub struct Sequential<I = Tensor4, O = Tensor4> {
    layers: Vec<(String, Child)>,
    ranks: PhantomData<fn(I) -> O>,
}

/// A layer of a [`Sequential`]. [`ConvBn`] units are kept by type, so that a
/// calibration pass can leave their batch norm's output to the next reader (see
/// [`Pending`]); any other layer is boxed with its ranks erased.
enum Child {
    Unit(Box<ConvBn>),
    Layer(Box<dyn Link>),
}

/// A layer whose input and output ranks are checked at run time.
trait Link: Params + Send + Sync {
    fn forward_dyn(&self, x: &dyn Any, probe: &mut Probe<'_>) -> Result<AnyTensor>;
    /// The eval pass of a blocked pass ([`forward_value`]).
    fn forward_value<'a>(&self, x: Value<'a>, pass: &mut Pass<'_, '_>) -> Result<Value<'a>>;
    fn train_dyn(&mut self, x: &dyn Any, probe: &mut Probe<'_>) -> Result<AnyTensor>;
}

/// A layer boxed as a [`Link`].
struct Ranked<L>(L);

impl<L: Params> Params for Ranked<L> {
    fn visit(&self, v: &mut Visitor<'_>) {
        self.0.visit(v)
    }

    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        self.0.visit_mut(v)
    }
}

impl<L> Link for Ranked<L>
where
    L: Layer + Send + Sync,
    L::Input: Rank,
    L::Output: Rank,
{
    fn forward_dyn(&self, x: &dyn Any, probe: &mut Probe<'_>) -> Result<AnyTensor> {
        let x = input_as::<L::Input>(x, &layer_context(probe))?;
        Ok(self.0.forward_with(&x, probe)?.into_any())
    }

    fn train_dyn(&mut self, x: &dyn Any, probe: &mut Probe<'_>) -> Result<AnyTensor> {
        let x = input_as::<L::Input>(x, &layer_context(probe))?;
        Ok(self.0.forward_train(&x, probe)?.into_any())
    }

    fn forward_value<'a>(&self, x: Value<'a>, pass: &mut Pass<'_, '_>) -> Result<Value<'a>> {
        forward_value(&self.0, x, pass)
    }
}

impl Child {
    fn params(&self) -> &dyn Params {
        match self {
            Child::Unit(unit) => unit.as_ref(),
            Child::Layer(layer) => layer.as_ref(),
        }
    }

    fn params_mut(&mut self) -> &mut dyn Params {
        match self {
            Child::Unit(unit) => unit.as_mut(),
            Child::Layer(layer) => layer.as_mut(),
        }
    }

    fn forward_dyn(&self, x: &dyn Any, probe: &mut Probe<'_>) -> Result<AnyTensor> {
        match self {
            Child::Unit(unit) => {
                let x = input_as::<Tensor4>(x, &layer_context(probe))?;
                Ok(AnyTensor::Nchw(unit.forward_with(&x, probe)?))
            }
            Child::Layer(layer) => layer.forward_dyn(x, probe),
        }
    }

    fn forward_value<'a>(&self, x: Value<'a>, pass: &mut Pass<'_, '_>) -> Result<Value<'a>> {
        match self {
            Child::Unit(unit) => forward_value(unit.as_ref(), x, pass),
            Child::Layer(layer) => layer.forward_value(x, pass),
        }
    }

    fn train_dyn(&mut self, x: &dyn Any, probe: &mut Probe<'_>) -> Result<AnyTensor> {
        match self {
            Child::Unit(unit) => {
                let x = input_as::<Tensor4>(x, &layer_context(probe))?;
                Ok(AnyTensor::Nchw(unit.forward_train(&x, probe)?))
            }
            Child::Layer(layer) => layer.train_dyn(x, probe),
        }
    }
}

/// What flows between the children of a fused calibration pass: a tensor whose batch
/// norm is still to be applied, or a tensor of any rank.
enum Flow {
    Pending(Pending),
    Ready(AnyTensor),
}

impl Flow {
    fn into_any(self, threads: usize) -> AnyTensor {
        match self {
            Flow::Pending(p) => AnyTensor::Nchw(p.into_tensor(threads)),
            Flow::Ready(t) => t,
        }
    }
}

/// Hands a tensor no longer needed back to the activation pool.
fn recycle_any(t: AnyTensor) {
    if let AnyTensor::Nchw(t) = t {
        recycle(t);
    }
}

impl<I, O> std::fmt::Debug for Sequential<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.layers.iter().map(|(n, _)| n))
            .finish()
    }
}

impl Default for Sequential {
    fn default() -> Self {
        Self::new()
    }
}

impl Sequential {
    /// An empty 4-d → 4-d chain (the identity).
    pub fn new() -> Self {
        Self::with_input()
    }

    /// An empty chain taking `I` (the identity), e.g.
    /// `Sequential::with_input::<Tensor2>()` for a classifier over features.
    pub fn with_input<I: Rank>() -> Sequential<I, I> {
        Sequential {
            layers: Vec::new(),
            ranks: PhantomData,
        }
    }
}

impl<I: Rank, O: Rank> Sequential<I, O> {
    /// Appends `layer` under `name`; the chain then outputs what `layer` outputs (or,
    /// for a layer of any rank, what it output before). An empty name puts the
    /// layer's own parameter names and taps at this level (for a layer such as
    /// [`ConvBn`] that names its parts itself).
    ///
    /// A layer whose input rank is not the chain's output rank so far is an error
    /// when the chain runs, naming the layer.
    pub fn push<L>(
        self,
        name: impl Into<String>,
        layer: L,
    ) -> Sequential<I, <L::Output as Rank>::After<O>>
    where
        L: Layer + Send + Sync + 'static,
        L::Input: Rank,
        L::Output: Rank,
    {
        let mut slot = Some(layer);
        let child = match (&mut slot as &mut dyn Any).downcast_mut::<Option<ConvBn>>() {
            Some(unit) => unit.take().map(|unit| Child::Unit(Box::new(unit))),
            None => slot
                .take()
                .map(|layer| Child::Layer(Box::new(Ranked(layer)))),
        };
        let mut layers = self.layers;
        layers.extend(child.map(|child| (name.into(), child)));
        Sequential {
            layers,
            ranks: PhantomData,
        }
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// True when the chain has no layer.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The children's names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.layers.iter().map(|(n, _)| n.as_str())
    }

    /// The chain's result as an `O`: an error naming the chain when the last layer
    /// gave another rank.
    fn output(&self, y: Option<AnyTensor>, x: &I, probe: &Probe<'_>) -> Result<O> {
        let y = y.unwrap_or_else(|| x.clone().into_any());
        let shape = y.shape().to_vec();
        O::from_any(y).ok_or_else(|| {
            Error::shape(
                format!("{} (output)", layer_context(probe)),
                format!("a {} tensor", O::NAME),
                shape.as_slice(),
            )
        })
    }

    /// Calibration mode for a pass that nobody observes: like
    /// [`Layer::forward_train`], but a final [`ConvBn`] leaves its batch norm's output
    /// pending, and each [`ConvBn`] reads the pending output of the one before it
    /// through its map (no pass of its own over the batch-norm outputs).
    fn train_flow(&mut self, x: &I, probe: &mut Probe<'_>) -> Result<Option<Flow>> {
        let mut current: Option<Flow> = None;
        for (name, child) in &mut self.layers {
            let next = match child {
                Child::Unit(unit) => {
                    // A convolution that cannot map its input as it reads it gets the
                    // batch norm's output, made in place (not in a mapped copy).
                    if let Some(Flow::Pending(p)) = &current {
                        if p.map.is_some() && !unit.conv().maps_input_as_read(probe.exec()) {
                            let Some(Flow::Pending(p)) = current.take() else {
                                unreachable!("matched above")
                            };
                            let threads = probe.exec().threads();
                            current = Some(Flow::Pending(Pending::ready(p.into_tensor(threads))));
                        }
                    }
                    let pending = probe.scoped(name, |p| {
                        let context = layer_context(p);
                        let (input, map): (Cow<'_, Tensor4>, _) = match &current {
                            None => (input_as::<Tensor4>(x, &context)?, None),
                            Some(Flow::Pending(p)) => (Cow::Borrowed(&p.raw), p.map.as_ref()),
                            Some(Flow::Ready(t)) => (input_as::<Tensor4>(t, &context)?, None),
                        };
                        unit.train_pending(&input, map, p)
                    })?;
                    Flow::Pending(pending)
                }
                Child::Layer(layer) => {
                    // Other layers read the batch norm's output itself.
                    let threads = probe.exec().threads();
                    let ready = current.take().map(|f| f.into_any(threads));
                    let input: &dyn Any = match &ready {
                        Some(t) => t,
                        None => x,
                    };
                    let y = probe.scoped(name, |p| layer.train_dyn(input, p))?;
                    if let Some(ready) = ready {
                        recycle_any(ready);
                    }
                    Flow::Ready(y)
                }
            };
            if let Some(previous) = current.replace(next) {
                match previous {
                    Flow::Pending(p) => recycle(p.raw),
                    Flow::Ready(t) => recycle_any(t),
                }
            }
        }
        Ok(current)
    }
}

impl Sequential<Tensor4, Tensor4> {
    /// [`Sequential::train_flow`] for a 4-d chain: the output, with its batch norm
    /// possibly pending.
    pub(crate) fn train_pending(&mut self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Pending> {
        match self.train_flow(x, probe)? {
            None => Ok(Pending::ready(x.clone())),
            Some(Flow::Pending(p)) => Ok(p),
            Some(Flow::Ready(t)) => {
                let shape = t.shape().to_vec();
                t.into_nchw().map(Pending::ready).ok_or_else(|| {
                    Error::shape(
                        format!("{} (output)", layer_context(probe)),
                        "a 4-d tensor",
                        shape.as_slice(),
                    )
                })
            }
        }
    }
}

impl<I: Rank, O: Rank> Sequential<I, O> {
    /// The eval pass on blocks (see [`crate::nn::blocked`]), and with `add = (r,
    /// post)`, `post(chain(x) + r)`: a final [`ConvBn`] that
    /// [fuses a residual](ConvBn::fuses_residual) adds it and applies `post` as it
    /// stores; else a pass of its own does.
    pub(crate) fn forward_blocked_add<'a>(
        &self,
        x: Value<'a>,
        add: Option<(&BlockedTensor, Activation)>,
        pass: &mut Pass<'_, '_>,
    ) -> Result<Value<'a>> {
        let mut current = x;
        let mut added = false;
        let last = self.layers.len().wrapping_sub(1);
        for (i, (name, child)) in self.layers.iter().enumerate() {
            current = pass.scoped(name, |pass| match (child, add) {
                (Child::Unit(unit), Some(add)) if i == last && unit.fuses_residual() => {
                    added = true;
                    let y = unit.forward_blocked_add(current, Some(add), pass)?;
                    Ok(Value::Blocked(Cow::Owned(y)))
                }
                _ => child.forward_value(current, pass),
            })?;
        }
        let Some((r, post)) = add.filter(|_| !added) else {
            return Ok(current);
        };
        let mut y = current.into_blocked(pass)?.into_owned();
        if y.dims() != r.dims() {
            return Err(Error::shape(
                format!("{} (residual add)", layer_context(pass.probe())),
                format!("the body's output shape {:?}", y.dims()),
                &r.dims()[..],
            ));
        }
        let threads = pass.threads();
        add_activate(
            pass.kernels(),
            y.values_mut(),
            Some(r.values()),
            post,
            threads,
        );
        Ok(Value::Blocked(Cow::Owned(y)))
    }
}

impl<I: Rank, O: Rank> Sequential<I, O> {
    /// The eval pass on blocks of the children from `from` on (no residual); with
    /// `to_features`, only until a child gives a matrix `[N, features]` (a network's
    /// pooled features, before its classifier). Also the index of the next child.
    pub(crate) fn forward_blocked_from<'a>(
        &self,
        x: Value<'a>,
        from: usize,
        to_features: bool,
        pass: &mut Pass<'_, '_>,
    ) -> Result<(Value<'a>, usize)> {
        let mut current = x;
        for (i, (name, child)) in self.layers.iter().enumerate().skip(from) {
            current = pass.scoped(name, |pass| child.forward_value(current, pass))?;
            if to_features && matches!(current, Value::Plain(AnyTensor::Matrix(_))) {
                return Ok((current, i + 1));
            }
        }
        Ok((current, self.layers.len()))
    }
}

impl<I: Rank, O: Rank> BlockedLayer for Sequential<I, O> {
    fn forward_blocked<'a>(&self, x: Value<'a>, pass: &mut Pass<'_, '_>) -> Result<Value<'a>> {
        self.forward_blocked_add(x, None, pass)
    }
}

impl<I: Rank, O: Rank> Params for Sequential<I, O> {
    fn visit(&self, v: &mut Visitor<'_>) {
        for (name, layer) in &self.layers {
            v.child(name, layer.params());
        }
    }

    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        for (name, layer) in &mut self.layers {
            v.child(name, layer.params_mut());
        }
    }
}

impl<I: Rank, O: Rank> Layer for Sequential<I, O> {
    type Input = I;
    type Output = O;

    fn blocked(&self) -> Option<&dyn BlockedLayer> {
        Some(self)
    }

    fn forward_with(&self, x: &I, probe: &mut Probe<'_>) -> Result<O> {
        let mut current: Option<AnyTensor> = None;
        for (name, child) in &self.layers {
            let input: &dyn Any = match &current {
                Some(t) => t,
                None => x,
            };
            let y = probe.scoped(name, |p| child.forward_dyn(input, p))?;
            if let Some(previous) = current.replace(y) {
                recycle_any(previous);
            }
        }
        self.output(current, x, probe)
    }

    fn forward_train(&mut self, x: &I, probe: &mut Probe<'_>) -> Result<O> {
        if probe.schedule() == Schedule::Fused {
            let threads = probe.exec().threads();
            let y = self.train_flow(x, probe)?.map(|f| f.into_any(threads));
            return self.output(y, x, probe);
        }
        let mut current: Option<AnyTensor> = None;
        for (name, child) in &mut self.layers {
            let input: &dyn Any = match &current {
                Some(t) => t,
                None => x,
            };
            let y = probe.scoped(name, |p| child.train_dyn(input, p))?;
            if let Some(previous) = current.replace(y) {
                recycle_any(previous);
            }
        }
        self.output(current, x, probe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Params;
    use crate::nn::{Activation, BatchNorm2d, Conv2d, Conv2dConfig, Flatten, Linear, Tensor2};
    use ndarray::Array4;

    fn unit(c: usize, o: usize, activation: Activation) -> ConvBn {
        let conv = Conv2d::new(Conv2dConfig::new(c, o, 3).padding(1)).unwrap();
        ConvBn::new("conv", conv, "bn", BatchNorm2d::new(o, 1e-5), activation).unwrap()
    }

    fn filled<P: Params>(mut p: P) -> P {
        let mut i = 0.0f32;
        p.visit_params_mut(&mut |t| {
            t.data.iter_mut().for_each(|v| {
                i += 0.29;
                *v = i.sin()
                    + if t.name.ends_with("running_var") {
                        1.2
                    } else {
                        0.0
                    };
            })
        });
        p
    }

    #[test]
    fn fused_calibration_applies_every_activation_where_it_is_read() {
        for act in Activation::ALL {
            let chain = || {
                filled(
                    Sequential::new()
                        .push("a", unit(3, 16, act))
                        .push("b", unit(16, 16, act))
                        .push("c", unit(16, 8, Activation::Identity)),
                )
            };
            let (mut fused, mut layered) = (chain(), chain());
            let x = Array4::from_shape_fn((3, 3, 9, 7), |(a, b, c, d)| {
                ((a * 7 + b * 3 + c * d) as f32).cos()
            });
            let u = crate::layer::NormUpdate::Cumulative;
            let y1 = fused
                .forward_train(&x, &mut Probe::none().with_update(u))
                .unwrap();
            let by_layer = Probe::none().with_schedule(Schedule::LayerByLayer);
            let y2 = layered
                .forward_train(&x, &mut by_layer.with_update(u))
                .unwrap();
            let err = (&y1 - &y2).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v));
            assert!(err < 1e-4, "{act}: {err}");
            let (mut a, mut b) = (vec![], vec![]);
            fused.visit_norms(&mut |_, s| a.extend_from_slice(s.running_var));
            layered.visit_norms(&mut |_, s| b.extend_from_slice(s.running_var));
            let err = a
                .iter()
                .zip(&b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(err < 1e-4, "{act}: running variances differ by {err}");
        }
    }

    #[test]
    fn a_chain_goes_from_features_to_a_head_and_names_a_rank_mismatch() {
        let head: Sequential<Tensor4, Tensor2> = Sequential::new()
            .push("features", unit(2, 4, Activation::Relu))
            .push("flatten", Flatten)
            .push("act", Activation::Silu)
            .push("fc", Linear::new(4 * 3 * 3, 5, true));
        let x = Array4::from_elem((2, 2, 3, 3), 0.5);
        assert_eq!(head.forward(&x).unwrap().dim(), (2, 5));
        // A linear layer after a 4-d output: an error naming it, not a panic.
        let wrong = Sequential::new().push("conv", unit(2, 4, Activation::Relu));
        let wrong = wrong.push("fc", Linear::new(4, 5, true));
        let err = wrong.forward(&x).unwrap_err().to_string();
        assert!(err.contains("fc") && err.contains("2-d"), "{err}");
        // The identity chain of a 2-d input.
        let empty = Sequential::with_input::<Tensor2>();
        let m = Tensor2::ones((2, 3));
        assert_eq!(empty.forward(&m).unwrap(), m);
    }
}
