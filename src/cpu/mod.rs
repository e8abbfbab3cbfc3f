//! Which vector instructions reflow's kernels use, and how to cap them.
//!
//! The convolution kernels are written once over a group of sixteen `f32` lanes and
//! compiled for several instruction sets; at run time each convolution call takes the
//! best [`Level`] that the processor supports and the cap allows:
//!
//! | level | processors | kernels |
//! |---|---|---|
//! | [`Level::Avx512`] | x86-64 with AVX-512F (Intel Xeon since Skylake-SP, AMD Zen 4) | Winograd, direct, fused epilogues: one register per 16 lanes |
//! | [`Level::Avx2`] | x86-64 with AVX2 and FMA (Intel since Haswell, AMD since Zen 1) | the same kernels, two registers per 16 lanes |
//! | [`Level::Neon`] | aarch64 (Apple silicon, Graviton, …) | the same kernels, four registers per 16 lanes |
//! | [`Level::Portable`] | anything | faer's matrix products (im2col, shifted, pointwise) |
//!
//! The cap exists so that one machine can run every path (tests and benchmarks do), or
//! to rule out a path. It starts from the environment variable `REFLOW_KERNEL`
//! (`portable`, `avx2`, `avx512` or `neon`, read once), and [`set_max_level`] changes
//! it for the whole process. All levels compute the same sums up to rounding.
//!
//! ```
//! use reflow::cpu::{self, Level};
//!
//! let best = cpu::detected();
//! assert!(cpu::supported().contains(&best));
//! cpu::set_max_level(Level::Portable);
//! assert_eq!(cpu::level(), Level::Portable);
//! cpu::set_max_level(best);
//! assert_eq!(cpu::level(), best);
//! ```

pub(crate) mod level;

pub use level::{max_level, set_max_level, Level, UnknownLevel};

impl Level {
    /// Whether this processor supports the level.
    pub fn is_supported(self) -> bool {
        match self {
            Level::Portable => true,
            Level::Neon => crate::nn::kernels::Neon::detect().is_some(),
            Level::Avx2 => crate::nn::kernels::Avx2::detect().is_some(),
            Level::Avx512 => crate::nn::kernels::Avx512::detect().is_some(),
        }
    }
}

/// The widest level this processor supports.
pub fn detected() -> Level {
    Level::ALL
        .into_iter()
        .rev()
        .find(|l| l.is_supported())
        .unwrap_or(Level::Portable)
}

/// Every level this processor supports, most portable first.
pub fn supported() -> Vec<Level> {
    Level::ALL
        .into_iter()
        .filter(|l| l.is_supported())
        .collect()
}

/// The multiply-add throughput of one core at `level`, in GFLOP/s (a multiply-add
/// counts two), measured on the calling thread over about a fifth of a second: the
/// peak that the benchmarks' "% of peak" divides by. Independent chains of fused
/// multiply-adds, as many as fill the pipelines, run in the kernels' registers. Call
/// it on several threads at once (e.g. `rayon::broadcast`) and add the results for the
/// peak of several cores.
///
/// `None` for [`Level::Portable`], which has no kernels of its own, and for a level
/// the processor does not support.
pub fn peak_gflops(level: Level) -> Option<f64> {
    use crate::nn::kernels::{peak, Isa};
    match Isa::at_most(level) {
        Isa::Kernels(kernels) if Isa::Kernels(kernels).level() == level => {
            Some(peak::gflops(kernels, 0.2))
        }
        _ => None,
    }
}

/// The level the next convolution call will use: the widest level that the processor
/// supports and the cap allows.
pub fn level() -> Level {
    crate::nn::kernels::Isa::current().level()
}
