//! Composition: a named chain of layers, and a residual connection.

use super::pending::Pending;
use super::{emit4, BoxedLayer, ConvBn, Tensor4};
use crate::error::{Error, Result};
use crate::layer::{Layer, LayerKind, NormUpdate, Params, Probe, Schedule, Site};
use crate::layer::{Visitor, VisitorMut};
use crate::nn::runtime::{recycle, relu, ChannelMap};
use rayon::prelude::*;
use std::any::Any;

/// Layers run one after the other, each under its own name: PyTorch's
/// `nn.Sequential` (whose children are named `0`, `1`, ...) or a module with named
/// attributes (`conv1`, `bn1`, ...). Parameter names are `<child>.<param>`.
///
/// ```
/// use reflow::layer::{count_parameters, Layer};
/// use reflow::nn::{BatchNorm2d, Conv2d, Conv2dConfig, Relu, Sequential};
/// use ndarray::Array4;
///
/// let net = Sequential::new()
///     .push("conv", Conv2d::new(Conv2dConfig::new(1, 4, 3).padding(1))?)
///     .push("bn", BatchNorm2d::new(4, 1e-5))
///     .push("relu", Relu);
/// assert_eq!(count_parameters(&net), 4 * 9 + 4 + 4);
/// assert_eq!(net.forward(&Array4::zeros((2, 1, 8, 8)))?.dim(), (2, 4, 8, 8));
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Default)]
pub struct Sequential {
    layers: Vec<(String, Child)>,
}

/// A layer of a [`Sequential`]. [`ConvBn`] units are kept by type, so that a
/// calibration pass can leave their batch norm's output to the next reader (see
/// [`Pending`]); any other layer is boxed.
enum Child {
    Unit(Box<ConvBn>),
    Layer(BoxedLayer),
}

impl Child {
    fn layer(&self) -> &(dyn Layer<Input = Tensor4, Output = Tensor4> + Send + Sync) {
        match self {
            Child::Unit(unit) => unit.as_ref(),
            Child::Layer(layer) => layer.as_ref(),
        }
    }

    fn layer_mut(&mut self) -> &mut (dyn Layer<Input = Tensor4, Output = Tensor4> + Send + Sync) {
        match self {
            Child::Unit(unit) => unit.as_mut(),
            Child::Layer(layer) => layer.as_mut(),
        }
    }
}

impl std::fmt::Debug for Sequential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.layers.iter().map(|(n, _)| n))
            .finish()
    }
}

impl Sequential {
    /// An empty chain (the identity).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `layer` under `name`. An empty name puts the layer's own parameter
    /// names and taps at this level (for a layer such as [`ConvBn`](super::ConvBn)
    /// that names its parts itself).
    pub fn push<L>(mut self, name: impl Into<String>, layer: L) -> Self
    where
        L: Layer<Input = Tensor4, Output = Tensor4> + Send + Sync + 'static,
    {
        let mut slot = Some(layer);
        let child = match (&mut slot as &mut dyn Any).downcast_mut::<Option<ConvBn>>() {
            Some(unit) => unit.take().map(|unit| Child::Unit(Box::new(unit))),
            None => slot.take().map(|layer| Child::Layer(Box::new(layer))),
        };
        self.layers.extend(child.map(|child| (name.into(), child)));
        self
    }

    /// Calibration mode for a pass that nobody observes: like
    /// [`Layer::forward_train`], but a final [`ConvBn`] leaves its batch norm's output
    /// pending, and each [`ConvBn`] reads the pending output of the one before it
    /// through its map (no pass of its own over the batch-norm outputs).
    pub(crate) fn train_pending(
        &mut self,
        x: &Tensor4,
        update: NormUpdate,
        probe: &mut Probe<'_>,
    ) -> Result<Pending> {
        let mut current: Option<Pending> = None;
        for (name, child) in &mut self.layers {
            let next = match child {
                Child::Unit(unit) => {
                    // A convolution that cannot map its input as it reads it gets the
                    // batch norm's output, made in place (not in a mapped copy).
                    if !unit.conv().maps_input_as_read() {
                        current = current.map(|p| Pending::ready(p.into_tensor()));
                    }
                    let (input, map) = match &current {
                        None => (x, None),
                        Some(p) => (&p.raw, p.map.as_ref()),
                    };
                    probe.scoped(name, |p| unit.train_pending(input, map, update, p))?
                }
                Child::Layer(layer) => {
                    // Other layers read the batch norm's output itself.
                    let ready = current.take().map(Pending::into_tensor);
                    let input = ready.as_ref().unwrap_or(x);
                    let y = probe.scoped(name, |p| layer.forward_train(input, update, p))?;
                    if let Some(ready) = ready {
                        recycle(ready);
                    }
                    Pending::ready(y)
                }
            };
            if let Some(previous) = current.replace(next) {
                recycle(previous.raw);
            }
        }
        Ok(current.unwrap_or_else(|| Pending::ready(x.clone())))
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
}

impl Layer for Sequential {
    type Input = Tensor4;
    type Output = Tensor4;

    fn forward_with(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        let Some(((first_name, first), rest)) = self.layers.split_first() else {
            return Ok(x.clone());
        };
        let mut y = probe.scoped(first_name, |p| first.layer().forward_with(x, p))?;
        for (name, layer) in rest {
            let next = probe.scoped(name, |p| layer.layer().forward_with(&y, p))?;
            recycle(std::mem::replace(&mut y, next));
        }
        Ok(y)
    }

    fn forward_train(
        &mut self,
        x: &Tensor4,
        update: NormUpdate,
        probe: &mut Probe<'_>,
    ) -> Result<Tensor4> {
        if probe.schedule() == Schedule::Fused {
            return Ok(self.train_pending(x, update, probe)?.into_tensor());
        }
        let Some(((first_name, first), rest)) = self.layers.split_first_mut() else {
            return Ok(x.clone());
        };
        let mut y = probe.scoped(first_name, |p| {
            first.layer_mut().forward_train(x, update, p)
        })?;
        for (name, layer) in rest {
            let next = probe.scoped(name, |p| layer.layer_mut().forward_train(&y, update, p))?;
            recycle(std::mem::replace(&mut y, next));
        }
        Ok(y)
    }
}

impl Params for Sequential {
    fn visit(&self, v: &mut Visitor<'_>) {
        for (name, layer) in &self.layers {
            v.child(name, layer.layer());
        }
    }

    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        for (name, layer) in &mut self.layers {
            v.child(name, layer.layer_mut());
        }
    }
}

/// A residual connection followed by ReLU: `relu(body(x) + shortcut(x))`, where the
/// shortcut is the identity or a named layer chain (torchvision's `downsample`).
///
/// The body's children are named at the block's level (`conv1`, `bn1`, ...), the
/// shortcut's under its own name (`downsample.0`, `downsample.1`), exactly as in a
/// torchvision `BasicBlock` or `Bottleneck`. The block reports its output as a tap of
/// kind [`LayerKind::Block`].
#[derive(Debug)]
pub struct Residual {
    body: Sequential,
    shortcut: Option<(String, Sequential)>,
}

impl Residual {
    /// `relu(body(x) + x)`.
    pub fn identity(body: Sequential) -> Self {
        Residual {
            body,
            shortcut: None,
        }
    }

    /// `relu(body(x) + shortcut(x))`, with the shortcut's parameters under `name`.
    pub fn with_shortcut(body: Sequential, name: impl Into<String>, shortcut: Sequential) -> Self {
        Residual {
            body,
            shortcut: Some((name.into(), shortcut)),
        }
    }

    /// `relu(map_y(y) + map_s(s))`, in `y`'s memory: the residual add, with the body's
    /// and the shortcut's pending batch norms applied on the way (each map, then the
    /// sum, rounded as the separate passes would).
    fn add_relu_mapped(
        &self,
        y: Pending,
        s: &Tensor4,
        s_map: Option<&ChannelMap>,
        probe: &mut Probe<'_>,
    ) -> Result<Tensor4> {
        let Pending { raw: mut out, map } = y;
        if out.dim() != s.dim() {
            return Err(Error::shape(
                format!("{} (residual add)", probe.path()),
                format!("the body's output shape {:?}", out.shape()),
                s.shape(),
            ));
        }
        if !out.is_standard_layout() {
            // A custom body layer may return any layout.
            out = out.as_standard_layout().into_owned();
        }
        let (_, c, h, w) = out.dim();
        let spatial = (h * w).max(1);
        let s = s.as_standard_layout();
        // Channel `ch`'s map as (scale, shift, relu); the identity when there is none.
        let affine = |m: Option<&ChannelMap>, ch: usize| {
            m.map_or((1.0, 0.0, false), |m| (m.scale[ch], m.shift[ch], m.relu))
        };
        let plane = |(i, (o, s)): (usize, (&mut [f32], &[f32]))| {
            let ((a, b, relu_y), (a_s, b_s, relu_s)) =
                (affine(map.as_ref(), i % c), affine(s_map, i % c));
            if map.is_none() && s_map.is_none() {
                for (o, &s) in o.iter_mut().zip(s) {
                    *o = relu(*o + s);
                }
            } else if relu_y || relu_s {
                let clamp = |v: f32, on: bool| if on { relu(v) } else { v };
                for (o, &s) in o.iter_mut().zip(s) {
                    *o = relu(clamp(*o * a + b, relu_y) + clamp(s * a_s + b_s, relu_s));
                }
            } else {
                // (v·1 + 0 is v: without a map, the values are added as they are.)
                for (o, &s) in o.iter_mut().zip(s) {
                    *o = relu((*o * a + b) + (s * a_s + b_s));
                }
            }
        };
        let (os, ss) = (
            out.as_slice_mut().expect("standard layout"),
            s.as_slice().expect("standard layout"),
        );
        if crate::nn::runtime::threads() > 1 {
            os.par_chunks_mut(spatial)
                .zip(ss.par_chunks(spatial))
                .enumerate()
                .for_each(plane);
        } else {
            os.chunks_mut(spatial)
                .zip(ss.chunks(spatial))
                .enumerate()
                .for_each(plane);
        }
        emit4(probe, LayerKind::Block, Site::Output, &out);
        Ok(out)
    }

    /// `relu(y + s)`, in `y`'s memory.
    fn add_relu(&self, y: Tensor4, s: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        self.add_relu_mapped(Pending::ready(y), s, None, probe)
    }
}

impl Layer for Residual {
    type Input = Tensor4;
    type Output = Tensor4;

    fn forward_with(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        let y = self.body.forward_with(x, probe)?;
        match &self.shortcut {
            Some((name, sc)) => {
                let s = probe.scoped(name, |p| sc.forward_with(x, p))?;
                let out = self.add_relu(y, &s, probe);
                recycle(s);
                out
            }
            None => self.add_relu(y, x, probe),
        }
    }

    fn forward_train(
        &mut self,
        x: &Tensor4,
        update: NormUpdate,
        probe: &mut Probe<'_>,
    ) -> Result<Tensor4> {
        if probe.schedule() == Schedule::Fused {
            // The batch norms ending the body and the shortcut are applied in the add.
            let y = self.body.train_pending(x, update, probe)?;
            return match &mut self.shortcut {
                Some((name, sc)) => {
                    let s = probe.scoped(name, |p| sc.train_pending(x, update, p))?;
                    let out = self.add_relu_mapped(y, &s.raw, s.map.as_ref(), probe);
                    recycle(s.raw);
                    out
                }
                None => self.add_relu_mapped(y, x, None, probe),
            };
        }
        let y = self.body.forward_train(x, update, probe)?;
        match &mut self.shortcut {
            Some((name, sc)) => {
                let s = probe.scoped(name, |p| sc.forward_train(x, update, p))?;
                let out = self.add_relu(y, &s, probe);
                recycle(s);
                out
            }
            None => self.add_relu(y, x, probe),
        }
    }
}

impl Params for Residual {
    fn visit(&self, v: &mut Visitor<'_>) {
        v.child("", &self.body);
        if let Some((name, sc)) = &self.shortcut {
            v.child(name, sc);
        }
    }

    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        v.child("", &mut self.body);
        if let Some((name, sc)) = &mut self.shortcut {
            v.child(name, sc);
        }
    }
}
