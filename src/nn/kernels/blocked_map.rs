//! Element-wise passes over channel-blocked tensors: a residual add with its
//! activation, an activation alone, and a squeeze-excitation's gates.

use super::activation::activate;
use super::blocked::each_chunk;
use super::{Kernel, Kernels, Simd, LANES};
use crate::nn::runtime::Activation;

/// Values per task: 64 KiB.
const CHUNK: usize = 1 << 14;

/// `y = f(y + r)` (`r` from `residual`, of `y`'s length, or 0), lane by lane.
pub(crate) fn add_activate(
    kernels: Kernels,
    y: &mut [f32],
    residual: Option<&[f32]>,
    f: Activation,
    threads: usize,
) {
    assert!(y.len().is_multiple_of(LANES) && residual.is_none_or(|r| r.len() == y.len()));
    let chunks = y.chunks_mut(CHUNK).collect();
    each_chunk(chunks, threads, |i, y| {
        let r = residual.map(|r| &r[i * CHUNK..][..y.len()]);
        kernels.run(AddActivate { y, r, f })
    });
}

struct AddActivate<'a> {
    y: &'a mut [f32],
    r: Option<&'a [f32]>,
    f: Activation,
}

impl Kernel for AddActivate<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        for (i, y) in self.y.chunks_exact_mut(LANES).enumerate() {
            let y: &mut [f32; LANES] = y.try_into().expect("16 lanes");
            let mut v = s.load(y);
            if let Some(r) = self.r {
                v = s.add(
                    v,
                    s.load(r[i * LANES..][..LANES].try_into().expect("16 lanes")),
                );
            }
            s.store(y, activate(s, self.f, v));
        }
    }
}

/// `y[p] = y[p] · gates[p]` for each plane `p` of `plane` values (`[H][W][16]`), `gates`
/// holding sixteen values per plane: a squeeze-excitation's reweighting.
pub(crate) fn scale_planes(
    kernels: Kernels,
    y: &mut [f32],
    plane: usize,
    gates: &[f32],
    threads: usize,
) {
    assert!(plane.is_multiple_of(LANES) && y.len() == gates.len() / LANES * plane);
    if plane == 0 {
        return;
    }
    let chunks = y.chunks_mut(plane).collect();
    each_chunk(chunks, threads, |i, y| {
        let g = &gates[i * LANES..][..LANES];
        kernels.run(Scale {
            y,
            g: g.try_into().expect("16 lanes"),
        })
    });
}

struct Scale<'a> {
    y: &'a mut [f32],
    g: &'a [f32; LANES],
}

impl Kernel for Scale<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let g = s.load(self.g);
        for y in self.y.chunks_exact_mut(LANES) {
            let y: &mut [f32; LANES] = y.try_into().expect("16 lanes");
            s.store(y, s.mul(s.load(y), g));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::kernels::blocked::tests::values;
    use crate::nn::kernels::every_kernels;

    #[test]
    fn passes_compute_their_definitions_at_every_level() {
        let len = 3 * CHUNK + 5 * LANES;
        let (y0, r) = (values(len, 1), values(len, 2));
        let plane = 7 * LANES;
        let (planes, x0) = (40, values(40 * plane, 4));
        let gates = values(planes * LANES, 3);
        for k in every_kernels() {
            for threads in [1, 2] {
                for f in Activation::ALL {
                    for residual in [None, Some(&r[..])] {
                        let mut y = y0.clone();
                        add_activate(k, &mut y, residual, f, threads);
                        for (i, v) in y.iter().enumerate() {
                            let want = f.apply(y0[i] + residual.map_or(0.0, |r| r[i]));
                            assert_eq!(v.to_bits(), want.to_bits(), "{k:?} {f} [{i}]");
                        }
                    }
                }
                let mut y = x0.clone();
                scale_planes(k, &mut y, plane, &gates, threads);
                for (i, v) in y.iter().enumerate() {
                    let g = gates[i / plane * LANES + i % LANES];
                    assert_eq!(*v, x0[i] * g, "{k:?} scale [{i}]");
                }
            }
        }
    }
}
