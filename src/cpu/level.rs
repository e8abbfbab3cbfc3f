//! The levels and the process-wide cap: what the kernels may use. Imports nothing of
//! the crate, so that the kernels can read the cap.

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

    pub(super) fn from_index(i: u8) -> Level {
        Level::ALL[usize::from(i).min(Level::ALL.len() - 1)]
    }

    pub(super) fn index(self) -> u8 {
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
