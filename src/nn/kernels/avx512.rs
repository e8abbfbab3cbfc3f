//! [`Simd`] on x86-64 AVX-512F: sixteen lanes in one `zmm` register.

super::token! {
    /// Proof that the processor has AVX-512F.
    Avx512: Avx512 on "x86_64"
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::super::{Kernel, Simd, LANES};
    use super::Avx512;
    use std::arch::x86_64::*;

    /// Calls `f` in a function compiled for AVX-512F.
    ///
    /// # Safety
    /// The processor has AVX-512F.
    #[inline(never)]
    #[target_feature(enable = "avx512f")]
    unsafe fn enabled<S: Simd, K: Kernel>(s: S, kernel: K) -> K::Output {
        kernel.run(s)
    }

    /// Lane `l` of `STEPS[k][0]` / `STEPS[k][1]`: where step `k` of the transpose takes
    /// the new lane `l` of the lower / upper register of a pair from (0–15: the lower
    /// register, 16–31: the upper one).
    const STEPS: [[[i32; LANES]; 2]; 4] = {
        let mut idx = [[[0; LANES]; 2]; 4];
        let mut k = 0;
        while k < 4 {
            let h = 1 << k;
            let mut l = 0;
            while l < LANES as i32 {
                let low_half = l & h == 0;
                idx[k][0][l as usize] = if low_half { l } else { 16 + l - h };
                idx[k][1][l as usize] = if low_half { l + h } else { 16 + l };
                l += 1;
            }
            k += 1;
        }
        idx
    };

    /// `[2l]` and `[2l + 1]`: the even and odd elements of two registers.
    const EVEN_ODD: [[i32; LANES]; 2] = {
        let mut idx = [[0; LANES]; 2];
        let mut l = 0;
        while l < LANES {
            idx[0][l] = 2 * l as i32;
            idx[1][l] = 2 * l as i32 + 1;
            l += 1;
        }
        idx
    };

    // SAFETY (every `unsafe` block below): an `Avx512` token exists only where the
    // processor has AVX-512F; pointer contracts are the trait's.
    impl Simd for Avx512 {
        type V = __m512;
        type Mask = __mmask16;
        const PIXELS: usize = 28;
        const REGISTERS: usize = 32;

        #[inline(always)]
        fn vectorize<K: Kernel>(self, kernel: K) -> K::Output {
            // SAFETY: the token proves AVX-512F.
            unsafe { enabled(self, kernel) }
        }

        #[inline(always)]
        fn splat(self, v: f32) -> __m512 {
            // SAFETY: AVX-512F (the token).
            unsafe { _mm512_set1_ps(v) }
        }

        #[inline(always)]
        fn add(self, a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F (the token).
            unsafe { _mm512_add_ps(a, b) }
        }

        #[inline(always)]
        fn sub(self, a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F (the token).
            unsafe { _mm512_sub_ps(a, b) }
        }

        #[inline(always)]
        fn mul(self, a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F (the token).
            unsafe { _mm512_mul_ps(a, b) }
        }

        #[inline(always)]
        fn div(self, a: __m512, b: __m512) -> __m512 {
            // SAFETY: AVX-512F (the token).
            unsafe { _mm512_div_ps(a, b) }
        }

        #[inline(always)]
        fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
            // SAFETY: AVX-512F (the token).
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }

        #[inline(always)]
        fn relu(self, v: __m512) -> __m512 {
            // SAFETY: AVX-512F (the token).
            // `max(0, v)` returns its second operand when either is NaN: NaN stays
            // NaN.
            unsafe { _mm512_max_ps(_mm512_setzero_ps(), v) }
        }

        #[inline(always)]
        fn max_nan(self, best: __m512, v: __m512) -> __m512 {
            // SAFETY: AVX-512F (the token).
            unsafe {
                let take = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best)
                    | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                _mm512_mask_mov_ps(best, take, v)
            }
        }

        #[inline(always)]
        fn clamp(self, v: __m512, lo: f32, hi: f32) -> __m512 {
            // SAFETY: AVX-512F (the token). `max`/`min` return their second operand
            // when either is NaN: NaN stays NaN.
            unsafe { _mm512_min_ps(_mm512_set1_ps(hi), _mm512_max_ps(_mm512_set1_ps(lo), v)) }
        }

        #[inline(always)]
        fn pow2(self, t: __m512) -> __m512 {
            use super::super::scalar::POW2_ROUND_BITS;
            // SAFETY: AVX-512F (the token).
            unsafe {
                let n =
                    _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(POW2_ROUND_BITS));
                let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(n, _mm512_set1_epi32(127)));
                _mm512_castsi512_ps(e)
            }
        }

        #[inline(always)]
        unsafe fn load_ptr(self, p: *const f32) -> __m512 {
            // SAFETY: AVX-512F; 16 readable floats (the caller's contract).
            unsafe { _mm512_loadu_ps(p) }
        }

        #[inline(always)]
        unsafe fn store_ptr(self, p: *mut f32, v: __m512) {
            // SAFETY: AVX-512F; 16 writable floats (the caller's contract).
            unsafe { _mm512_storeu_ps(p, v) }
        }

        #[inline(always)]
        fn mask(self, bits: u16) -> __mmask16 {
            bits
        }

        #[inline(always)]
        unsafe fn mask_load(self, src: __m512, mask: __mmask16, p: *const f32) -> __m512 {
            // SAFETY: AVX-512F; masked-off lanes are not read (and do not fault).
            unsafe { _mm512_mask_loadu_ps(src, mask, p) }
        }

        #[inline(always)]
        unsafe fn store_first(self, p: *mut f32, v: __m512, count: usize) {
            let mask = ((1u32 << count.min(LANES)) - 1) as u16;
            // SAFETY: AVX-512F; `count` writable floats (the caller's contract).
            unsafe { _mm512_mask_storeu_ps(p, mask, v) }
        }

        #[inline(always)]
        fn deinterleave(self, a: __m512, b: __m512) -> (__m512, __m512) {
            // SAFETY: AVX-512F; arrays of 16 i32.
            unsafe {
                let even = _mm512_loadu_si512(EVEN_ODD[0].as_ptr().cast());
                let odd = _mm512_loadu_si512(EVEN_ODD[1].as_ptr().cast());
                (
                    _mm512_permutex2var_ps(a, even, b),
                    _mm512_permutex2var_ps(a, odd, b),
                )
            }
        }

        #[inline(always)]
        fn transpose(self, v: &mut [__m512; LANES]) {
            // Step `k` swaps bit `k` of the row index with bit `k` of the lane index,
            // for registers `h = 2^k` apart.
            for (k, [low, high]) in STEPS.iter().enumerate() {
                // SAFETY: AVX-512F; arrays of 16 i32.
                let (low, high) = unsafe {
                    (
                        _mm512_loadu_si512(low.as_ptr().cast()),
                        _mm512_loadu_si512(high.as_ptr().cast()),
                    )
                };
                let h = 1 << k;
                for i in (0..LANES).filter(|i| i & h == 0) {
                    let (a, b) = (v[i], v[i + h]);
                    // SAFETY: AVX-512F (the token).
                    unsafe {
                        v[i] = _mm512_permutex2var_ps(a, low, b);
                        v[i + h] = _mm512_permutex2var_ps(a, high, b);
                    }
                }
            }
        }
    }
}
