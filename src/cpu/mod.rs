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
//! This module imports nothing of the crate: the kernels read it, not the other way.
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
    /// Whether this processor supports the level: the features its kernels use
    /// (AVX-512F; AVX2 and FMA; NEON), detected at run time.
    pub fn is_supported(self) -> bool {
        match self {
            Level::Portable => true,
            #[cfg(target_arch = "aarch64")]
            Level::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[allow(unreachable_patterns)]
            _ => false,
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

/// The level the next convolution call will use: the widest level that the processor
/// supports and the cap allows.
pub fn level() -> Level {
    let cap = max_level();
    Level::ALL
        .into_iter()
        .rev()
        .find(|&l| l <= cap && l.is_supported())
        .unwrap_or(Level::Portable)
}
