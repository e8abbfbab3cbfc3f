//! Step 1 of [`sparse_conv`](super::sparse_conv): the blocked input spread into one
//! zero-padded plane per channel and stride phase.

use super::*;

/// What a tap's reads cost when they do not start on a whole vector, against when
/// they do (measured on AVX2 and AVX-512).
const UNALIGNED_COST: f64 = 1.45;

/// Where [`sparse_conv`] puts the input: per channel, for each stride phase kept, a
/// zero-padded copy of the batch's values and copies of it shifted by one, two, …
/// columns, then slack for the reads past the last position.
///
/// A position `(img, y, x)` of a copy is `y · pitch + img · image_step + x`:
///
/// - kernels wider than one column (per phase) put the images **side by side** in each
///   row, rows of a whole number of vectors: then with the shifted copies every tap's
///   reads start on a whole vector (unaligned loads cost 45 % more), and on 7 × 7 maps
///   the rows are not mostly padding; but where rounding the rows up would add more
///   positions than that (two 7 × 7 images, 18 columns padded, as 32), the rows stay
///   unrounded and the reads unaligned;
/// - the others put the images **one after the other**, rows unpadded.
#[derive(Debug, Clone, Copy)]
pub(super) struct Planes {
    pub(super) n: usize,
    /// The phases kept along the height and the width: the stride, or the kernel's
    /// size if smaller (a 1 × 1 kernel of stride 2 reads the even rows and columns
    /// only).
    pub(super) phases: [usize; 2],
    /// Copies per phase: the kernel's columns that fall in one phase.
    pub(super) shifts: usize,
    /// Rows and columns of one phase of one image.
    pub(super) size: [usize; 2],
    pub(super) pitch: usize,
    pub(super) image_step: usize,
    /// Output positions computed: `0..positions`. Those past the output size (or
    /// between the images) are computed and not stored.
    pub(super) positions: usize,
    /// Values of one copy.
    pub(super) copy: usize,
    /// Values per channel.
    pub(super) channel: usize,
    pub(super) out_size: [usize; 2],
}

impl Planes {
    pub(super) fn new(s: Geometry, xs: Blocked) -> Self {
        let out_size = s.out_size;
        let padded = [xs.h + 2 * s.padding[0], xs.w + 2 * s.padding[1]];
        let phases = [s.stride[0].min(s.kernel[0]), s.stride[1].min(s.kernel[1])];
        let shifts = (s.kernel[1] - 1) / s.stride[1] + 1;
        let size = [
            padded[0].div_ceil(s.stride[0]),
            padded[1].div_ceil(s.stride[1]),
        ];
        let (pitch, image_step, positions, copy) = if shifts > 1 {
            // Rows of whole vectors, unless the rounding adds more positions than the
            // unaligned reads cost (a few images of a small map: two 7 × 7 images
            // padded to 18 columns would compute 32).
            let row = xs.n * size[1];
            let aligned = row.next_multiple_of(LANES);
            let pitch = match aligned as f64 <= UNALIGNED_COST * row as f64 {
                true => aligned,
                false => row,
            };
            (pitch, size[1], out_size[0] * pitch, size[0] * pitch)
        } else {
            let image = size[0] * size[1];
            let all = xs.n * image;
            (size[1], image, all, all.next_multiple_of(LANES))
        };
        // The farthest tap within a copy, and a vector past the last position.
        let slack = (s.kernel[0] - 1) / s.stride[0] * pitch + LANES;
        Planes {
            n: xs.n,
            phases,
            shifts,
            size,
            pitch,
            image_step,
            positions,
            copy,
            channel: (phases[0] * phases[1] * shifts * copy + slack).next_multiple_of(LANES),
            out_size,
        }
    }

    /// The offset from an output position to the value that tap `(ky, kx)` reads, in a
    /// channel's planes.
    pub(super) fn tap(&self, s: Geometry, ky: usize, kx: usize) -> usize {
        let phase = (ky % s.stride[0]) * self.phases[1] + kx % s.stride[1];
        (phase * self.shifts + kx / s.stride[1]) * self.copy + ky / s.stride[0] * self.pitch
    }

    /// Where the input's padded row `y`, column `x` of image `img` goes in a channel's
    /// unshifted copies, if its phase is kept.
    pub(super) fn place(&self, s: Geometry, img: usize, y: usize, x: usize) -> Option<usize> {
        let (a, b) = (y % s.stride[0], x % s.stride[1]);
        if a >= self.phases[0] || b >= self.phases[1] {
            return None;
        }
        let at = y / s.stride[0] * self.pitch + img * self.image_step + x / s.stride[1];
        Some((a * self.phases[1] + b) * self.shifts * self.copy + at)
    }

    /// The output's image, row and column at position `q`, if it is one of the
    /// output's.
    pub(super) fn output(&self, q: usize) -> Option<(usize, usize, usize)> {
        let (img, y, x) = if self.shifts > 1 {
            let (y, rest) = (q / self.pitch, q % self.pitch);
            (rest / self.size[1], y, rest % self.size[1])
        } else {
            let (img, rest) = (q / self.image_step, q % self.image_step);
            (img, rest / self.size[1], rest % self.size[1])
        };
        (img < self.n && y < self.out_size[0] && x < self.out_size[1]).then_some((img, y, x))
    }
}

/// Writes `x`'s values into `cols` laid out as `planes`, the padding and the phases'
/// unused places zero. Returns whether every value is finite.
pub(super) fn spread(
    kernels: Kernels,
    x: &[f32],
    xs: Blocked,
    s: Geometry,
    planes: Planes,
    cols: &mut [f32],
    threads: usize,
) -> bool {
    let finite = std::sync::atomic::AtomicBool::new(true);
    let out = SharedOut(cols.as_mut_ptr());
    each_index(xs.blocks(), threads, |cb| {
        let channels = (cb * LANES)..((cb + 1) * LANES).min(xs.c);
        // SAFETY: block `cb` writes the planes of its own channels only, inside `cols`.
        let mine = unsafe {
            std::slice::from_raw_parts_mut(
                out.at(channels.start * planes.channel),
                channels.len() * planes.channel,
            )
        };
        let ok = kernels.run(Spread {
            x,
            xs,
            s,
            planes,
            block: cb,
            cols: mine,
        });
        if !ok {
            finite.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    });
    finite.into_inner()
}

/// One block of input channels of [`spread`], as a [`Kernel`].
pub(super) struct Spread<'a> {
    pub(super) x: &'a [f32],
    pub(super) xs: Blocked,
    pub(super) s: Geometry,
    pub(super) planes: Planes,
    pub(super) block: usize,
    /// The planes of the block's channels.
    pub(super) cols: &'a mut [f32],
}

impl Kernel for Spread<'_> {
    type Output = bool;

    #[inline(always)]
    fn run<S: Simd>(self, s: S) -> bool {
        let Spread {
            x,
            xs,
            s: shape,
            planes,
            block,
            cols,
        } = self;
        let channels = cols.len() / planes.channel;
        let [p0, p1] = shape.padding;
        // Images one after the other without padding are whole runs of positions.
        let whole = shape.padding == [0, 0] && planes.shifts == 1;
        // Every place that no input value reaches is zero: the slack, and with padding,
        // phases or images side by side, all of it.
        let filled = if whole && shape.stride == [1, 1] {
            xs.n * xs.h * xs.w
        } else {
            0
        };
        // (The shifted copies are made below from the first, wholly.)
        let (copy, phases) = (planes.copy, planes.phases[0] * planes.phases[1]);
        for c in 0..channels {
            let channel = &mut cols[c * planes.channel..][..planes.channel];
            for phase in 0..phases {
                channel[phase * planes.shifts * copy..][filled..copy].fill(0.0);
            }
            channel[phases * planes.shifts * copy..].fill(0.0);
        }
        let mut bad = s.zero();
        let image = |img: usize| &x[(img * xs.blocks() + block) * xs.h * xs.w * LANES..];
        if shape.stride == [1, 1] {
            // Sixteen positions at a time, transposed into sixteen channels, along runs
            // that are contiguous in both layouts: a row (with padding), else an image.
            let (runs, run) = if whole {
                (1, xs.h * xs.w)
            } else {
                (xs.h, xs.w)
            };
            for img in 0..xs.n {
                let x = image(img);
                for r in 0..runs {
                    let from = &x[r * run * LANES..][..run * LANES];
                    let to = planes
                        .place(shape, img, r + p0, p1)
                        .expect("stride 1 keeps its one phase");
                    for x0 in (0..run).step_by(LANES) {
                        let count = LANES.min(run - x0);
                        let mut v = [s.zero(); LANES];
                        for (i, vi) in v.iter_mut().enumerate() {
                            let at = (x0 + i.min(count - 1)) * LANES;
                            *vi = s.load(from[at..][..LANES].try_into().expect("16 lanes"));
                        }
                        s.transpose(&mut v);
                        // The channels past the tensor's are not read: whatever they
                        // hold does not count.
                        for &v in &v[..channels] {
                            bad = s.fma(v, s.zero(), bad);
                        }
                        for (c, &v) in v.iter().enumerate().take(channels) {
                            let dst = &mut cols[c * planes.channel + to + x0..][..count];
                            // SAFETY: `dst` holds `count` values.
                            unsafe { s.store_first(dst.as_mut_ptr(), v, count) };
                        }
                    }
                }
            }
        } else {
            // With a stride, value by value into its phase.
            let mut finite = true;
            for img in 0..xs.n {
                let x = image(img);
                for r in 0..xs.h {
                    for col in 0..xs.w {
                        let Some(at) = planes.place(shape, img, r + p0, col + p1) else {
                            // Its phase is not read; NaN there reaches no output.
                            continue;
                        };
                        let from = &x[(r * xs.w + col) * LANES..][..channels];
                        for (c, &v) in from.iter().enumerate() {
                            finite &= v.is_finite();
                            cols[c * planes.channel + at] = v;
                        }
                    }
                }
            }
            if !finite {
                return false;
            }
        }
        // The shifted copies: copy `j` is the first `j` values on, zeros at its end.
        for c in 0..channels {
            for phase in 0..phases {
                let at = c * planes.channel + phase * planes.shifts * copy;
                for j in 1..planes.shifts {
                    cols.copy_within(at + j..at + copy, at + j * copy);
                    cols[at + (j + 1) * copy - j..at + (j + 1) * copy].fill(0.0);
                }
            }
        }
        let mut lanes = [0.0; LANES];
        s.store(&mut lanes, bad);
        lanes.iter().all(|v| *v == 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_whole_vectors_unless_rounding_costs_more_than_unaligned_reads() {
        // A 3 × 3 stride-1 convolution on 7 × 7 maps: 9 padded columns per image.
        let shape = Geometry::window(16, [3, 3], [1, 1], [1, 1], [7, 7], [7, 7]);
        let shape = shape.with_channels(16, 16, 1);
        let pitch = |n| {
            let xs = Blocked {
                n,
                c: 16,
                h: 7,
                w: 7,
            };
            let planes = Planes::new(shape, xs);
            assert_eq!(planes.positions, 7 * planes.pitch);
            planes.pitch
        };
        // Eight images, 72 columns: 80 computed (11 % more) beat unaligned reads.
        assert_eq!(pitch(8), 80);
        // Two, 18 columns: 32 computed would be 78 % more.
        assert_eq!(pitch(2), 18);
        // One, 9: 16 would be 78 % more.
        assert_eq!(pitch(1), 9);
    }
}
