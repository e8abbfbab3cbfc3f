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

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level of the convolution kernels, ordered from the most
/// portable to the widest (a cap of [`Level::Avx2`] also allows [`Level::Portable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// No hand-written kernel: faer's matrix products, which pick their own vector
    /// width.
    Portable,
    /// aarch64 Advanced SIMD (NEON), four registers per group of sixteen lanes.
    Neon,
    /// x86-64 AVX2 with FMA, two registers per group of sixteen lanes.
    Avx2,
    /// x86-64 AVX-512F, one register per group of sixteen lanes.
    Avx512,
}

impl Level {
    /// Every level, most portable first.
    pub const ALL: [Level; 4] = [Level::Portable, Level::Neon, Level::Avx2, Level::Avx512];

    /// The level's name, as `REFLOW_KERNEL` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Neon => "neon",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// Whether this processor supports the level.
    pub fn is_supported(self) -> bool {
        match self {
            Level::Portable => true,
            Level::Neon => crate::nn::kernels::Neon::detect().is_some(),
            Level::Avx2 => crate::nn::kernels::Avx2::detect().is_some(),
            Level::Avx512 => crate::nn::kernels::Avx512::detect().is_some(),
        }
    }

    fn from_index(i: u8) -> Level {
        Level::ALL[usize::from(i).min(Level::ALL.len() - 1)]
    }

    fn index(self) -> u8 {
        Level::ALL.iter().position(|&l| l == self).unwrap_or(0) as u8
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `REFLOW_KERNEL` value that names no [`Level`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownLevel(pub String);

impl fmt::Display for UnknownLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown kernel level {:?} (expected portable, neon, avx2 or avx512)",
            self.0
        )
    }
}

impl std::error::Error for UnknownLevel {}

impl FromStr for Level {
    type Err = UnknownLevel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Level::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownLevel(s.to_string()))
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

/// No cap read yet.
const UNSET: u8 = u8::MAX;

/// The cap: a [`Level`] index, or [`UNSET`].
static CAP: AtomicU8 = AtomicU8::new(UNSET);

/// The highest level the kernels may use: `REFLOW_KERNEL` until [`set_max_level`] is
/// called, else no cap (the widest level). An unknown `REFLOW_KERNEL` value is
/// reported once on standard error and ignored.
pub fn max_level() -> Level {
    let cap = CAP.load(Ordering::Relaxed);
    if cap != UNSET {
        return Level::from_index(cap);
    }
    let level = match std::env::var("REFLOW_KERNEL") {
        Ok(v) => v.parse().unwrap_or_else(|e: UnknownLevel| {
            eprintln!("reflow: REFLOW_KERNEL: {e}; using no cap");
            Level::Avx512
        }),
        Err(_) => Level::Avx512,
    };
    // A concurrent `set_max_level` wins.
    let _ = CAP.compare_exchange(UNSET, level.index(), Ordering::Relaxed, Ordering::Relaxed);
    Level::from_index(CAP.load(Ordering::Relaxed))
}

/// Caps the kernels at `level` for the whole process (calls already running finish
/// at the level they started with). A cap above what the processor supports leaves
/// the processor's best.
pub fn set_max_level(level: Level) {
    CAP.store(level.index(), Ordering::Relaxed);
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
