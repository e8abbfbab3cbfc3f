//! The one geometry every kernel takes: a convolution's (or a pooling window's)
//! channels, groups, window and sizes, never a layer's configuration.

use super::LANES;

/// One convolution, or one pooling window, as the kernels see it.
///
/// The NCHW image kernels ([`super::direct`], [`super::winograd`]) take one group of
/// it (`groups == 1`, [`Geometry::group`]); the depthwise and pooling kernels read
/// only the window and the sizes; the sparse kernel's packed weights keep the
/// channels, groups and window, and each call brings its own sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Input channels (of all groups).
    pub in_channels: usize,
    /// Output channels (of all groups).
    pub out_channels: usize,
    /// Channel groups; both channel counts divide by it.
    pub groups: usize,
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// Zero rows and columns on each side, `[ph, pw]`.
    pub padding: [usize; 2],
    /// `[dh, dw]`.
    pub dilation: [usize; 2],
    /// Input `[h, w]`.
    pub size: [usize; 2],
    /// Output `[ho, wo]`.
    pub out_size: [usize; 2],
}

impl Geometry {
    /// A window of `kernel` at `stride` with `padding` over `channels` planes of
    /// `size` into `out_size` (one group, no dilation): a pooling window, or the
    /// window of a convolution whose channels the caller passes apart.
    pub(crate) fn window(
        channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        size: [usize; 2],
        out_size: [usize; 2],
    ) -> Self {
        Geometry {
            in_channels: channels,
            out_channels: channels,
            groups: 1,
            kernel,
            stride,
            padding,
            dilation: [1, 1],
            size,
            out_size,
        }
    }

    /// The output `[ho, wo]` that the window, padding, stride and dilation give for
    /// the input size; `None` when the window does not fit or a factor is zero.
    pub(crate) fn output_size(&self) -> Option<[usize; 2]> {
        let axis = |a: usize| {
            if self.kernel[a] == 0 || self.stride[a] == 0 || self.dilation[a] == 0 {
                return None;
            }
            let span = self.dilation[a] * (self.kernel[a] - 1) + 1;
            let padded = self.size[a] + 2 * self.padding[a];
            (padded >= span).then(|| (padded - span) / self.stride[a] + 1)
        };
        Some([axis(0)?, axis(1)?])
    }

    /// The same window with `in_channels` into `out_channels` in `groups`.
    #[cfg(test)]
    pub(crate) fn with_channels(
        self,
        in_channels: usize,
        out_channels: usize,
        groups: usize,
    ) -> Self {
        Geometry {
            in_channels,
            out_channels,
            groups,
            ..self
        }
    }

    /// The same geometry with `size` and `out_size` those of another call.
    pub(crate) fn with_sizes(self, size: [usize; 2], out_size: [usize; 2]) -> Self {
        Geometry {
            size,
            out_size,
            ..self
        }
    }

    /// One group of it: its input and output channels, `groups == 1`.
    pub(crate) fn group(&self) -> Self {
        Geometry {
            in_channels: self.in_channels / self.groups,
            out_channels: self.out_channels / self.groups,
            groups: 1,
            ..*self
        }
    }

    /// Kernel taps, `kh · kw`.
    pub(crate) fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }

    /// Whether the image kernels can compute it: one group of whole blocks of 16
    /// output channels, and an output that the kernel and padding give.
    pub(crate) fn suits_image_kernels(&self) -> bool {
        self.groups == 1
            && self.in_channels > 0
            && self.out_channels > 0
            && self.out_channels.is_multiple_of(LANES)
            && self.output_size() == Some(self.out_size)
    }

    /// The output columns `lo..hi` whose windows read no padding column.
    pub(crate) fn inner_columns(&self) -> (usize, usize) {
        let ([_, w], [_, wo], [_, kw], [_, sw], [_, pw]) = (
            self.size,
            self.out_size,
            self.kernel,
            self.stride,
            self.padding,
        );
        let lo = pw.div_ceil(sw).min(wo);
        let hi = if w + pw >= kw {
            ((w + pw - kw) / sw + 1).min(wo)
        } else {
            0
        };
        (lo, hi.max(lo))
    }

    /// For output row `oy`: the input row of kernel row 0 (negative in the padding),
    /// and the kernel rows `r0..r1` that fall inside the image.
    pub(crate) fn rows(&self, oy: usize) -> (isize, usize, usize) {
        let ([h, _], [kh, _], [sh, _], [ph, _]) =
            (self.size, self.kernel, self.stride, self.padding);
        let top = (oy * sh) as isize - ph as isize;
        let r0 = (-top).clamp(0, kh as isize) as usize;
        let r1 = (h as isize - top).clamp(r0 as isize, kh as isize) as usize;
        (top, r0, r1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `window` with the output size it gives.
    fn fitted(kernel: usize, stride: usize, padding: usize, size: [usize; 2]) -> Option<Geometry> {
        let g = Geometry::window(3, [kernel; 2], [stride; 2], [padding; 2], size, [0, 0]);
        Some(g.with_sizes(size, g.output_size()?))
    }

    #[test]
    fn the_output_size_is_pytorchs() {
        // 7×7 stride 2 padding 3 over 224: 112; 3×3 stride 2 padding 1 over 7 × 5: 4 × 3.
        assert_eq!(fitted(7, 2, 3, [224, 224]).unwrap().out_size, [112, 112]);
        assert_eq!(fitted(3, 2, 1, [7, 5]).unwrap().out_size, [4, 3]);
        assert_eq!(fitted(5, 1, 0, [4, 9]), None);
        assert_eq!(fitted(3, 0, 0, [4, 9]), None);
        let dilated = Geometry {
            dilation: [2, 2],
            ..fitted(3, 1, 0, [9, 9]).unwrap()
        };
        assert_eq!(dilated.output_size(), Some([5, 5]));
    }

    #[test]
    fn a_group_has_its_share_of_the_channels() {
        let g = Geometry {
            in_channels: 64,
            out_channels: 128,
            groups: 4,
            ..fitted(3, 1, 1, [8, 8]).unwrap()
        };
        let one = g.group();
        assert_eq!((one.in_channels, one.out_channels, one.groups), (16, 32, 1));
        assert!(!g.suits_image_kernels() && one.suits_image_kernels());
    }

    #[test]
    fn inner_columns_read_no_padding() {
        // 3×3 stride 1 padding 1 over 8 columns: columns 1..7 read none.
        assert_eq!(fitted(3, 1, 1, [8, 8]).unwrap().inner_columns(), (1, 7));
        // Rows: output row 0 starts in the padding, reading kernel rows 1..3.
        assert_eq!(fitted(3, 1, 1, [8, 8]).unwrap().rows(0), (-1, 1, 3));
    }
}
