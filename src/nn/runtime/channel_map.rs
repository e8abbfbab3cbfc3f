//! Per-channel affine maps `y = relu?(scale·x + shift)`: a batch norm's output, in
//! eval or calibration mode, waiting to be applied where it is next read.

use ndarray::Array4;
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
    /// (on the calling thread alone inside [`super::serially`]).
    pub fn apply_in_place(&self, y: &mut Array4<f32>) {
        let (_, c, h, w) = y.dim();
        let spatial = (h * w).max(1);
        let ys = y.as_slice_mut().expect("standard layout");
        let plane = |(i, plane): (usize, &mut [f32])| self.apply_to_plane(i % c, plane);
        if super::threads() > 1 {
            ys.par_chunks_mut(spatial).enumerate().for_each(plane);
        } else {
            ys.chunks_mut(spatial).enumerate().for_each(plane);
        }
    }
}

/// `max(v, 0)` as PyTorch's ReLU computes it: NaN stays NaN (`f32::max` would
/// return 0), and so on every kernel level (x86's `max(0, v)`, NEON's select).
#[inline(always)]
pub(crate) fn relu(v: f32) -> f32 {
    if 0.0 > v {
        0.0
    } else {
        v
    }
}

/// `values = relu?(values·a + b)`, in place (multiply, then add: every layer rounds
/// its affine maps this way, so fused and separate passes agree to the bit).
pub(crate) fn affine_in_place(values: &mut [f32], a: f32, b: f32, clamp: bool) {
    if clamp {
        values.iter_mut().for_each(|v| *v = relu(*v * a + b));
    } else {
        values.iter_mut().for_each(|v| *v = *v * a + b);
    }
}

/// `to = relu?(from·a + b)`, value by value, as [`affine_in_place`].
pub(crate) fn affine_into(from: &[f32], to: &mut [f32], a: f32, b: f32, clamp: bool) {
    let pairs = to.iter_mut().zip(from);
    if clamp {
        pairs.for_each(|(t, &v)| *t = relu(v * a + b));
    } else {
        pairs.for_each(|(t, &v)| *t = v * a + b);
    }
}
