//! Per-channel affine maps `y = f(scale·x + shift)`: a batch norm's output (and its
//! activation), in eval or calibration mode, waiting to be applied where it is next
//! read.

use super::Activation;
use ndarray::Array4;
use rayon::prelude::*;

/// `y = activation(scale·x + shift)` per channel of an NCHW tensor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChannelMap {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
    pub activation: Activation,
}

impl ChannelMap {
    /// Applies channel `c`'s map to every value of `plane`, in place.
    #[inline(always)]
    pub fn apply_to_plane(&self, c: usize, plane: &mut [f32]) {
        self.activation
            .map_in_place(plane, self.scale[c], self.shift[c]);
    }

    /// `to = map(from)` for channel `c`, value by value.
    #[inline(always)]
    pub fn map_plane(&self, c: usize, from: &[f32], to: &mut [f32]) {
        self.activation
            .map_into(from, to, self.scale[c], self.shift[c]);
    }

    /// The map split into `groups` maps of consecutive channels, each indexed from 0.
    pub fn split(&self, groups: usize) -> Vec<ChannelMap> {
        let per = self.scale.len() / groups.max(1);
        (0..groups)
            .map(|g| ChannelMap {
                scale: self.scale[g * per..(g + 1) * per].to_vec(),
                shift: self.shift[g * per..(g + 1) * per].to_vec(),
                activation: self.activation,
            })
            .collect()
    }

    /// Applies the map to every value of `y`, in place, in parallel over the planes
    /// when `threads` allows.
    pub fn apply_in_place(&self, y: &mut Array4<f32>, threads: usize) {
        let (_, c, h, w) = y.dim();
        let spatial = (h * w).max(1);
        let ys = y.as_slice_mut().expect("standard layout");
        let plane = |(i, plane): (usize, &mut [f32])| self.apply_to_plane(i % c, plane);
        if threads > 1 {
            ys.par_chunks_mut(spatial).enumerate().for_each(plane);
        } else {
            ys.chunks_mut(spatial).enumerate().for_each(plane);
        }
    }
}
