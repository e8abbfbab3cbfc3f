//! Plain loops — no intrinsics — compiled inside [`Simd::vectorize`], so that the
//! compiler vectorises them at the instruction set's width (sixteen lanes with
//! AVX-512, eight with AVX2) instead of the baseline's four: the activations and
//! affine maps of the matrix-product paths, and the depthwise convolution.

use super::geometry::Geometry;
use super::{Isa, Kernel, Kernels, Scalar, Simd};
use crate::nn::runtime::{Activation, ChannelMap};
use crate::stats::plane_moments;

/// Runs `kernel` on `isa`'s instruction set, or compiled for the baseline processor.
fn on<K: Kernel>(isa: Isa, kernel: K) -> K::Output {
    match isa.kernels() {
        Some(k) => k.run(kernel),
        None => Kernels::Scalar(Scalar::detect()).run(kernel),
    }
}

/// `plane = f(plane·a + b)` for each plane of `spatial` values, `(a, b)` of plane `o`
/// from `affine(o)`.
struct MapPlanes<'a, A> {
    values: &'a mut [f32],
    spatial: usize,
    affine: A,
    f: Activation,
}

impl<A: Fn(usize) -> (f32, f32)> Kernel for MapPlanes<'_, A> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, _: S) {
        for (o, plane) in self.values.chunks_mut(self.spatial.max(1)).enumerate() {
            let (a, b) = (self.affine)(o);
            self.f.map_in_place(plane, a, b);
        }
    }
}

/// `plane = f(plane·a + b)` for each plane of `spatial` values of `values`, with
/// plane `o`'s `(a, b)` from `affine(o)`, vectorised for `isa`.
pub(crate) fn map_planes(
    isa: Isa,
    values: &mut [f32],
    spatial: usize,
    affine: impl Fn(usize) -> (f32, f32),
    f: Activation,
) {
    on(
        isa,
        MapPlanes {
            values,
            spatial,
            affine,
            f,
        },
    )
}

/// `values = f(values)`, vectorised for `isa`.
pub(crate) fn activate(isa: Isa, values: &mut [f32], f: Activation) {
    if f != Activation::Identity {
        map_planes(isa, values, values.len(), |_| (1.0, 0.0), f);
    }
}

/// One channel of a depthwise convolution: `x` (mapped by `input` as it is read)
/// convolved with `filter` into `y`, then `f(y·a + b)`.
pub(crate) struct DepthwisePlane<'a> {
    pub geometry: &'a Geometry,
    pub x: &'a [f32],
    pub y: &'a mut [f32],
    pub filter: &'a [f32],
    /// The channel's map and index.
    pub input: Option<(&'a ChannelMap, usize)>,
    pub affine: (f32, f32),
    pub activation: Activation,
    /// Whether to return the plane's moments before the activation.
    pub moments: bool,
    /// Scratch: the padded, phase-split plane, and one mapped row.
    pub padded: &'a mut Vec<f32>,
    pub mapped: &'a mut Vec<f32>,
}

impl Kernel for DepthwisePlane<'_> {
    type Output = (f64, f64);

    /// The input laid out zero-padded and split by column phase (for stride `s`, the
    /// columns `j ≡ p (mod s)` of phase `p` side by side), so that every tap reads a
    /// contiguous run of the row it needs: an output row is a sum of `kh · kw` scaled
    /// runs.
    #[inline(always)]
    fn run<S: Simd>(self, _: S) -> (f64, f64) {
        let g = self.geometry;
        let ([h, w], [_, wo]) = (g.size, g.out_size);
        let ([kh, kw], [s_h, s_w]) = (g.kernel, g.stride);
        let ([ph, pw], [dh, dw]) = (g.padding, g.dilation);
        let (hp, wp) = (h + 2 * ph, w + 2 * pw);
        let phase = wp.div_ceil(s_w);
        let row_len = s_w * phase;
        let (padded, mapped) = (self.padded, self.mapped);
        padded.clear();
        padded.resize(hp * row_len, 0.0);
        mapped.resize(w, 0.0);
        for (i, row) in self.x.chunks_exact(w).enumerate() {
            let row = match self.input {
                Some((map, ch)) => {
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
        for (oi, out) in self.y.chunks_exact_mut(wo).enumerate() {
            out.fill(0.0);
            for ki in 0..kh {
                let base = (oi * s_h + ki * dh) * row_len;
                for kj in 0..kw {
                    let off = kj * dw;
                    let start = base + (off % s_w) * phase + off / s_w;
                    let tap = self.filter[ki * kw + kj];
                    let src = &padded[start..start + wo];
                    out.iter_mut().zip(src).for_each(|(o, &v)| *o += tap * v);
                }
            }
        }
        let (a, b) = self.affine;
        if !self.moments {
            self.activation.map_in_place(self.y, a, b);
            return (0.0, 0.0);
        }
        Activation::Identity.map_in_place(self.y, a, b);
        let m = plane_moments(self.y);
        self.activation.apply_in_place(self.y);
        m
    }
}

/// [`DepthwisePlane`] vectorised for `isa`.
pub(crate) fn depthwise_plane(isa: Isa, plane: DepthwisePlane<'_>) -> (f64, f64) {
    on(isa, plane)
}

/// `y = x · g` plane by plane, `g` one value per plane of `spatial` values.
struct ScalePlanes<'a> {
    x: &'a [f32],
    y: &'a mut [f32],
    spatial: usize,
    gates: &'a [f32],
}

impl Kernel for ScalePlanes<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, _: S) {
        let planes = self
            .y
            .chunks_mut(self.spatial)
            .zip(self.x.chunks(self.spatial));
        for ((y, x), &g) in planes.zip(self.gates) {
            y.iter_mut().zip(x).for_each(|(y, &x)| *y = x * g);
        }
    }
}

/// `y = x · g` for each plane of `spatial` values and its gate, vectorised for `isa`.
pub(crate) fn scale_planes(isa: Isa, x: &[f32], y: &mut [f32], spatial: usize, gates: &[f32]) {
    on(
        isa,
        ScalePlanes {
            x,
            y,
            spatial: spatial.max(1),
            gates,
        },
    )
}

/// `out = f(out + s)`.
struct AddActivate<'a> {
    out: &'a mut [f32],
    s: &'a [f32],
    f: Activation,
}

impl Kernel for AddActivate<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, _: S) {
        self.out.iter_mut().zip(self.s).for_each(|(o, &s)| *o += s);
        self.f.apply_in_place(self.out);
    }
}

/// `out = f(out + s)`, vectorised for `isa`.
pub(crate) fn add_activate(isa: Isa, out: &mut [f32], s: &[f32], f: Activation) {
    on(isa, AddActivate { out, s, f })
}
