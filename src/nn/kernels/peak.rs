//! The machine's multiply-add throughput: independent chains of fused multiply-adds,
//! enough of them to fill the pipelines, on one instruction set.

use super::{Kernel, Kernels, Simd};
use std::time::Instant;

/// `ROUNDS` rounds of one multiply-add on each of `CHAINS` independent groups of 16
/// lanes; returns a value that depends on every result.
struct Chains<const CHAINS: usize> {
    rounds: usize,
}

impl<const CHAINS: usize> Kernel for Chains<CHAINS> {
    type Output = f32;

    #[inline(always)]
    fn run<S: Simd>(self, s: S) -> f32 {
        let (a, b) = (s.splat(0.999_9), s.splat(1e-4));
        let mut acc = [s.zero(); CHAINS];
        for _ in 0..self.rounds {
            #[allow(clippy::needless_range_loop)]
            for k in 0..CHAINS {
                acc[k] = s.fma(acc[k], a, b);
            }
        }
        let mut sum = s.zero();
        for v in acc {
            sum = s.add(sum, v);
        }
        let mut lanes = [0.0; 16];
        s.store(&mut lanes, sum);
        lanes.iter().sum()
    }
}

/// The multiply-add throughput of one thread on `kernels`, in GFLOP/s (two per
/// multiply-add), over about `seconds`.
pub(crate) fn gflops(kernels: Kernels, seconds: f64) -> f64 {
    // Twelve registers of chains: enough to cover the latency of two pipelines.
    let wide = match kernels {
        Kernels::Avx512(_) => true,
        Kernels::Avx2(_) | Kernels::Neon(_) | Kernels::Scalar(_) => false,
    };
    let time = |rounds: usize| {
        let t = Instant::now();
        let (sum, chains) = if wide {
            (kernels.run(Chains::<12> { rounds }), 12)
        } else {
            (kernels.run(Chains::<6> { rounds }), 6)
        };
        std::hint::black_box(sum);
        (t.elapsed().as_secs_f64(), (rounds * chains * 16 * 2) as f64)
    };
    let mut rounds = 1 << 16;
    loop {
        let (t, flops) = time(rounds);
        if t >= seconds / 4.0 || rounds >= 1 << 34 {
            // The best of three timings at this length.
            let best = (0..3).map(|_| time(rounds).0).fold(t, f64::min);
            return flops / best / 1e9;
        }
        rounds *= 2;
    }
}
