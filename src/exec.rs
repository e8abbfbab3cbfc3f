//! How a pass may compute, as a value: [`Exec`] — the instruction-set cap of the
//! kernels, the threads a layer may spread its work over, and when pruned convolutions
//! run on the sparse kernel.
//!
//! A [`Probe`](crate::layer::Probe) carries one ([`Probe::with_exec`](crate::layer::Probe::with_exec));
//! every layer reads it from there, and no thread-local or global decides a path. A
//! probe made without one takes [`Exec::defaults`]: the process's defaults, read when
//! the probe is made — the cap of `REFLOW_KERNEL` or [`cpu::set_max_level`](crate::cpu::set_max_level),
//! all of rayon's threads, and the policy of `REFLOW_SPARSE` or [`set_sparse_policy`].
//!
//! ```
//! use reflow::cpu::Level;
//! use reflow::exec::{Exec, Par, SparsePolicy};
//! use reflow::layer::{Layer, Probe};
//! use reflow::models::{ResNet, ResNetConfig};
//! use ndarray::Array4;
//!
//! let net = ResNet::new(ResNetConfig::cifar_resnet(20)?)?;
//! let x = Array4::from_elem((2, 3, 16, 16), 0.5f32);
//! let serial = Exec::defaults()
//!     .with_level(Level::Portable)
//!     .with_par(Par::Seq)
//!     .with_sparse(SparsePolicy::Never);
//! assert_eq!(serial.threads(), 1);
//! let a = net.forward_with(&x, &mut Probe::none().with_exec(serial))?;
//! let b = net.forward(&x)?;
//! assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() <= 1e-4 * b.abs().max(1.0)));
//! # Ok::<(), reflow::Error>(())
//! ```

use crate::cpu::{max_level, Level};
use std::sync::atomic::{AtomicU8, Ordering};

/// How many threads a layer may spread its work over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Par {
    /// The calling thread alone (the caller already runs independent work on every
    /// thread, e.g. the micro-batches of an eval pass).
    Seq,
    /// Every thread of the current rayon pool.
    #[default]
    Rayon,
}

/// How a pass may compute: see the [module](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Exec {
    level: Level,
    par: Par,
    sparse: SparsePolicy,
}

impl Default for Exec {
    /// [`Exec::defaults`].
    fn default() -> Self {
        Exec::defaults()
    }
}

impl Exec {
    /// The process's defaults, read now: the kernel cap ([`max_level`]), rayon's
    /// threads, the sparse policy ([`sparse_policy`]).
    pub fn defaults() -> Exec {
        Exec {
            level: max_level(),
            par: Par::Rayon,
            sparse: sparse_policy(),
        }
    }

    /// The same with the kernels capped at `level`.
    pub fn with_level(self, level: Level) -> Exec {
        Exec { level, ..self }
    }

    /// The same with `par` threads.
    pub fn with_par(self, par: Par) -> Exec {
        Exec { par, ..self }
    }

    /// The same with `sparse` deciding when pruned convolutions run sparse.
    pub fn with_sparse(self, sparse: SparsePolicy) -> Exec {
        Exec { sparse, ..self }
    }

    /// The kernels' cap (the kernels run at the widest level the processor supports
    /// up to it).
    pub fn level(&self) -> Level {
        self.level
    }

    /// The threads' setting.
    pub fn par(&self) -> Par {
        self.par
    }

    /// How many threads a layer may spread its work over: 1 for [`Par::Seq`], the
    /// current rayon pool's for [`Par::Rayon`].
    pub fn threads(&self) -> usize {
        match self.par {
            Par::Seq => 1,
            Par::Rayon => rayon::current_num_threads(),
        }
    }

    /// When pruned convolutions run on the sparse kernel.
    pub fn sparse(&self) -> SparsePolicy {
        self.sparse
    }
}

/// When pruned convolutions run on the sparse kernel.
///
/// The sparse kernel multiplies only the non-zero weights. It computes the same sums
/// as the dense kernels up to rounding (within 1e-5 relative); an input with a NaN
/// or an infinity always runs dense, so that it reaches every output it would reach
/// there.
///
/// ```
/// use reflow::nn::{set_sparse_policy, sparse_policy, SparsePolicy};
///
/// assert_eq!(sparse_policy(), SparsePolicy::Measured);
/// set_sparse_policy(SparsePolicy::Never); // e.g. to time the dense network
/// assert_eq!(sparse_policy(), SparsePolicy::Never);
/// set_sparse_policy(SparsePolicy::Measured);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SparsePolicy {
    /// A convolution with at most [`SparsePolicy::MEASURED_DENSITY`] of its weights
    /// non-zero times both kernels on the first input of each size and keeps the
    /// faster (the default).
    Measured,
    /// Dense kernels only.
    Never,
    /// The sparse kernel wherever it applies, however dense the weights (for tests and
    /// benchmarks).
    Always,
}

impl SparsePolicy {
    /// The most non-zero weights, as a fraction, for which [`SparsePolicy::Measured`]
    /// times the sparse kernel: denser layers run dense without a measurement. At 40 %
    /// the sparse kernel beats dense only on its best layers; at 50 % (2:4) on none,
    /// and a measurement that said otherwise was the timing's noise.
    pub const MEASURED_DENSITY: f64 = 0.4;

    pub(crate) const ALL: [SparsePolicy; 3] = [
        SparsePolicy::Measured,
        SparsePolicy::Never,
        SparsePolicy::Always,
    ];

    /// `measured`, `never` or `always`.
    pub fn name(self) -> &'static str {
        match self {
            SparsePolicy::Measured => "measured",
            SparsePolicy::Never => "never",
            SparsePolicy::Always => "always",
        }
    }
}

impl std::fmt::Display for SparsePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SparsePolicy {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        SparsePolicy::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| crate::Error::unknown("sparse policy", s, "measured, never or always"))
    }
}

/// No policy read yet.
const UNSET: u8 = u8::MAX;

/// The policy: an index into [`SparsePolicy::ALL`], or [`UNSET`].
static POLICY: AtomicU8 = AtomicU8::new(UNSET);

/// The policy in force: `REFLOW_SPARSE` (`measured`, `never` or `always`) until
/// [`set_sparse_policy`] is called, else [`SparsePolicy::Measured`]. An unknown
/// `REFLOW_SPARSE` value is reported once on standard error and ignored.
pub fn sparse_policy() -> SparsePolicy {
    let index = POLICY.load(Ordering::Relaxed);
    if index != UNSET {
        return SparsePolicy::ALL[index as usize];
    }
    let policy = match std::env::var("REFLOW_SPARSE") {
        Ok(v) => v.parse().unwrap_or_else(|e: crate::Error| {
            eprintln!("reflow: REFLOW_SPARSE: {e}; using measured");
            SparsePolicy::Measured
        }),
        Err(_) => SparsePolicy::Measured,
    };
    let index = SparsePolicy::ALL.iter().position(|p| *p == policy);
    let index = index.expect("a policy") as u8;
    // A concurrent `set_sparse_policy` wins.
    let _ = POLICY.compare_exchange(UNSET, index, Ordering::Relaxed, Ordering::Relaxed);
    SparsePolicy::ALL[POLICY.load(Ordering::Relaxed) as usize]
}

/// Sets the policy for the whole process (calls already running finish under the one
/// they started with).
pub fn set_sparse_policy(policy: SparsePolicy) {
    let index = SparsePolicy::ALL.iter().position(|p| *p == policy);
    POLICY.store(index.expect("a policy") as u8, Ordering::Relaxed);
}
