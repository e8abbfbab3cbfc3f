//! The epilogue of the image kernels: batch norm and ReLU per output channel, the
//! calibration moments, and stores of sixteen channels' pixels as runs of each
//! channel's plane.

use super::{Simd, LANES};
use crate::nn::runtime::Line;
use crate::stats::chan_merge;

/// `lines` as arrays of 16 floats.
pub(crate) fn as_arrays(lines: &mut [Line]) -> &mut [[f32; LANES]] {
    // SAFETY: `Line` is `repr(C)` around `[f32; 16]`, 64 bytes, with no padding.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len()) }
}

/// `lines` as floats.
pub(crate) fn as_floats(lines: &mut [Line]) -> &mut [f32] {
    // SAFETY: as in `as_arrays`, 16 floats per line.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * LANES) }
}

/// The per-channel map of sixteen output channels: `relu?(v·scale + shift)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Affine<'a> {
    pub scale: &'a [f32; LANES],
    pub shift: &'a [f32; LANES],
    pub relu: bool,
}

impl<'a> Affine<'a> {
    /// The map of channels `first..first + 16` of per-channel `scale` and `shift`.
    pub(crate) fn of(scale: &'a [f32], shift: &'a [f32], first: usize, relu: bool) -> Self {
        let block = |v: &'a [f32]| -> &'a [f32; LANES] {
            v[first..first + LANES]
                .try_into()
                .expect("16 channels per block")
        };
        Affine {
            scale: block(scale),
            shift: block(shift),
            relu,
        }
    }
}

/// The running count, mean and sum of squared deviations of 16 output channels' values.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Moments {
    count: f64,
    mean: [f64; LANES],
    m2: [f64; LANES],
}

impl Moments {
    /// Lane `lane`'s mean and sum of squared deviations.
    pub(crate) fn plane(&self, lane: usize) -> (f64, f64) {
        (self.mean[lane], self.m2[lane])
    }

    /// Merges the values `pixels·scale + shift` (pixels × 16 channels): their mean and
    /// sum of squared deviations in `f32` (two passes over the run, in the level-1
    /// cache), then [`chan_merge`] of the running `f64` moments, lane by lane.
    #[inline(always)]
    pub(crate) fn merge<S: Simd>(&mut self, s: S, pixels: &[[f32; LANES]], map: Affine<'_>) {
        let (a, b) = (s.load(map.scale), s.load(map.shift));
        // Plain loops: library adaptors that take closures (`fold`) may not inline
        // into the vectorised context.
        let count = pixels.len() as f32;
        let mut sum = s.zero();
        for px in pixels {
            sum = s.add(sum, s.add(s.mul(s.load(px), a), b));
        }
        let mean = s.div(sum, s.splat(count));
        let mut m2 = s.zero();
        for px in pixels {
            let d = s.sub(s.add(s.mul(s.load(px), a), b), mean);
            m2 = s.fma(d, d, m2);
        }
        let (mut block_mean, mut block_m2) = ([0.0; LANES], [0.0; LANES]);
        s.store(&mut block_mean, mean);
        s.store(&mut block_m2, m2);
        let n = f64::from(count);
        for lane in 0..LANES {
            let block = (f64::from(block_mean[lane]), f64::from(block_m2[lane]));
            (self.mean[lane], self.m2[lane]) =
                chan_merge(self.count, (self.mean[lane], self.m2[lane]), n, block);
        }
        self.count += n;
    }
}

/// Writes `pixels` (consecutive output pixels, each a group of 16 channels) to the 16
/// channel planes of `y` (`plane` apart), from offset `at` of the first one, after
/// `map` per channel; merges the values before the ReLU into `stats`, when given.
#[inline(always)]
pub(crate) fn store_channels<S: Simd>(
    s: S,
    pixels: &[[f32; LANES]],
    map: Affine<'_>,
    y: &mut [f32],
    at: usize,
    plane: usize,
    stats: Option<&mut Moments>,
) {
    if let Some(stats) = stats {
        stats.merge(s, pixels, map);
    }
    let (a, b) = (s.load(map.scale), s.load(map.shift));
    for (k, chunk) in pixels.chunks(LANES).enumerate() {
        let start = at + k * LANES;
        assert!(start + (LANES - 1) * plane + chunk.len() <= y.len());
        let mut v = [s.zero(); LANES];
        for (r, px) in v.iter_mut().zip(chunk) {
            *r = s.add(s.mul(s.load(px), a), b);
            if map.relu {
                *r = s.relu(*r);
            }
        }
        s.transpose(&mut v);
        let dst = y.as_mut_ptr();
        for (lane, row) in v.iter().enumerate() {
            // SAFETY: lane `lane`'s run of `chunk.len()` values from
            // `start + lane·plane` lies inside `y` (asserted above).
            unsafe { s.store_first(dst.add(start + lane * plane), *row, chunk.len()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{every_kernels, Kernel};
    use super::*;

    /// [`store_channels`] as a kernel.
    struct Store<'a> {
        run: &'a [[f32; LANES]],
        map: Affine<'a>,
        y: &'a mut [f32],
        at: usize,
        plane: usize,
        stats: &'a mut Moments,
    }

    impl Kernel for Store<'_> {
        type Output = ();

        #[inline(always)]
        fn run<S: Simd>(self, s: S) {
            let stats = Some(self.stats);
            store_channels(s, self.run, self.map, self.y, self.at, self.plane, stats);
        }
    }

    /// The moments every instruction set merges agree with the plain formula of the
    /// whole run, and the stores put each value in its channel's plane.
    #[test]
    fn stores_and_moments_agree_with_the_definitions_on_every_instruction_set() {
        let pixels: Vec<[f32; LANES]> = (0..37)
            .map(|p| std::array::from_fn(|c| ((p * 16 + c) as f32 * 0.31).sin() + c as f32))
            .collect();
        let scale: [f32; LANES] = std::array::from_fn(|c| 0.5 + c as f32 / 8.0);
        let shift: [f32; LANES] = std::array::from_fn(|c| c as f32 / 4.0 - 2.0);
        let map = Affine {
            scale: &scale,
            shift: &shift,
            relu: true,
        };
        let plane = 50;
        for kernels in every_kernels() {
            let mut y = vec![f32::NAN; LANES * plane];
            let mut stats = Moments::default();
            // Runs of 28, then 9 pixels, as a kernel stores them.
            for (at, run) in [(0, &pixels[..28]), (28, &pixels[28..])] {
                let (y, stats) = (&mut y[..], &mut stats);
                kernels.run(Store {
                    run,
                    map,
                    y,
                    at,
                    plane,
                    stats,
                });
            }
            for c in 0..LANES {
                let values: Vec<f64> = pixels
                    .iter()
                    .map(|p| f64::from(p[c] * scale[c] + shift[c]))
                    .collect();
                let mean = values.iter().sum::<f64>() / values.len() as f64;
                let m2: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
                let (got_mean, got_m2) = stats.plane(c);
                assert!((got_mean - mean).abs() < 1e-5, "{kernels:?} {c}");
                assert!((got_m2 - m2).abs() < 1e-5 * m2, "{kernels:?} {c}");
                for (p, px) in pixels.iter().enumerate() {
                    let want = (px[c] * scale[c] + shift[c]).max(0.0);
                    assert_eq!(y[c * plane + p], want, "{kernels:?} {c} {p}");
                }
                assert!(y[c * plane + 37..(c + 1) * plane]
                    .iter()
                    .all(|v| v.is_nan()));
            }
        }
    }
}
