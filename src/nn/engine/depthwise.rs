//! Depthwise convolutions (one group per channel, one filter each): MobileNet's and
//! EfficientNet's 3×3 and 5×5, stride 1 or 2, computed plane by plane.
//!
//! Each channel's input is laid out zero-padded and split by column phase (for
//! stride `s`, the columns `j ≡ p (mod s)` of phase `p` side by side), so that every
//! tap of the filter reads a contiguous run of the row it needs: an output row is a
//! sum of `kh · kw` scaled runs, which the compiler vectorises for every instruction
//! set.

use super::{Conv2dConfig, Epilogue, Shapes};
use crate::nn::runtime::{Activation, ChannelMap, Threads};
use crate::stats::plane_moments;
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
            (Some(m), Threads::All) => y
                .par_chunks_mut(plane_out)
                .zip(x.par_chunks(plane_in))
                .zip(m.par_iter_mut())
                .enumerate()
                .for_each(|(ch, ((yp, xp), m))| *m = self.plane(ch, xp, yp, true)),
            (None, Threads::All) => y
                .par_chunks_mut(plane_out)
                .zip(x.par_chunks(plane_in))
                .enumerate()
                .for_each(|(ch, (yp, xp))| {
                    self.plane(ch, xp, yp, false);
                }),
            (Some(m), Threads::One) => {
                for ((ch, (yp, xp)), m) in planes.zip(m.iter_mut()) {
                    *m = self.plane(ch, xp, yp, true);
                }
            }
            (None, Threads::One) => {
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
        let Shapes { h, w, wo, .. } = self.shape;
        let ([kh, kw], [s_h, s_w]) = (c.kernel, c.stride);
        let ([ph, pw], [dh, dw]) = (c.padding, c.dilation);
        let (hp, wp) = (h + 2 * ph, w + 2 * pw);
        let phase = wp.div_ceil(s_w);
        let row_len = s_w * phase;
        let filter = &self.weight[ch * kh * kw..(ch + 1) * kh * kw];
        SCRATCH.with_borrow_mut(|(padded, mapped)| {
            padded.clear();
            padded.resize(hp * row_len, 0.0);
            mapped.resize(w, 0.0);
            for (i, row) in x.chunks_exact(w).enumerate() {
                let row = match self.input {
                    Some(map) => {
                        map.map_plane(ch, row, mapped);
                        &mapped[..]
                    }
                    None => row,
                };
                let base = (i + ph) * row_len;
                for (j, &v) in row.iter().enumerate() {
                    let jj = j + pw;
                    padded[base + (jj % s_w) * phase + jj / s_w] = v;
                }
            }
            for (oi, out) in y.chunks_exact_mut(wo).enumerate() {
                out.fill(0.0);
                for ki in 0..kh {
                    let base = (oi * s_h + ki * dh) * row_len;
                    for kj in 0..kw {
                        let off = kj * dw;
                        let start = base + (off % s_w) * phase + off / s_w;
                        let tap = filter[ki * kw + kj];
                        let src = &padded[start..start + wo];
                        out.iter_mut().zip(src).for_each(|(o, &v)| *o += tap * v);
                    }
                }
            }
        });
        let (a, b) = self.epilogue.affine(ch, self.bias);
        if !moments {
            self.epilogue.activation.map_in_place(y, a, b);
            return (0.0, 0.0);
        }
        Activation::Identity.map_in_place(y, a, b);
        let m = plane_moments(y);
        self.epilogue.activation.apply_in_place(y);
        m
    }
}
