//! Composition: a named chain of layers, and a residual connection.

use super::{emit4, recycle, BoxedLayer, Tensor4};
use crate::error::{Error, Result};
use crate::layer::{visit_child, visit_child_mut, visit_child_norms, visit_child_norms_mut};
use crate::layer::{Layer, LayerKind, NormStats};
use crate::layer::{NormStatsMut, NormUpdate, Param, ParamMut, Probe, Site};
use ndarray::Zip;

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
    layers: Vec<(String, BoxedLayer)>,
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
        self.layers.push((name.into(), Box::new(layer)));
        self
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
        let mut y = probe.scoped(first_name, |p| first.forward_with(x, p))?;
        for (name, layer) in rest {
            let next = probe.scoped(name, |p| layer.forward_with(&y, p))?;
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
        let Some(((first_name, first), rest)) = self.layers.split_first_mut() else {
            return Ok(x.clone());
        };
        let mut y = probe.scoped(first_name, |p| first.forward_train(x, update, p))?;
        for (name, layer) in rest {
            let next = probe.scoped(name, |p| layer.forward_train(&y, update, p))?;
            recycle(std::mem::replace(&mut y, next));
        }
        Ok(y)
    }

    fn visit_params(&self, f: &mut dyn FnMut(Param<'_>)) {
        for (name, layer) in &self.layers {
            visit_child(layer.as_ref(), name, f);
        }
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(ParamMut<'_>)) {
        for (name, layer) in &mut self.layers {
            visit_child_mut(layer.as_mut(), name, f);
        }
    }

    fn visit_norms(&self, f: &mut dyn FnMut(&str, NormStats<'_>)) {
        for (name, layer) in &self.layers {
            visit_child_norms(layer.as_ref(), name, f);
        }
    }

    fn visit_norms_mut(&mut self, f: &mut dyn FnMut(&str, NormStatsMut<'_>)) {
        for (name, layer) in &mut self.layers {
            visit_child_norms_mut(layer.as_mut(), name, f);
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

    fn add_relu(&self, mut y: Tensor4, s: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        if y.dim() != s.dim() {
            return Err(Error::shape(
                format!("{} (residual add)", probe.path()),
                format!("the body's output shape {:?}", y.shape()),
                s.shape(),
            ));
        }
        let add_relu = |a: &mut f32, &b: &f32| *a = (*a + b).max(0.0);
        if super::serial::threads() > 1 {
            Zip::from(&mut y).and(s).par_for_each(add_relu);
        } else {
            Zip::from(&mut y).and(s).for_each(add_relu);
        }
        emit4(probe, LayerKind::Block, Site::Output, &y);
        Ok(y)
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

    fn visit_params(&self, f: &mut dyn FnMut(Param<'_>)) {
        self.body.visit_params(f);
        if let Some((name, sc)) = &self.shortcut {
            visit_child(sc, name, f);
        }
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(ParamMut<'_>)) {
        self.body.visit_params_mut(f);
        if let Some((name, sc)) = &mut self.shortcut {
            visit_child_mut(sc, name, f);
        }
    }

    fn visit_norms(&self, f: &mut dyn FnMut(&str, NormStats<'_>)) {
        self.body.visit_norms(f);
        if let Some((name, sc)) = &self.shortcut {
            visit_child_norms(sc, name, f);
        }
    }

    fn visit_norms_mut(&mut self, f: &mut dyn FnMut(&str, NormStatsMut<'_>)) {
        self.body.visit_norms_mut(f);
        if let Some((name, sc)) = &mut self.shortcut {
            visit_child_norms_mut(sc, name, f);
        }
    }
}
