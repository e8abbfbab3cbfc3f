//! [`Simd`] on aarch64 Advanced SIMD (NEON): sixteen lanes in four `q` registers.
//!
//! The arithmetic is NEON's; the masked loads, partial stores and the transpose go
//! through memory like the [`super::Scalar`] group, whose code the tests run on every
//! machine.

super::token! {
    /// Proof that the processor has NEON (every aarch64 processor that runs a standard
    /// Linux, macOS or Windows does).
    Neon: Neon on "aarch64"
}

#[cfg(target_arch = "aarch64")]
mod imp {
    use super::super::{Kernel, Scalar, Simd, LANES};
    use super::Neon;
    use std::arch::aarch64::*;

    /// Lanes 0–3, 4–7, 8–11 and 12–15.
    type V = [float32x4_t; 4];

    /// Calls `f` in a function compiled for NEON.
    ///
    /// # Safety
    /// The processor has NEON.
    #[inline(never)]
    #[target_feature(enable = "neon")]
    unsafe fn enabled<S: Simd, K: Kernel>(s: S, kernel: K) -> K::Output {
        kernel.run(s)
    }

    /// [`Simd::max_nan`] on four lanes.
    ///
    /// # Safety
    /// NEON.
    #[inline(always)]
    unsafe fn max_nan_quarter(best: float32x4_t, v: float32x4_t) -> float32x4_t {
        // SAFETY: NEON (the caller's contract). `v == v` is false only for NaN.
        unsafe {
            let not_nan = vceqq_f32(v, v);
            let take = vorrq_u32(vcgtq_f32(v, best), vmvnq_u32(not_nan));
            vbslq_f32(take, v, best)
        }
    }

    /// [`Simd::pow2`] on four lanes.
    ///
    /// # Safety
    /// NEON.
    #[inline(always)]
    unsafe fn pow2_quarter(t: float32x4_t) -> float32x4_t {
        use super::super::scalar::POW2_ROUND_BITS;
        // SAFETY: NEON (the caller's contract).
        unsafe {
            let n = vsubq_s32(vreinterpretq_s32_f32(t), vdupq_n_s32(POW2_ROUND_BITS));
            vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n, vdupq_n_s32(127))))
        }
    }

    /// Applies the two-operand intrinsic `$op` to the four quarters (written out: a
    /// closure might not inline into the vectorised context).
    macro_rules! each {
        ($op:ident, $a:expr, $b:expr) => {{
            let (a, b) = ($a, $b);
            // SAFETY: NEON (the token).
            unsafe {
                [
                    $op(a[0], b[0]),
                    $op(a[1], b[1]),
                    $op(a[2], b[2]),
                    $op(a[3], b[3]),
                ]
            }
        }};
    }

    /// The lanes as an array.
    #[inline(always)]
    fn array(s: Neon, v: V) -> [f32; LANES] {
        let mut a = [0.0; LANES];
        s.store(&mut a, v);
        a
    }

    // SAFETY (every `unsafe` block below): a `Neon` token exists only where the
    // processor has NEON; pointer contracts are the trait's.
    impl Simd for Neon {
        type V = V;
        type Mask = u16;
        const PIXELS: usize = 6;
        const REGISTERS: usize = 8;

        #[inline(always)]
        fn vectorize<K: Kernel>(self, kernel: K) -> K::Output {
            // SAFETY: the token proves NEON.
            unsafe { enabled(self, kernel) }
        }

        #[inline(always)]
        fn splat(self, v: f32) -> V {
            // SAFETY: NEON (the token).
            unsafe { [vdupq_n_f32(v); 4] }
        }

        #[inline(always)]
        fn add(self, a: V, b: V) -> V {
            each!(vaddq_f32, a, b)
        }

        #[inline(always)]
        fn sub(self, a: V, b: V) -> V {
            each!(vsubq_f32, a, b)
        }

        #[inline(always)]
        fn mul(self, a: V, b: V) -> V {
            each!(vmulq_f32, a, b)
        }

        #[inline(always)]
        fn div(self, a: V, b: V) -> V {
            each!(vdivq_f32, a, b)
        }

        #[inline(always)]
        fn fma(self, a: V, b: V, c: V) -> V {
            // SAFETY: NEON (the token). `vfmaq_f32(c, a, b)` is `c + a·b`, rounded once.
            unsafe {
                [
                    vfmaq_f32(c[0], a[0], b[0]),
                    vfmaq_f32(c[1], a[1], b[1]),
                    vfmaq_f32(c[2], a[2], b[2]),
                    vfmaq_f32(c[3], a[3], b[3]),
                ]
            }
        }

        #[inline(always)]
        fn relu(self, v: V) -> V {
            // 0 where `0 > v`, else `v` (NaN stays NaN), as on x86.
            let z = self.zero();
            // SAFETY: NEON (the token).
            unsafe {
                [
                    vbslq_f32(vcgtq_f32(z[0], v[0]), z[0], v[0]),
                    vbslq_f32(vcgtq_f32(z[1], v[1]), z[1], v[1]),
                    vbslq_f32(vcgtq_f32(z[2], v[2]), z[2], v[2]),
                    vbslq_f32(vcgtq_f32(z[3], v[3]), z[3], v[3]),
                ]
            }
        }

        #[inline(always)]
        fn max_nan(self, best: V, v: V) -> V {
            // SAFETY: NEON (the token).
            unsafe {
                [
                    max_nan_quarter(best[0], v[0]),
                    max_nan_quarter(best[1], v[1]),
                    max_nan_quarter(best[2], v[2]),
                    max_nan_quarter(best[3], v[3]),
                ]
            }
        }

        #[inline(always)]
        fn clamp(self, v: V, lo: f32, hi: f32) -> V {
            // NEON's `max`/`min` return NaN when either operand is: NaN stays NaN.
            let (lo, hi) = (self.splat(lo), self.splat(hi));
            each!(vminq_f32, hi, each!(vmaxq_f32, lo, v))
        }

        #[inline(always)]
        fn pow2(self, t: V) -> V {
            // SAFETY: NEON (the token).
            unsafe {
                [
                    pow2_quarter(t[0]),
                    pow2_quarter(t[1]),
                    pow2_quarter(t[2]),
                    pow2_quarter(t[3]),
                ]
            }
        }

        #[inline(always)]
        unsafe fn load_ptr(self, p: *const f32) -> V {
            // SAFETY: NEON; 16 readable floats (the caller's contract).
            unsafe {
                [
                    vld1q_f32(p),
                    vld1q_f32(p.add(4)),
                    vld1q_f32(p.add(8)),
                    vld1q_f32(p.add(12)),
                ]
            }
        }

        #[inline(always)]
        unsafe fn store_ptr(self, p: *mut f32, v: V) {
            // SAFETY: NEON; 16 writable floats (the caller's contract).
            unsafe {
                vst1q_f32(p, v[0]);
                vst1q_f32(p.add(4), v[1]);
                vst1q_f32(p.add(8), v[2]);
                vst1q_f32(p.add(12), v[3]);
            }
        }

        #[inline(always)]
        fn mask(self, bits: u16) -> u16 {
            bits
        }

        #[inline(always)]
        unsafe fn mask_load(self, src: V, mask: u16, p: *const f32) -> V {
            let s = Scalar::detect();
            // SAFETY: the same contract.
            let lanes = unsafe { s.mask_load(array(self, src), mask, p) };
            self.load(&lanes)
        }

        #[inline(always)]
        unsafe fn store_first(self, p: *mut f32, v: V, count: usize) {
            // SAFETY: the same contract.
            unsafe { Scalar::detect().store_first(p, array(self, v), count) }
        }

        #[inline(always)]
        fn deinterleave(self, a: V, b: V) -> (V, V) {
            // SAFETY: NEON (the token). `uzp1`/`uzp2` take the even/odd lanes of a pair.
            unsafe {
                (
                    [
                        vuzp1q_f32(a[0], a[1]),
                        vuzp1q_f32(a[2], a[3]),
                        vuzp1q_f32(b[0], b[1]),
                        vuzp1q_f32(b[2], b[3]),
                    ],
                    [
                        vuzp2q_f32(a[0], a[1]),
                        vuzp2q_f32(a[2], a[3]),
                        vuzp2q_f32(b[0], b[1]),
                        vuzp2q_f32(b[2], b[3]),
                    ],
                )
            }
        }

        #[inline(always)]
        fn transpose(self, rows: &mut [V; LANES]) {
            let mut m = [[0.0; LANES]; LANES];
            for (m, &r) in m.iter_mut().zip(rows.iter()) {
                self.store(m, r);
            }
            for (r, row) in rows.iter_mut().enumerate() {
                let mut column = [0.0; LANES];
                for (c, v) in column.iter_mut().enumerate() {
                    *v = m[c][r];
                }
                *row = self.load(&column);
            }
        }
    }
}
