//! [`Simd`] on x86-64 AVX2 with FMA: sixteen lanes in two `ymm` registers.

super::token! {
    /// Proof that the processor has AVX2 and FMA.
    Avx2: Avx2 on "x86_64"
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::super::{Kernel, Simd, LANES};
    use super::Avx2;
    use std::arch::x86_64::*;

    /// Lanes 0–7 and 8–15.
    type V = [__m256; 2];

    /// Calls `f` in a function compiled for AVX2 and FMA.
    ///
    /// # Safety
    /// The processor has AVX2 and FMA.
    #[inline(never)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn enabled<S: Simd, K: Kernel>(s: S, kernel: K) -> K::Output {
        kernel.run(s)
    }

    /// Applies the two-operand intrinsic `$op` to both halves (written out: a closure
    /// might not inline into the vectorised context).
    macro_rules! both {
        ($op:ident, $a:expr, $b:expr) => {{
            let (a, b) = ($a, $b);
            // SAFETY: AVX (the token).
            unsafe { [$op(a[0], b[0]), $op(a[1], b[1])] }
        }};
    }

    /// [`Simd::max_nan`] on eight lanes.
    ///
    /// # Safety
    /// AVX.
    #[inline(always)]
    unsafe fn max_nan_half(best: __m256, v: __m256) -> __m256 {
        // SAFETY: AVX (the caller's contract).
        unsafe {
            let take = _mm256_or_ps(
                _mm256_cmp_ps::<_CMP_GT_OQ>(v, best),
                _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v),
            );
            _mm256_blendv_ps(best, v, take)
        }
    }

    /// [`Simd::pow2`] on eight lanes.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    unsafe fn pow2_half(t: __m256) -> __m256 {
        use super::super::scalar::POW2_ROUND_BITS;
        // SAFETY: AVX2 (the caller's contract).
        unsafe {
            let n = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(POW2_ROUND_BITS));
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
                n,
                _mm256_set1_epi32(127),
            )))
        }
    }

    /// The all-ones lanes of a mask: lane `i` set when bit `i` of `bits` is.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    unsafe fn lane_mask(bits: u8) -> __m256i {
        // SAFETY: AVX2 (the caller's contract).
        unsafe {
            let select = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
            let set = _mm256_and_si256(_mm256_set1_epi32(i32::from(bits)), select);
            _mm256_cmpeq_epi32(set, select)
        }
    }

    /// Transposes the 8 × 8 matrix whose rows are `r`.
    ///
    /// # Safety
    /// AVX.
    #[inline(always)]
    unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        // SAFETY: AVX (the caller's contract).
        unsafe {
            // Interleave pairs of rows, then pairs of pairs, then the 128-bit halves.
            let u0 = _mm256_unpacklo_ps(r[0], r[1]);
            let u1 = _mm256_unpackhi_ps(r[0], r[1]);
            let u2 = _mm256_unpacklo_ps(r[2], r[3]);
            let u3 = _mm256_unpackhi_ps(r[2], r[3]);
            let u4 = _mm256_unpacklo_ps(r[4], r[5]);
            let u5 = _mm256_unpackhi_ps(r[4], r[5]);
            let u6 = _mm256_unpacklo_ps(r[6], r[7]);
            let u7 = _mm256_unpackhi_ps(r[6], r[7]);
            let s0 = _mm256_shuffle_ps::<0x44>(u0, u2);
            let s1 = _mm256_shuffle_ps::<0xEE>(u0, u2);
            let s2 = _mm256_shuffle_ps::<0x44>(u1, u3);
            let s3 = _mm256_shuffle_ps::<0xEE>(u1, u3);
            let s4 = _mm256_shuffle_ps::<0x44>(u4, u6);
            let s5 = _mm256_shuffle_ps::<0xEE>(u4, u6);
            let s6 = _mm256_shuffle_ps::<0x44>(u5, u7);
            let s7 = _mm256_shuffle_ps::<0xEE>(u5, u7);
            [
                _mm256_permute2f128_ps::<0x20>(s0, s4),
                _mm256_permute2f128_ps::<0x20>(s1, s5),
                _mm256_permute2f128_ps::<0x20>(s2, s6),
                _mm256_permute2f128_ps::<0x20>(s3, s7),
                _mm256_permute2f128_ps::<0x31>(s0, s4),
                _mm256_permute2f128_ps::<0x31>(s1, s5),
                _mm256_permute2f128_ps::<0x31>(s2, s6),
                _mm256_permute2f128_ps::<0x31>(s3, s7),
            ]
        }
    }

    /// The even and odd elements of the 16 values `a ++ b`.
    ///
    /// # Safety
    /// AVX2.
    #[inline(always)]
    unsafe fn even_odd(a: __m256, b: __m256) -> (__m256, __m256) {
        // SAFETY: AVX2 (the caller's contract).
        unsafe {
            // [a0 a2 b0 b2 | a4 a6 b4 b6], then the 64-bit pairs in order 0, 2, 1, 3.
            let even = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
            let odd = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
            // No closure for the reorder: a closure does not inherit the instruction set.
            let even = _mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(even));
            let odd = _mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(odd));
            (_mm256_castpd_ps(even), _mm256_castpd_ps(odd))
        }
    }

    // SAFETY (every `unsafe` block below): an `Avx2` token exists only where the
    // processor has AVX2 and FMA; pointer contracts are the trait's.
    impl Simd for Avx2 {
        type V = V;
        /// Per half, all ones in the selected lanes (as `maskload` takes them).
        type Mask = [__m256i; 2];
        const PIXELS: usize = 6;
        const REGISTERS: usize = 8;

        #[inline(always)]
        fn vectorize<K: Kernel>(self, kernel: K) -> K::Output {
            // SAFETY: the token proves AVX2 and FMA.
            unsafe { enabled(self, kernel) }
        }

        #[inline(always)]
        fn splat(self, v: f32) -> V {
            // SAFETY: AVX (the token).
            unsafe { [_mm256_set1_ps(v); 2] }
        }

        #[inline(always)]
        fn add(self, a: V, b: V) -> V {
            both!(_mm256_add_ps, a, b)
        }

        #[inline(always)]
        fn sub(self, a: V, b: V) -> V {
            both!(_mm256_sub_ps, a, b)
        }

        #[inline(always)]
        fn mul(self, a: V, b: V) -> V {
            both!(_mm256_mul_ps, a, b)
        }

        #[inline(always)]
        fn div(self, a: V, b: V) -> V {
            both!(_mm256_div_ps, a, b)
        }

        #[inline(always)]
        fn fma(self, a: V, b: V, c: V) -> V {
            // SAFETY: FMA (the token).
            unsafe {
                [
                    _mm256_fmadd_ps(a[0], b[0], c[0]),
                    _mm256_fmadd_ps(a[1], b[1], c[1]),
                ]
            }
        }

        #[inline(always)]
        fn relu(self, v: V) -> V {
            // `max(0, v)` returns its second operand when either is NaN: NaN stays NaN.
            both!(_mm256_max_ps, self.zero(), v)
        }

        #[inline(always)]
        fn max_nan(self, best: V, v: V) -> V {
            // SAFETY: AVX (the token).
            unsafe { [max_nan_half(best[0], v[0]), max_nan_half(best[1], v[1])] }
        }

        #[inline(always)]
        fn clamp(self, v: V, lo: f32, hi: f32) -> V {
            // `max`/`min` return their second operand when either is NaN: NaN stays NaN.
            let (lo, hi) = (self.splat(lo), self.splat(hi));
            both!(_mm256_min_ps, hi, both!(_mm256_max_ps, lo, v))
        }

        #[inline(always)]
        fn pow2(self, t: V) -> V {
            // SAFETY: AVX2 (the token).
            unsafe { [pow2_half(t[0]), pow2_half(t[1])] }
        }

        #[inline(always)]
        unsafe fn load_ptr(self, p: *const f32) -> V {
            // SAFETY: AVX; 16 readable floats (the caller's contract).
            unsafe { [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))] }
        }

        #[inline(always)]
        unsafe fn store_ptr(self, p: *mut f32, v: V) {
            // SAFETY: AVX; 16 writable floats (the caller's contract).
            unsafe {
                _mm256_storeu_ps(p, v[0]);
                _mm256_storeu_ps(p.add(8), v[1]);
            }
        }

        #[inline(always)]
        fn mask(self, bits: u16) -> [__m256i; 2] {
            // SAFETY: AVX2 (the token).
            unsafe { [lane_mask(bits as u8), lane_mask((bits >> 8) as u8)] }
        }

        #[inline(always)]
        unsafe fn mask_load(self, src: V, mask: [__m256i; 2], p: *const f32) -> V {
            let mut out = src;
            for (half, out) in out.iter_mut().enumerate() {
                // SAFETY: AVX2; `maskload` reads (and may fault on) only the selected
                // lanes, which are readable (the caller's contract); the others load
                // as zero. The pointer is only offset, never read, outside them.
                unsafe {
                    let m = mask[half];
                    let loaded = _mm256_maskload_ps(p.wrapping_add(8 * half), m);
                    *out = _mm256_blendv_ps(*out, loaded, _mm256_castsi256_ps(m));
                }
            }
            out
        }

        #[inline(always)]
        unsafe fn store_first(self, p: *mut f32, v: V, count: usize) {
            let count = count.min(LANES);
            if count == LANES {
                // SAFETY: 16 writable floats (the caller's contract).
                return unsafe { self.store_ptr(p, v) };
            }
            let mask = self.mask(((1u32 << count) - 1) as u16);
            for half in 0..2 {
                if count <= 8 * half {
                    break;
                }
                // SAFETY: AVX2; only the first `count` lanes are written, and they are
                // writable (the caller's contract).
                unsafe { _mm256_maskstore_ps(p.wrapping_add(8 * half), mask[half], v[half]) };
            }
        }

        #[inline(always)]
        fn deinterleave(self, a: V, b: V) -> (V, V) {
            // SAFETY: AVX2 (the token).
            unsafe {
                let (ae, ao) = even_odd(a[0], a[1]);
                let (be, bo) = even_odd(b[0], b[1]);
                ([ae, be], [ao, bo])
            }
        }

        #[inline(always)]
        fn transpose(self, rows: &mut [V; LANES]) {
            // Four 8 × 8 quadrants: the top-left and bottom-right stay, the others swap.
            let mut quadrants = [[self.zero()[0]; 8]; 4];
            for i in 0..8 {
                quadrants[0][i] = rows[i][0];
                quadrants[1][i] = rows[i][1];
                quadrants[2][i] = rows[8 + i][0];
                quadrants[3][i] = rows[8 + i][1];
            }
            let [tl, tr, bl, br] = quadrants;
            // SAFETY: AVX (the token).
            let (tl, tr, bl, br) = unsafe {
                (
                    transpose8(tl),
                    transpose8(tr),
                    transpose8(bl),
                    transpose8(br),
                )
            };
            for i in 0..8 {
                rows[i] = [tl[i], bl[i]];
                rows[8 + i] = [tr[i], br[i]];
            }
        }
    }
}
