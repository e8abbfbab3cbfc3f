//! Batch-norm outputs of a calibration pass, applied where they are next read.
//!
//! In calibration mode a batch norm can only normalise once the whole batch has been
//! through the layer before it. Instead of a pass of its own over that output, the
//! per-channel map `y = relu?(scale·x + shift)` can travel with the raw tensor to
//! whatever reads it next: the next convolution applies it as it loads its input, a
//! residual add as it adds. [`Pending`] is that pair.

use super::Tensor4;
use rayon::prelude::*;

/// `y = relu?(scale·x + shift)` per channel of an NCHW tensor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChannelMap {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
    pub relu: bool,
}

impl ChannelMap {
    /// Applies channel `c`'s map to every value of `plane`, in place.
    pub fn apply_to_plane(&self, c: usize, plane: &mut [f32]) {
        affine_in_place(plane, self.scale[c], self.shift[c], self.relu);
    }

    /// `to = map(from)` for channel `c`, value by value.
    pub fn map_plane(&self, c: usize, from: &[f32], to: &mut [f32]) {
        affine_into(from, to, self.scale[c], self.shift[c], self.relu);
    }

    /// Applies the map to every value of `y`, in place, in parallel over the planes
    /// (on the calling thread alone inside [`super::serial::serially`]).
    pub fn apply_in_place(&self, y: &mut Tensor4) {
        let (_, c, h, w) = y.dim();
        let spatial = (h * w).max(1);
        let ys = y.as_slice_mut().expect("standard layout");
        let plane = |(i, plane): (usize, &mut [f32])| self.apply_to_plane(i % c, plane);
        if super::serial::threads() > 1 {
            ys.par_chunks_mut(spatial).enumerate().for_each(plane);
        } else {
            ys.chunks_mut(spatial).enumerate().for_each(plane);
        }
    }
}

/// `values = relu?(values·a + b)`, in place (multiply, then add: every layer rounds
/// its affine maps this way, so fused and separate passes agree to the bit).
pub(crate) fn affine_in_place(values: &mut [f32], a: f32, b: f32, relu: bool) {
    if relu {
        values.iter_mut().for_each(|v| *v = (*v * a + b).max(0.0));
    } else {
        values.iter_mut().for_each(|v| *v = *v * a + b);
    }
}

/// `to = relu?(from·a + b)`, value by value, as [`affine_in_place`].
pub(crate) fn affine_into(from: &[f32], to: &mut [f32], a: f32, b: f32, relu: bool) {
    let pairs = to.iter_mut().zip(from);
    if relu {
        pairs.for_each(|(t, &v)| *t = (v * a + b).max(0.0));
    } else {
        pairs.for_each(|(t, &v)| *t = v * a + b);
    }
}

/// A tensor and, when its batch norm has not been applied yet, the map that applies
/// it.
#[derive(Debug)]
pub(crate) struct Pending {
    pub raw: Tensor4,
    pub map: Option<ChannelMap>,
}

impl Pending {
    /// A tensor with nothing left to apply.
    pub fn ready(tensor: Tensor4) -> Self {
        Pending {
            raw: tensor,
            map: None,
        }
    }

    /// The tensor with its map applied.
    pub fn into_tensor(self) -> Tensor4 {
        let mut y = self.raw;
        if let Some(map) = &self.map {
            map.apply_in_place(&mut y);
        }
        y
    }
}
