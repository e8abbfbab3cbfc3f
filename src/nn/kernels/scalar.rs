//! [`Simd`] on plain arrays: any processor. The compiler vectorises what it can; the
//! multiply-adds are fused (`mul_add`), so results equal the vector levels' bit for
//! bit where the kernels take the same steps.

use super::{Kernel, Simd, LANES};

/// The portable token: always available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scalar(());

impl Scalar {
    /// The token (every processor has plain arithmetic).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn detect() -> Self {
        Scalar(())
    }
}

type V = [f32; LANES];

#[inline(always)]
fn each(a: V, b: V, f: impl Fn(f32, f32) -> f32) -> V {
    std::array::from_fn(|i| f(a[i], b[i]))
}

impl Simd for Scalar {
    type V = V;
    type Mask = u16;
    const PIXELS: usize = 6;
    /// The portable level's vectors are arrays that the compiler keeps in whatever
    /// registers it has: counted as AVX-512's, so that the portable level (which
    /// tests run on every machine) takes the same paths as the widest one.
    const REGISTERS: usize = 32;

    #[inline(always)]
    fn vectorize<K: Kernel>(self, kernel: K) -> K::Output {
        kernel.run(self)
    }

    #[inline(always)]
    fn zero(self) -> V {
        [0.0; LANES]
    }

    #[inline(always)]
    fn splat(self, v: f32) -> V {
        [v; LANES]
    }

    #[inline(always)]
    fn load(self, v: &[f32; LANES]) -> V {
        *v
    }

    #[inline(always)]
    fn store(self, to: &mut [f32; LANES], v: V) {
        *to = v;
    }

    #[inline(always)]
    fn add(self, a: V, b: V) -> V {
        each(a, b, |x, y| x + y)
    }

    #[inline(always)]
    fn sub(self, a: V, b: V) -> V {
        each(a, b, |x, y| x - y)
    }

    #[inline(always)]
    fn mul(self, a: V, b: V) -> V {
        each(a, b, |x, y| x * y)
    }

    #[inline(always)]
    fn div(self, a: V, b: V) -> V {
        each(a, b, |x, y| x / y)
    }

    #[inline(always)]
    fn fma(self, a: V, b: V, c: V) -> V {
        std::array::from_fn(|i| a[i].mul_add(b[i], c[i]))
    }

    #[inline(always)]
    fn relu(self, v: V) -> V {
        // As x86's `max(0, v)`: 0 where `0 > v`, else `v`, so NaN stays NaN.
        v.map(|x| if 0.0 > x { 0.0 } else { x })
    }

    #[inline(always)]
    fn max_nan(self, best: V, v: V) -> V {
        std::array::from_fn(|i| {
            if v[i] > best[i] || v[i].is_nan() {
                v[i]
            } else {
                best[i]
            }
        })
    }

    #[inline(always)]
    fn clamp(self, v: V, lo: f32, hi: f32) -> V {
        v.map(|x| x.clamp(lo, hi))
    }

    #[inline(always)]
    fn pow2(self, t: V) -> V {
        t.map(|x| f32::from_bits(pow2_bits(x.to_bits() as i32) as u32))
    }

    #[inline(always)]
    unsafe fn load_ptr(self, p: *const f32) -> V {
        // SAFETY: 16 readable values (the caller's contract).
        unsafe { p.cast::<V>().read_unaligned() }
    }

    #[inline(always)]
    unsafe fn store_ptr(self, p: *mut f32, v: V) {
        // SAFETY: 16 writable values (the caller's contract).
        unsafe { p.cast::<V>().write_unaligned(v) }
    }

    #[inline(always)]
    fn mask(self, bits: u16) -> u16 {
        bits
    }

    #[inline(always)]
    unsafe fn mask_load(self, src: V, mask: u16, p: *const f32) -> V {
        std::array::from_fn(|i| {
            if mask & (1 << i) != 0 {
                // SAFETY: lane `i` is selected, so `p + i` is readable.
                unsafe { *p.wrapping_add(i) }
            } else {
                src[i]
            }
        })
    }

    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, v: V, count: usize) {
        let count = count.min(LANES);
        // SAFETY: `count` writable values (the caller's contract).
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), p, count) };
    }

    #[inline(always)]
    fn deinterleave(self, a: V, b: V) -> (V, V) {
        let pick = |k: usize| if k < LANES { a[k] } else { b[k - LANES] };
        (
            std::array::from_fn(|i| pick(2 * i)),
            std::array::from_fn(|i| pick(2 * i + 1)),
        )
    }

    #[inline(always)]
    fn transpose(self, rows: &mut [V; LANES]) {
        let m = *rows;
        *rows = std::array::from_fn(|r| std::array::from_fn(|c| m[c][r]));
    }
}

/// The bits of `2^n` from the bits of `n + 1.5·2²³` ([`Simd::pow2`]).
#[inline(always)]
pub(crate) fn pow2_bits(t: i32) -> i32 {
    t.wrapping_sub(POW2_ROUND_BITS).wrapping_add(127) << 23
}

/// The bits of 1.5·2²³, the rounding constant of [`Simd::pow2`].
pub(crate) const POW2_ROUND_BITS: i32 = 0x4b40_0000;
