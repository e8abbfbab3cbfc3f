//! The convolution kernels that work image by image: the only `unsafe` code of the
//! crate.
//!
//! Each kernel is written once, generic over [`Simd`]: a group of sixteen `f32` lanes
//! held in one AVX-512 register, two AVX2 registers, four NEON registers, or a plain
//! array. Sixteen lanes are sixteen output channels everywhere, so the packed weights,
//! the scratch layouts and the epilogue are the same at every level, and the portable
//! [`Scalar`] implementation runs (and tests) the very code that NEON runs.
//!
//! A token per instruction set ([`Avx512`], [`Avx2`], [`Neon`], [`Scalar`]) proves
//! that the processor has it: its only constructor, `detect`, checks the feature at
//! run time. Every safe entry point takes a token (inside [`Kernels`]), and the
//! kernel runs inside the token's [`Simd::vectorize`], compiled with the instruction
//! set enabled.
//!
//! - [`direct`]: direct convolution for few input channels;
//! - [`winograd`]: Winograd's F(2×2, 3×3);
//! - [`store`]: the epilogue both share (batch norm, ReLU, calibration moments,
//!   transposed stores);
//! - [`plain`]: plain loops compiled for an instruction set (activations, affine maps,
//!   the depthwise convolution), vectorised by the compiler at its width.
//!
//! The kernels take their own geometry ([`geometry::Geometry`]), never a layer's
//! configuration.

// The crate denies `unsafe` everywhere else (but in `nn::runtime::team`).
#![allow(unsafe_code)]

pub(crate) mod activation;
pub(crate) mod blocked;
pub(crate) mod blocked_depthwise;
pub(crate) mod blocked_direct;
pub(crate) mod blocked_map;
pub(crate) mod blocked_pointwise;
pub(crate) mod blocked_pool;
pub(crate) mod blocked_sparse;
pub(crate) mod blocked_winograd;
pub(crate) mod direct;
pub(crate) mod geometry;
pub(crate) mod peak;
pub(crate) mod plain;
pub(crate) mod store;
pub(crate) mod winograd;

mod avx2;
mod avx512;
mod neon;
mod scalar;

pub(crate) use avx2::Avx2;
pub(crate) use avx512::Avx512;
pub(crate) use neon::Neon;
pub(crate) use scalar::Scalar;

use crate::cpu::level::Level;

/// Lanes of a [`Simd`] group: output channels per block of every kernel.
pub(crate) const LANES: usize = 16;

/// A computation written once over [`Simd`]: [`Simd::vectorize`] compiles it for
/// each instruction set.
///
/// `run` must be `#[inline(always)]`, and so must everything on its hot path: a
/// function that is not inlined into the vectorised context is compiled for the
/// baseline processor, and the intrinsics it calls become function calls. (A closure
/// cannot be marked so, which is why kernels are values of this trait.)
pub(crate) trait Kernel {
    /// What the kernel returns.
    type Output;
    /// The computation, on the instruction set of `s`.
    fn run<S: Simd>(self, s: S) -> Self::Output;
}

/// Sixteen `f32` lanes in the registers of one instruction set.
///
/// Implemented by zero-sized tokens that exist only where the instruction set does:
/// the safe methods may therefore use it. Every method is `#[inline(always)]`, so that
/// generic kernels compile to the instruction set once inlined into
/// [`Simd::vectorize`].
pub(crate) trait Simd: Copy + Send + Sync + 'static {
    /// The sixteen lanes.
    type V: Copy;

    /// A selection of lanes, as [`Simd::mask_load`] takes it.
    type Mask: Copy;

    /// Pixels whose sixteen-channel accumulators fit in registers next to the weights
    /// and one broadcast value: 28 of AVX-512's 32 registers; 6 groups of two (AVX2,
    /// 16 registers) or four (NEON, 32 registers).
    const PIXELS: usize;

    /// Sixteen-lane vectors the registers hold: 32 with AVX-512, 8 with AVX2 (a
    /// vector is two of its 16 registers) and NEON (four of 32).
    const REGISTERS: usize;

    /// Runs `kernel` compiled with this instruction set enabled: [`Kernel::run`] and
    /// everything it calls inline into a function with the instruction set's target
    /// feature.
    fn vectorize<K: Kernel>(self, kernel: K) -> K::Output;

    /// All lanes zero.
    #[inline(always)]
    fn zero(self) -> Self::V {
        self.splat(0.0)
    }
    /// All lanes `v`.
    fn splat(self, v: f32) -> Self::V;
    /// Sixteen values.
    #[inline(always)]
    fn load(self, v: &[f32; LANES]) -> Self::V {
        // SAFETY: 16 floats.
        unsafe { self.load_ptr(v.as_ptr()) }
    }
    /// Writes the sixteen lanes.
    #[inline(always)]
    fn store(self, to: &mut [f32; LANES], v: Self::V) {
        // SAFETY: 16 floats.
        unsafe { self.store_ptr(to.as_mut_ptr(), v) }
    }
    /// `a + b`.
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a − b`.
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a · b`.
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a / b`.
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a · b + c`, rounded once.
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `max(v, 0)` lane by lane, NaN staying NaN (as PyTorch's ReLU; x86's `max(0, v)`).
    fn relu(self, v: Self::V) -> Self::V;
    /// `v` where `v > best` or `v` is NaN, else `best`, lane by lane: a max-pooling
    /// step, NaN propagating as in PyTorch.
    fn max_nan(self, best: Self::V, v: Self::V) -> Self::V;
    /// `min(max(v, lo), hi)` lane by lane, NaN staying NaN (as `f32::clamp`).
    fn clamp(self, v: Self::V, lo: f32, hi: f32) -> Self::V;
    /// `2^n` lane by lane, where lane `i` of `t` is `n + 1.5·2²³` for an integer `n` in
    /// −126..=127 (the value's low mantissa bits are `n`): the exponent step of an
    /// `exp` computed by range reduction.
    fn pow2(self, t: Self::V) -> Self::V;

    /// Sixteen values from `p`.
    ///
    /// # Safety
    /// `p..p + 16` is readable.
    unsafe fn load_ptr(self, p: *const f32) -> Self::V;

    /// Writes the sixteen lanes to `p`.
    ///
    /// # Safety
    /// `p..p + 16` is writable.
    unsafe fn store_ptr(self, p: *mut f32, v: Self::V);

    /// The lanes whose bit is set in `bits` (lane `i`: bit `i`), for
    /// [`Simd::mask_load`] (made once, used for many loads).
    fn mask(self, bits: u16) -> Self::Mask;

    /// `src` with lane `i` replaced by `*p.add(i)` where `mask` selects lane `i`.
    ///
    /// # Safety
    /// `p.add(i)` is readable for every selected lane `i`; the other lanes are not
    /// read.
    unsafe fn mask_load(self, src: Self::V, mask: Self::Mask, p: *const f32) -> Self::V;

    /// Writes lanes `0..count` (at most 16) to `p..p + count`.
    ///
    /// # Safety
    /// `p..p + count` is writable.
    unsafe fn store_first(self, p: *mut f32, v: Self::V, count: usize);

    /// The even and odd lanes of the 32 values `a ++ b`: `([a0, a2, …, a14, b0, …,
    /// b14], [a1, a3, …, b15])`.
    fn deinterleave(self, a: Self::V, b: Self::V) -> (Self::V, Self::V);

    /// Transposes the 16 × 16 matrix whose rows are `rows`.
    fn transpose(self, rows: &mut [Self::V; LANES]);
}

/// The instruction set the image kernels run on, with its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernels {
    /// Plain arrays: any processor. Only tests choose it (the engine prefers faer's
    /// products to unvectorised kernels): it runs the code NEON runs, on every machine.
    #[cfg_attr(not(test), allow(dead_code))]
    Scalar(Scalar),
    /// aarch64 NEON.
    Neon(Neon),
    /// x86-64 AVX2 + FMA.
    Avx2(Avx2),
    /// x86-64 AVX-512F.
    Avx512(Avx512),
}

/// What a convolution call may run on: faer's products alone, or the image kernels
/// too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// Only matrix products ([`Level::Portable`]).
    Portable,
    /// The image kernels on this instruction set (and matrix products).
    Kernels(Kernels),
}

impl Isa {
    /// The widest instruction set the processor has within `exec`'s cap.
    pub(crate) fn of(exec: crate::exec::Exec) -> Isa {
        Isa::at_most(exec.level())
    }

    /// The widest instruction set the processor has at or below `level`.
    pub(crate) fn at_most(level: Level) -> Isa {
        let avx512 = (level >= Level::Avx512).then(Avx512::detect).flatten();
        let avx2 = (level >= Level::Avx2).then(Avx2::detect).flatten();
        let neon = (level >= Level::Neon).then(Neon::detect).flatten();
        match (avx512, avx2, neon) {
            (Some(t), _, _) => Isa::Kernels(Kernels::Avx512(t)),
            (None, Some(t), _) => Isa::Kernels(Kernels::Avx2(t)),
            (None, None, Some(t)) => Isa::Kernels(Kernels::Neon(t)),
            (None, None, None) => Isa::Portable,
        }
    }

    /// The level this instruction set is ([`Level::Portable`] for [`Kernels::Scalar`],
    /// which only tests choose).
    pub(crate) fn level(self) -> Level {
        match self {
            Isa::Portable | Isa::Kernels(Kernels::Scalar(_)) => Level::Portable,
            Isa::Kernels(Kernels::Neon(_)) => Level::Neon,
            Isa::Kernels(Kernels::Avx2(_)) => Level::Avx2,
            Isa::Kernels(Kernels::Avx512(_)) => Level::Avx512,
        }
    }

    /// The image kernels' instruction set, if any.
    pub(crate) fn kernels(self) -> Option<Kernels> {
        match self {
            Isa::Portable => None,
            Isa::Kernels(k) => Some(k),
        }
    }
}

/// Declares the token of an instruction set: a proof that the processor has it,
/// made only by `detect` once [`Level`](crate::cpu::Level)`::$level` is seen; on
/// another `target_arch` than `$arch` the token cannot exist ([`unavailable!`]).
macro_rules! token {
    ($(#[$doc:meta])* $token:ident: $level:ident on $arch:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) struct $token(());

        impl $token {
            /// The token, when the processor has the instruction set.
            pub(crate) fn detect() -> Option<Self> {
                // The token is made only once the feature is seen.
                crate::cpu::Level::$level.is_supported().then_some($token(()))
            }
        }

        #[cfg(not(target_arch = $arch))]
        $crate::nn::kernels::unavailable!($token);
    };
}
use token;

/// Implements [`Simd`] for a token that cannot exist on this target (its `detect`
/// returns `None` here), so that generic code compiles for every target.
macro_rules! unavailable {
    ($token:ty) => {
        impl $crate::nn::kernels::Simd for $token {
            type V = [f32; $crate::nn::kernels::LANES];
            type Mask = u16;
            const PIXELS: usize = 1;
            const REGISTERS: usize = 1;

            fn vectorize<K: $crate::nn::kernels::Kernel>(self, _: K) -> K::Output {
                unreachable!("no token of an instruction set this target lacks")
            }
            fn splat(self, _: f32) -> Self::V {
                unreachable!()
            }
            fn add(self, _: Self::V, _: Self::V) -> Self::V {
                unreachable!()
            }
            fn sub(self, _: Self::V, _: Self::V) -> Self::V {
                unreachable!()
            }
            fn mul(self, _: Self::V, _: Self::V) -> Self::V {
                unreachable!()
            }
            fn div(self, _: Self::V, _: Self::V) -> Self::V {
                unreachable!()
            }
            fn fma(self, _: Self::V, _: Self::V, _: Self::V) -> Self::V {
                unreachable!()
            }
            fn relu(self, _: Self::V) -> Self::V {
                unreachable!()
            }
            fn clamp(self, _: Self::V, _: f32, _: f32) -> Self::V {
                unreachable!()
            }
            fn max_nan(self, _: Self::V, _: Self::V) -> Self::V {
                unreachable!()
            }
            fn pow2(self, _: Self::V) -> Self::V {
                unreachable!()
            }
            unsafe fn load_ptr(self, _: *const f32) -> Self::V {
                unreachable!()
            }
            unsafe fn store_ptr(self, _: *mut f32, _: Self::V) {
                unreachable!()
            }
            fn mask(self, _: u16) -> u16 {
                unreachable!()
            }
            unsafe fn mask_load(self, _: Self::V, _: u16, _: *const f32) -> Self::V {
                unreachable!()
            }
            unsafe fn store_first(self, _: *mut f32, _: Self::V, _: usize) {
                unreachable!()
            }
            fn deinterleave(self, _: Self::V, _: Self::V) -> (Self::V, Self::V) {
                unreachable!()
            }
            fn transpose(self, _: &mut [Self::V; 16]) {
                unreachable!()
            }
        }
    };
}
use unavailable;

impl Kernels {
    /// Runs `kernel` on this instruction set.
    pub(crate) fn run<K: Kernel>(self, kernel: K) -> K::Output {
        match self {
            Kernels::Scalar(s) => s.vectorize(kernel),
            Kernels::Neon(s) => s.vectorize(kernel),
            Kernels::Avx2(s) => s.vectorize(kernel),
            Kernels::Avx512(s) => s.vectorize(kernel),
        }
    }
}

/// Every kernel instruction set this processor has, [`Kernels::Scalar`] first: what
/// the kernels' tests run on.
#[cfg(test)]
pub(crate) fn every_kernels() -> Vec<Kernels> {
    let mut all = vec![Kernels::Scalar(Scalar::detect())];
    all.extend(Neon::detect().map(Kernels::Neon));
    all.extend(Avx2::detect().map(Kernels::Avx2));
    all.extend(Avx512::detect().map(Kernels::Avx512));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No vector instruction is left as a call: an intrinsic is a function of its own
    /// in the binary only where it was not inlined into a kernel — in a closure (which
    /// does not inherit its caller's instruction set) the optimiser declined to inline,
    /// as the dev profile's builds did, making every multiply-add a call. Read off this
    /// test binary's ELF symbol table (Linux; a stripped binary has none to read).
    #[cfg(all(
        target_os = "linux",
        target_pointer_width = "64",
        target_endian = "little"
    ))]
    #[test]
    fn every_vector_instruction_is_inlined_into_its_kernel() {
        let elf = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
        let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) as usize;
        let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()) as usize;
        // Section headers: (type, offset, size, link).
        let (table, size, count) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c));
        let sections: Vec<[usize; 4]> = (0..count)
            .map(|i| table + i * size)
            .map(|h| {
                [
                    u32_at(h + 4),
                    u64_at(h + 24),
                    u64_at(h + 32),
                    u32_at(h + 40),
                ]
            })
            .collect();
        let name_at = |strings: usize, at: usize| {
            let bytes = elf[strings + at..].iter().take_while(|&&b| b != 0);
            String::from_utf8_lossy(&bytes.copied().collect::<Vec<u8>>()).into_owned()
        };
        // Defined functions (type 2) of the symbol table (section type 2).
        let mut functions = Vec::new();
        for &[_, offset, len, link] in sections.iter().filter(|s| s[0] == 2) {
            let strings = sections[link][1];
            for sym in (offset..offset + len).step_by(24) {
                if elf[sym + 4] & 0xf == 2 && u16_at(sym + 6) != 0 {
                    functions.push(name_at(strings, u32_at(sym)));
                }
            }
        }
        assert!(!functions.is_empty() || sections.iter().all(|s| s[0] != 2));
        // Legacy-mangled paths of core's x86 and aarch64 intrinsic modules (`_xgetbv`,
        // which the processor detection calls, is in none of them).
        let modules = [
            "3x863avx",
            "3x864avx2",
            "3x863fma",
            "3x867avx512f",
            "3x864sse2",
        ];
        let modules: Vec<String> = (modules.into_iter().chain(["7aarch644neon"]))
            .map(|m| format!("4core9core_arch{m}"))
            .collect();
        let calls: Vec<&String> = functions
            .iter()
            .filter(|f| {
                modules.iter().any(|m| {
                    f.match_indices(m.as_str())
                        .any(|(at, _)| f[at + m.len()..].starts_with(|c: char| c.is_ascii_digit()))
                })
            })
            .collect();
        assert!(calls.is_empty(), "intrinsics left as calls: {calls:?}");
    }

    /// Runs every primitive on fixed values; the results must equal the scalar
    /// reference's bit for bit.
    struct Primitives;

    impl Kernel for Primitives {
        type Output = Vec<[f32; LANES]>;

        #[inline(always)]
        fn run<S: Simd>(self, s: S) -> Self::Output {
            primitives(s)
        }
    }

    #[inline(always)]
    fn primitives<S: Simd>(s: S) -> Vec<[f32; LANES]> {
        let a: [f32; LANES] = std::array::from_fn(|i| (i as f32 * 0.7).sin() * 3.0);
        let b: [f32; LANES] = std::array::from_fn(|i| (i as f32 * 1.3).cos() + 0.25);
        let mem: [f32; 40] = std::array::from_fn(|i| i as f32 - 20.5);
        {
            let (va, vb) = (s.load(&a), s.load(&b));
            let out = |v: S::V| {
                let mut o = [0.0; LANES];
                s.store(&mut o, v);
                o
            };
            let mut rows: [S::V; LANES] =
                std::array::from_fn(|r| s.load(&std::array::from_fn(|c| (r * 16 + c) as f32)));
            s.transpose(&mut rows);
            let (even, odd) = s.deinterleave(va, vb);
            // SAFETY: the masked lanes (every other one, from index 3) lie in `mem`.
            let masked =
                unsafe { s.mask_load(vb, s.mask(0b0101_1010_0011_1100), mem.as_ptr().add(3)) };
            let mut first = [9.0f32; LANES];
            // SAFETY: 5 values of an array of 16.
            unsafe { s.store_first(first.as_mut_ptr(), va, 5) };
            let mut v = vec![
                out(s.add(va, vb)),
                out(s.sub(va, vb)),
                out(s.mul(va, vb)),
                out(s.div(va, vb)),
                out(s.fma(va, vb, s.splat(0.5))),
                out(s.relu(va)),
                // NaN stays NaN; negative zero and infinities as `max(0, v)` gives them.
                out(s.relu(s.load(&std::array::from_fn(|i| {
                    [
                        f32::NAN,
                        -1.0,
                        -0.0,
                        0.0,
                        f32::INFINITY,
                        f32::NEG_INFINITY,
                        3.5,
                        -2.5,
                    ][i % 8]
                })))),
                out(even),
                out(odd),
                out(masked),
                first,
                // SAFETY: 16 values from index 7 of 40.
                out(unsafe { s.load_ptr(mem.as_ptr().add(7)) }),
            ];
            // A loop, not an iterator adapter: its closure would not inherit the
            // instruction set (see the test below).
            for &r in &rows {
                v.push(out(r));
            }
            // NaN in either operand: the new one propagates, the old one stays.
            v.push(out(s.max_nan(
                s.load(&std::array::from_fn(|i| [f32::NAN, 1.0, -1.0, 2.0][i % 4])),
                s.load(&std::array::from_fn(|i| [0.5, f32::NAN, 3.0, 1.0][i / 4])),
            )));
            v
        }
    }

    #[test]
    fn every_instruction_set_computes_the_scalar_primitives() {
        // Bit patterns, so that NaN equals NaN.
        let bits = |v: Vec<[f32; LANES]>| -> Vec<[u32; LANES]> {
            v.into_iter().map(|a| a.map(f32::to_bits)).collect()
        };
        let want = Kernels::Scalar(Scalar::detect()).run(Primitives);
        // The transpose and the de-interleave, checked against their definitions.
        assert!(want[6][0].is_nan() && want[6][1] == 0.0 && want[6][4] == f32::INFINITY);
        assert_eq!((want[6][5], want[6][6]), (0.0, 3.5));
        for (r, row) in want[12..12 + LANES].iter().enumerate() {
            assert!(row
                .iter()
                .enumerate()
                .all(|(c, &v)| v == (c * 16 + r) as f32));
        }
        let b2 = (2.0f32 * 1.3).cos() + 0.25;
        assert_eq!((want[7][9], want[8][9]), (b2, (3.0f32 * 1.3).cos() + 0.25));
        assert_eq!(want[9][3], 6.0 - 20.5, "lane 3 read from index 3 + 3");
        assert_eq!(want[10][5], 9.0, "store_first leaves the rest");
        let max = want[12 + LANES];
        assert!(
            max[0].is_nan() && max[4].is_nan() && max[5].is_nan(),
            "{max:?}"
        );
        assert_eq!(
            (max[1], max[2], max[3], max[10], max[15]),
            (1.0, 0.5, 2.0, 3.0, 2.0)
        );
        for kernels in every_kernels() {
            assert_eq!(
                bits(kernels.run(Primitives)),
                bits(want.clone()),
                "{kernels:?}"
            );
        }
    }
}
