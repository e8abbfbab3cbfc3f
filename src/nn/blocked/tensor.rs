//! A feature map in channel blocks, `[N][⌈C/16⌉][H][W][16]`.

use crate::nn::kernels::blocked::{from_blocked, to_blocked, Blocked};
use crate::nn::kernels::LANES;
use crate::nn::runtime::{buffer, overwritten, recycle_buffer};
use crate::nn::Tensor4;

/// A feature map of `[N, C, H, W]` laid out in blocks of sixteen channels,
/// `[N][⌈C/16⌉][H][W][16]`: what the engine's blocked kernels read and write. The
/// lanes past `C` in the last block hold finite values that no kernel carries into a
/// real channel (packed weights are zero there).
///
/// Its memory comes from, and goes back to, the thread's activation pool.
#[derive(Debug)]
pub struct BlockedTensor {
    shape: Blocked,
    /// At least `shape.len()` values; the tensor is the first `shape.len()`.
    data: Vec<f32>,
}

impl BlockedTensor {
    /// A tensor of `shape` whose every value the caller writes: pooled memory, with
    /// whatever values a previous tensor left there.
    pub(crate) fn overwritten(shape: Blocked) -> Self {
        BlockedTensor {
            shape,
            data: buffer(shape.len()),
        }
    }

    /// `x` (NCHW) in blocks.
    pub(crate) fn from_nchw(x: &Tensor4) -> Self {
        let (n, c, h, w) = x.dim();
        let mut y = Self::overwritten(Blocked { n, c, h, w });
        let x = x.as_standard_layout();
        to_blocked(
            x.as_slice().expect("standard layout"),
            y.shape,
            y.values_mut(),
        );
        y
    }

    /// The tensor in NCHW.
    pub(crate) fn to_nchw(&self) -> Tensor4 {
        let s = self.shape;
        let mut y = overwritten((s.n, s.c, s.h, s.w));
        from_blocked(self.values(), s, y.as_slice_mut().expect("fresh tensor"));
        y
    }

    /// The shape, as the kernels take it.
    pub(crate) fn blocked_shape(&self) -> Blocked {
        self.shape
    }

    /// The NCHW shape, as errors name it.
    pub(crate) fn dims(&self) -> [usize; 4] {
        let s = self.shape;
        [s.n, s.c, s.h, s.w]
    }

    /// The values, `[N][⌈C/16⌉][H][W][16]`.
    pub(crate) fn values(&self) -> &[f32] {
        &self.data[..self.shape.len()]
    }

    /// The values, mutably.
    pub(crate) fn values_mut(&mut self) -> &mut [f32] {
        let len = self.shape.len();
        &mut self.data[..len]
    }

    /// Each channel's mean over the positions, `[N × C]` (sums in f64, as
    /// [`crate::stats`] sums a plane), in parallel over the images.
    pub(crate) fn channel_means(&self) -> Vec<f32> {
        use rayon::prelude::*;
        let s = self.shape;
        let (hw, blocks) = (s.h * s.w, s.blocks());
        let mut means = vec![0.0; s.n * s.c];
        if s.c == 0 {
            return means;
        }
        let images = self.values().par_chunks(self.image_len().max(1));
        means
            .par_chunks_mut(s.c)
            .zip(images)
            .for_each(|(means, image)| {
                for cb in 0..blocks {
                    let mut sums = [0f64; LANES];
                    for p in image[cb * hw * LANES..][..hw * LANES].chunks_exact(LANES) {
                        for (sum, &v) in sums.iter_mut().zip(p) {
                            *sum += v as f64;
                        }
                    }
                    let lanes = (s.c - cb * LANES).min(LANES);
                    for (m, sum) in means[cb * LANES..][..lanes].iter_mut().zip(sums) {
                        *m = (sum / hw.max(1) as f64) as f32;
                    }
                }
            });
        means
    }

    /// Values of one image.
    pub(crate) fn image_len(&self) -> usize {
        self.shape.blocks() * self.shape.h * self.shape.w * LANES
    }
}

impl Clone for BlockedTensor {
    fn clone(&self) -> Self {
        let mut y = Self::overwritten(self.shape);
        y.values_mut().copy_from_slice(self.values());
        y
    }
}

impl Drop for BlockedTensor {
    fn drop(&mut self) {
        recycle_buffer(std::mem::take(&mut self.data));
    }
}
