//! A layer's unfolded input (PyTorch's `unfold`), a few output rows at a time: what
//! the activation-aware pruners sum their statistics over.

use crate::layer::{ActivationView, ConvWindow};
use rayon::prelude::*;
use std::ops::Range;

/// The input of one convolution or linear layer seen as columns: one per image and
/// output position, `(c, ky, kx)` down each column for the channels `c` of one
/// group, zero in the padding. A layer reported without a window (a linear layer)
/// has one column per image, its features down it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unfold<'a> {
    x: ActivationView<'a>,
    window: ConvWindow,
    /// Output rows and columns per image.
    out: [usize; 2],
}

impl<'a> Unfold<'a> {
    /// `x` under `window` (`None`: one column per image); an error names the
    /// mismatch when the window's input size is not the view's.
    pub fn new(x: ActivationView<'a>, window: Option<ConvWindow>) -> Result<Self, String> {
        let window = window.unwrap_or(ConvWindow {
            kernel: [1, 1],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            size: [x.spatial, 1],
        });
        if window.size[0] * window.size[1] != x.spatial {
            return Err(format!(
                "{} values per plane, not {:?}",
                x.spatial, window.size
            ));
        }
        let groups = window.groups.max(1);
        if !x.channels.is_multiple_of(groups) {
            return Err(format!(
                "{} channels do not split into {groups} groups",
                x.channels
            ));
        }
        let out = [0, 1].map(|a| {
            let span = window.dilation[a] * (window.kernel[a] - 1) + 1;
            let padded = window.size[a] + 2 * window.padding[a];
            match padded >= span {
                true => (padded - span) / window.stride[a] + 1,
                false => 0,
            }
        });
        Ok(Unfold { x, window, out })
    }

    /// Channel groups.
    pub fn groups(&self) -> usize {
        self.window.groups.max(1)
    }

    /// Values down one column: `channels / groups · kh · kw`.
    pub fn rows(&self) -> usize {
        self.x.channels / self.groups() * self.window.kernel[0] * self.window.kernel[1]
    }

    /// Output rows over the whole batch (`batch · out_h`); output row `line` holds
    /// `out_w` columns.
    pub fn lines(&self) -> usize {
        self.x.batch * self.out[0]
    }

    /// Columns per output row.
    pub fn line_len(&self) -> usize {
        self.out[1]
    }

    /// Columns over the whole batch.
    pub fn columns(&self) -> usize {
        self.lines() * self.line_len()
    }

    /// Writes group `g`'s columns of output rows `lines` into `buf`, row-major
    /// `rows × (lines.len() · out_w)`: row `(c, ky, kx)` holds the value each of those
    /// output positions reads through weight `[·, c, ky, kx]`. On every thread when
    /// `parallel`.
    pub fn fill<T>(&self, g: usize, lines: Range<usize>, buf: &mut [T], parallel: bool)
    where
        T: From<f32> + Copy + Send,
    {
        let w = &self.window;
        let [kh, kw] = w.kernel;
        let [h, wd] = w.size;
        let [ho, wo] = self.out;
        let len = lines.len() * wo;
        let channels = self.x.channels / self.groups();
        debug_assert_eq!(buf.len(), self.rows() * len);
        if len == 0 {
            return;
        }
        let fill_row = |(r, row): (usize, &mut [T])| {
            let (c, ky, kx) = (r / (kh * kw), r / kw % kh, r % kw);
            for (line, out) in lines.clone().zip(row.chunks_mut(wo)) {
                let (n, oy) = (line / ho, line % ho);
                let plane = self.x.plane(n, g * channels + c);
                let iy = (oy * w.stride[0] + ky * w.dilation[0]).checked_sub(w.padding[0]);
                let Some(iy) = iy.filter(|&iy| iy < h) else {
                    out.fill(T::from(0.0));
                    continue;
                };
                let input = &plane[iy * wd..(iy + 1) * wd];
                for (ox, v) in out.iter_mut().enumerate() {
                    let ix = (ox * w.stride[1] + kx * w.dilation[1]).checked_sub(w.padding[1]);
                    *v = T::from(match ix {
                        Some(ix) if ix < wd => input[ix],
                        _ => 0.0,
                    });
                }
            }
        };
        match parallel {
            true => buf.par_chunks_mut(len).enumerate().for_each(fill_row),
            false => buf.chunks_mut(len).enumerate().for_each(fill_row),
        }
    }
}
