//! Depthwise convolutions (one group per channel, one filter each): MobileNet's and
//! EfficientNet's 3×3 and 5×5, stride 1 or 2, plane by plane with the kernel of
//! [`crate::nn::kernels::plain`], vectorised for the call's instruction set.

use super::{Conv2dConfig, Epilogue, Shapes};
use crate::nn::kernels::plain::{depthwise_plane, DepthwisePlane};
use crate::nn::kernels::Isa;
use crate::nn::runtime::{ChannelMap, Threads};
use rayon::prelude::*;
use std::cell::RefCell;

/// Whether `c` is depthwise with one filter per channel.
pub(crate) fn is_depthwise(c: &Conv2dConfig) -> bool {
    c.groups > 1 && c.groups == c.in_channels && c.out_channels == c.in_channels
}

/// What every plane of one call shares.
pub(super) struct Depthwise<'a> {
    pub config: &'a Conv2dConfig,
    pub shape: Shapes,
    /// `[C, 1, kh, kw]`.
    pub weight: &'a [f32],
    pub bias: Option<&'a [f32]>,
    /// The map applied to the input as it is read.
    pub input: Option<&'a ChannelMap>,
    pub epilogue: &'a Epilogue<'a>,
    pub isa: Isa,
}

thread_local! {
    /// The padded, phase-split plane and one mapped input row.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

impl Depthwise<'_> {
    /// One image: `x` `[C, h, w]` into `y` `[C, ho, wo]`, filling `moments` (`[C]`)
    /// when given, in parallel over the channels when `threads` allows.
    pub(super) fn image(
        &self,
        x: &[f32],
        y: &mut [f32],
        moments: Option<&mut [(f64, f64)]>,
        threads: Threads,
    ) {
        let sh = self.shape;
        let (plane_in, plane_out) = ((sh.h * sh.w).max(1), (sh.ho * sh.wo).max(1));
        let planes = y.chunks_mut(plane_out).zip(x.chunks(plane_in)).enumerate();
        match (moments, threads) {
            (Some(m), Threads::Rayon) => y
                .par_chunks_mut(plane_out)
                .zip(x.par_chunks(plane_in))
                .zip(m.par_iter_mut())
                .enumerate()
                .for_each(|(ch, ((yp, xp), m))| *m = self.plane(ch, xp, yp, true)),
            (None, Threads::Rayon) => y
                .par_chunks_mut(plane_out)
                .zip(x.par_chunks(plane_in))
                .enumerate()
                .for_each(|(ch, (yp, xp))| {
                    self.plane(ch, xp, yp, false);
                }),
            (Some(m), Threads::Seq) => {
                for ((ch, (yp, xp)), m) in planes.zip(m.iter_mut()) {
                    *m = self.plane(ch, xp, yp, true);
                }
            }
            (None, Threads::Seq) => {
                for (ch, (yp, xp)) in planes {
                    self.plane(ch, xp, yp, false);
                }
            }
        }
    }

    /// Channel `ch`: the convolution of plane `x` into `y`, then the epilogue; returns
    /// the moments of the plane before the activation when `moments` is set.
    fn plane(&self, ch: usize, x: &[f32], y: &mut [f32], moments: bool) -> (f64, f64) {
        let c = self.config;
        let sh = self.shape;
        let geometry = c.geometry([sh.h, sh.w], [sh.ho, sh.wo]);
        let taps = c.kernel[0] * c.kernel[1];
        SCRATCH.with_borrow_mut(|(padded, mapped)| {
            let plane = DepthwisePlane {
                geometry: &geometry,
                x,
                y,
                filter: &self.weight[ch * taps..(ch + 1) * taps],
                input: self.input.map(|m| (m, ch)),
                affine: self.epilogue.affine(ch, self.bias),
                activation: self.epilogue.activation,
                moments,
                padded,
                mapped,
            };
            depthwise_plane(self.isa, plane)
        })
    }
}
