//! A residual connection: `post(body(x) + shortcut(x))`.

use super::pending::Pending;
use super::{emit4, Sequential, Tensor4};
use crate::error::{Error, Result};
use crate::layer::{Layer, LayerKind, Params, Probe, Schedule, Site};
use crate::layer::{Visitor, VisitorMut};
use crate::nn::blocked::{BlockedLayer, Pass, Value};
use crate::nn::runtime::{recycle, relu, Activation, ChannelMap};
use rayon::prelude::*;
use std::borrow::Cow;

/// A residual connection followed by an activation: `post(body(x) + shortcut(x))`,
/// where the shortcut is the identity or a named layer chain (torchvision's
/// `downsample`) and `post` is ReLU (a ResNet block) unless set otherwise
/// ([`Activation::Identity`] for an inverted residual).
///
/// The body's children are named at the block's level (`conv1`, `bn1`, ...), the
/// shortcut's under its own name (`downsample.0`, `downsample.1`), exactly as in a
/// torchvision `BasicBlock` or `Bottleneck`. The block reports its output as a tap of
/// kind [`LayerKind::Block`].
///
/// ```
/// use reflow::layer::Layer;
/// use reflow::nn::{Activation, BatchNorm2d, Residual, Sequential};
/// use ndarray::Array4;
///
/// let body = Sequential::new().push("bn", BatchNorm2d::new(2, 1e-5));
/// let block = Residual::identity(body).with_post(Activation::Identity);
/// let x = Array4::from_elem((1, 2, 3, 3), -1.0);
/// // bn in eval mode is (nearly) the identity: x + x.
/// assert!((block.forward(&x)?[[0, 1, 2, 2]] + 2.0).abs() < 1e-4);
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug)]
pub struct Residual {
    body: Sequential,
    shortcut: Option<(String, Sequential)>,
    post: Activation,
}

impl Residual {
    /// `relu(body(x) + x)`.
    pub fn identity(body: Sequential) -> Self {
        Residual {
            body,
            shortcut: None,
            post: Activation::Relu,
        }
    }

    /// `relu(body(x) + shortcut(x))`, with the shortcut's parameters under `name`.
    pub fn with_shortcut(body: Sequential, name: impl Into<String>, shortcut: Sequential) -> Self {
        Residual {
            body,
            shortcut: Some((name.into(), shortcut)),
            post: Activation::Relu,
        }
    }

    /// The block with `post` after the add instead of ReLU.
    pub fn with_post(mut self, post: Activation) -> Self {
        self.post = post;
        self
    }

    /// The activation after the add.
    pub fn post(&self) -> Activation {
        self.post
    }

    /// `post(map_y(y) + map_s(s))`, in `y`'s memory: the residual add, with the body's
    /// and the shortcut's pending batch norms applied on the way (each map, then the
    /// sum, rounded as the separate passes would).
    fn add_mapped(
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
        let post = self.post;
        // Channel `ch`'s map as (scale, shift, activation); the identity when there is
        // none.
        let affine = |m: Option<&ChannelMap>, ch: usize| {
            m.map_or((1.0, 0.0, Activation::Identity), |m| {
                (m.scale[ch], m.shift[ch], m.activation)
            })
        };
        let plane = |(i, (o, s)): (usize, (&mut [f32], &[f32]))| {
            let ((a, b, f_y), (a_s, b_s, f_s)) =
                (affine(map.as_ref(), i % c), affine(s_map, i % c));
            let linear = (f_y, f_s) == (Activation::Identity, Activation::Identity);
            let pairs = o.iter_mut().zip(s);
            match (map.is_none() && s_map.is_none(), linear, post) {
                // (v·1 + 0 is v: without a map, the values are added as they are.)
                (true, _, Activation::Relu) => pairs.for_each(|(o, &s)| *o = relu(*o + s)),
                (true, _, Activation::Identity) => pairs.for_each(|(o, &s)| *o += s),
                (false, true, Activation::Identity) => {
                    pairs.for_each(|(o, &s)| *o = (*o * a + b) + (s * a_s + b_s))
                }
                (true, _, _) => pairs.for_each(|(o, &s)| *o = post.apply(*o + s)),
                (false, true, Activation::Relu) => {
                    pairs.for_each(|(o, &s)| *o = relu((*o * a + b) + (s * a_s + b_s)))
                }
                _ => pairs.for_each(|(o, &s)| {
                    *o = post.apply(f_y.apply(*o * a + b) + f_s.apply(s * a_s + b_s))
                }),
            }
        };
        let (os, ss) = (
            out.as_slice_mut().expect("standard layout"),
            s.as_slice().expect("standard layout"),
        );
        if map.is_none() && s_map.is_none() {
            // The plain add (every eval pass): one vectorised pass.
            crate::nn::engine::add_activate(os, ss, post, probe.exec());
        } else if probe.exec().threads() > 1 {
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

    /// `post(y + s)`, in `y`'s memory.
    fn add(&self, y: Tensor4, s: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        self.add_mapped(Pending::ready(y), s, None, probe)
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

impl BlockedLayer for Residual {
    fn forward_blocked<'a>(&self, x: Value<'a>, pass: &mut Pass<'_, '_>) -> Result<Value<'a>> {
        let x = x.into_blocked(pass)?;
        let input = || Value::Blocked(Cow::Borrowed(&*x));
        let shortcut = match &self.shortcut {
            Some((name, sc)) => {
                let s = pass.scoped(name, |p| sc.forward_blocked(input(), p))?;
                Some(s.into_blocked(pass)?.into_owned())
            }
            None => None,
        };
        let r = shortcut.as_ref().unwrap_or(&x);
        let y = self
            .body
            .forward_blocked_add(input(), Some((r, self.post)), pass)?;
        Ok(y.into_owned())
    }
}

impl Layer for Residual {
    type Input = Tensor4;
    type Output = Tensor4;

    fn blocked(&self) -> Option<&dyn BlockedLayer> {
        Some(self)
    }

    fn forward_with(&self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        let y = self.body.forward_with(x, probe)?;
        match &self.shortcut {
            Some((name, sc)) => {
                let s = probe.scoped(name, |p| sc.forward_with(x, p))?;
                let out = self.add(y, &s, probe);
                recycle(s);
                out
            }
            None => self.add(y, x, probe),
        }
    }

    fn forward_train(&mut self, x: &Tensor4, probe: &mut Probe<'_>) -> Result<Tensor4> {
        if probe.schedule() == Schedule::Fused {
            // The batch norms ending the body and the shortcut are applied in the add.
            let y = self.body.train_pending(x, probe)?;
            return match &mut self.shortcut {
                Some((name, sc)) => {
                    let s = probe.scoped(name, |p| sc.train_pending(x, p))?;
                    let out = self.add_mapped(y, &s.raw, s.map.as_ref(), probe);
                    recycle(s.raw);
                    out
                }
                None => self.add_mapped(y, x, None, probe),
            };
        }
        let y = self.body.forward_train(x, probe)?;
        match &mut self.shortcut {
            Some((name, sc)) => {
                let s = probe.scoped(name, |p| sc.forward_train(x, p))?;
                let out = self.add(y, &s, probe);
                recycle(s);
                out
            }
            None => self.add(y, x, probe),
        }
    }
}
