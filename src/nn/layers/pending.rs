//! Batch-norm outputs of a calibration pass, applied where they are next read.
//!
//! In calibration mode a batch norm can only normalise once the whole batch has been
//! through the layer before it. Instead of a pass of its own over that output, the
//! per-channel map `y = activation(scale·x + shift)` can travel with the raw tensor to
//! whatever reads it next: the next convolution applies it as it loads its input, a
//! residual add as it adds. [`Pending`] is that pair.

use super::Tensor4;
use crate::nn::runtime::ChannelMap;

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

    /// The tensor with its map applied (over `threads`).
    pub fn into_tensor(self, threads: usize) -> Tensor4 {
        let mut y = self.raw;
        if let Some(map) = &self.map {
            map.apply_in_place(&mut y, threads);
        }
        y
    }
}
