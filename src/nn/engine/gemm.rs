//! Single-precision matrix products on row-major slices, backed by faer.

use crate::nn::runtime::{team, Threads};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

/// faer's name for `t`; one thread inside a pass's team (faer's threads are rayon's,
/// which the team holds: see [`team`]).
fn par(t: Threads) -> Par {
    match t {
        Threads::Rayon if !team::active() => Par::rayon(0),
        _ => Par::Seq,
    }
}

/// `c[m×n] = a[m×k] · b[k×n]`, all row-major.
pub(crate) fn gemm(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, t: Threads) {
    debug_assert_eq!(c.len(), m * n);
    let a = MatRef::from_row_major_slice(a, m, k);
    let b = MatRef::from_row_major_slice(b, k, n);
    let c = MatMut::from_row_major_slice_mut(c, m, n);
    matmul(c, Accum::Replace, a, b, 1.0f32, par(t));
}

/// `c[m×n] (+)= a[m×k] · b`, where row `r` of `b` starts at `b[r·ldb]` (`ldb ≥ n`):
/// the rows of a strided view. Adds to `c` when `accumulate`, else overwrites it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided_b(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    ldb: usize,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    t: Threads,
) {
    debug_assert_eq!(c.len(), m * n);
    let a = MatRef::from_row_major_slice(a, m, k);
    let b = MatRef::from_row_major_slice_with_stride(b, k, n, ldb);
    let c = MatMut::from_row_major_slice_mut(c, m, n);
    let accum = if accumulate {
        Accum::Add
    } else {
        Accum::Replace
    };
    matmul(c, accum, a, b, 1.0f32, par(t));
}

/// `c[m×n] = a[m×k] · bᵀ`, with `b` stored row-major as `[n×k]`.
pub(crate) fn gemm_bt(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    t: Threads,
) {
    debug_assert_eq!(c.len(), m * n);
    let a = MatRef::from_row_major_slice(a, m, k);
    let b = MatRef::from_row_major_slice(b, n, k).transpose();
    let c = MatMut::from_row_major_slice_mut(c, m, n);
    matmul(c, Accum::Replace, a, b, 1.0f32, par(t));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_products_match_the_definition() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2x3
        let b = [1.0, 0.0, 2.0, 1.0, 0.0, 3.0]; // 3x2
        let mut c = [0.0; 4];
        gemm(&mut c, &a, &b, 2, 3, 2, Threads::Seq);
        assert_eq!(c, [5.0, 11.0, 14.0, 23.0]);
        let bt = [1.0, 2.0, 0.0, 0.0, 1.0, 3.0]; // b transposed, 2x3
        gemm_bt(&mut c, &a, &bt, 2, 3, 2, Threads::Rayon);
        assert_eq!(c, [5.0, 11.0, 14.0, 23.0]);
    }
}
