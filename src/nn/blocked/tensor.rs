//! A feature map in channel blocks, `[N][⌈C/16⌉][H][W][16]`.

use crate::nn::kernels::blocked::{each_chunk, from_blocked, to_blocked, Blocked};
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
    /// [`crate::stats`] sums a plane), in parallel over the images' blocks.
    pub(crate) fn channel_means(&self) -> Vec<f32> {
        let s = self.shape;
        let (hw, blocks) = (s.h * s.w, s.blocks());
        if s.c == 0 {
            return Vec::new();
        }
        // Per image and block, sixteen lanes (the last block's padding lanes too).
        let mut lanes = vec![0.0; s.n * blocks * LANES];
        let per_block = lanes.chunks_mut(LANES).collect();
        each_chunk(per_block, rayon::current_num_threads(), |i, means| {
            let block = &self.values()[i * hw * LANES..][..hw * LANES];
            // Runs of 32 positions summed in f32, in four independent chains of
            // sixteen lanes, then added in f64.
            let mut sums = [0f64; LANES];
            for run in block.chunks(32 * LANES) {
                let mut part = [[0f32; LANES]; 4];
                let quads = run.chunks_exact(4 * LANES);
                let rest = quads.remainder();
                for quad in quads {
                    for (k, part) in part.iter_mut().enumerate() {
                        let p: &[f32; LANES] = quad[k * LANES..][..LANES].try_into().expect("16");
                        for l in 0..LANES {
                            part[l] += p[l];
                        }
                    }
                }
                for p in rest.chunks_exact(LANES) {
                    for l in 0..LANES {
                        part[0][l] += p[l];
                    }
                }
                for (l, sum) in sums.iter_mut().enumerate() {
                    *sum += ((part[0][l] + part[1][l]) + (part[2][l] + part[3][l])) as f64;
                }
            }
            for (m, sum) in means.iter_mut().zip(sums) {
                *m = (sum / hw.max(1) as f64) as f32;
            }
        });
        let mut means = Vec::with_capacity(s.n * s.c);
        for image in lanes.chunks(blocks * LANES).take(s.n) {
            means.extend_from_slice(&image[..s.c]);
        }
        means
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
