//! Steps 2 and 3 of [`sparse_conv`](super::sparse_conv): the sums of a tile of
//! positions over the non-zero weights, and the store.

use super::*;
use crate::nn::kernels::activation::activate;

/// Positions `first..first + count` of [`sparse_conv`], output blocks `blocks`, as a
/// [`Kernel`].
pub(super) struct SparseTile<'a> {
    pub(super) cols: &'a [f32],
    pub(super) planes: Planes,
    pub(super) w: &'a SparseConv,
    /// Each non-zero's offset in `cols`, and value.
    pub(super) entries: &'a [Entry],
    pub(super) first: usize,
    pub(super) count: usize,
    pub(super) blocks: std::ops::Range<usize>,
    pub(super) store: Store<'a>,
    /// The output, of shape `ys`; this task writes only its positions and blocks.
    pub(super) y: SharedOut,
    pub(super) ys: Blocked,
    /// This thread's scratch for the partial sums.
    pub(super) sums: &'a mut Vec<f32>,
}

impl Kernel for SparseTile<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        match self.count.div_ceil(LANES) {
            4 => sparse_tile::<S, 4>(s, self),
            3 => sparse_tile::<S, 3>(s, self),
            2 => sparse_tile::<S, 2>(s, self),
            _ => sparse_tile::<S, 1>(s, self),
        }
    }
}

/// [`SparseTile`] with `V` vectors of positions (the last one maybe partly past the
/// tile's positions: those lanes are computed and not stored).
#[inline(always)]
pub(super) fn sparse_tile<S: Simd, const V: usize>(s: S, t: SparseTile<'_>) {
    let SparseTile {
        cols,
        planes,
        w,
        entries,
        first,
        count,
        blocks,
        store,
        y,
        ys,
        sums,
    } = t;
    let rows = (blocks.start * LANES)..(blocks.end * LANES);
    // Not zeroed: the first chunk writes every row's sums (zeros where it has no
    // non-zero) before any chunk reads them.
    if sums.len() < rows.len() * TILE {
        sums.resize(rows.len() * TILE, 0.0);
    }
    let base = cols[first..].as_ptr();
    // Output channels side by side while their accumulators (and a broadcast weight
    // each) fit in registers: two with AVX-512 (and the portable level), one with
    // AVX2 and NEON, where two would spill.
    let sums = &mut sums[..rows.len() * TILE];
    if 2 * V + 2 <= S::REGISTERS {
        sum_rows::<S, V, 2>(s, base, w, entries, rows.start, sums);
    } else {
        sum_rows::<S, V, 1>(s, base, w, entries, rows.start, sums);
    }
    // Where each position of the tile goes in the output's first block (`None` for
    // the positions computed and not stored); block `ob` is `ob · h · w · 16` on.
    let image = ys.h * ys.w * LANES;
    let places: [Option<usize>; TILE] = std::array::from_fn(|i| {
        let (img, oy, ox) = planes.output(first + i).filter(|_| i < count)?;
        Some(img * ys.blocks() * image + (oy * ys.w + ox) * LANES)
    });
    for (b, ob) in blocks.enumerate() {
        let scale = s.load(store.scale[ob * LANES..][..LANES].try_into().expect("16"));
        let shift = s.load(store.shift[ob * LANES..][..LANES].try_into().expect("16"));
        for v in 0..V {
            let mut lanes = [s.zero(); LANES];
            for (lane, l) in lanes.iter_mut().enumerate() {
                let at = (b * LANES + lane) * TILE + v * LANES;
                *l = s.load(sums[at..][..LANES].try_into().expect("16 lanes"));
            }
            s.transpose(&mut lanes);
            for (&value, place) in lanes.iter().zip(&places[v * LANES..][..LANES]) {
                let Some(place) = place else {
                    continue;
                };
                let o = place + ob * image;
                // SAFETY: position `(oy, ox)` of block `ob` belongs to this task alone,
                // and `o` is inside the output of shape `ys` (and the residual, of the
                // same shape).
                unsafe {
                    let residual = store.residual.map(|r| r.as_ptr().add(o));
                    let value = finish(s, value, (scale, shift), residual);
                    let value = activate(s, store.activation, value);
                    s.store_ptr(y.at(o), value);
                }
            }
        }
    }
}

/// Step 2 for the output channels `first..first + sums.len() / TILE`: into `sums`
/// (`[channel][TILE]`), the sums of the tile's positions at `base` over every chunk's
/// non-zeros, `R` channels at a time (`R` divides sixteen).
#[inline(always)]
fn sum_rows<S: Simd, const V: usize, const R: usize>(
    s: S,
    base: *const f32,
    w: &SparseConv,
    entries: &[Entry],
    first: usize,
    sums: &mut [f32],
) {
    for k in 0..w.chunks() {
        for (i, sums) in sums.chunks_exact_mut(R * TILE).enumerate() {
            let row = k * w.rows + first + i * R;
            let from: [usize; R] = std::array::from_fn(|r| w.starts[row + r] as usize);
            let to: [usize; R] = std::array::from_fn(|r| w.starts[row + r + 1] as usize);
            if k > 0 && from[0] == to[R - 1] {
                continue;
            }
            // The first chunk starts from zero (and writes the rows it has nothing for).
            // Loops, not closures: a closure does not inherit the instruction set.
            let mut acc = [[s.zero(); V]; R];
            if k > 0 {
                for (r, acc) in acc.iter_mut().enumerate() {
                    for (v, acc) in acc.iter_mut().enumerate() {
                        let at = r * TILE + v * LANES;
                        *acc = s.load(sums[at..][..LANES].try_into().expect("16 lanes"));
                    }
                }
            }
            let lists: [&[Entry]; R] = std::array::from_fn(|r| &entries[from[r]..to[r]]);
            // The rows' non-zeros side by side (independent sums), then each one's rest.
            let common = lists.iter().map(|l| l.len()).min().unwrap_or(0);
            let heads = lists.map(|l| &l[..common]);
            for n in 0..common {
                for (acc, head) in acc.iter_mut().zip(&heads) {
                    let e = head[n];
                    let wv = s.splat(e.value);
                    // SAFETY: every offset plus `first + V·16` is at most `cols.len()`:
                    // the tile's vectors end before the plane's last position rounded
                    // up to 16, and `sparse_conv` checked that the farthest offset from
                    // there is inside `cols`.
                    let p = unsafe { base.add(e.offset as usize) };
                    for (v, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: as above.
                        *acc = s.fma(wv, unsafe { s.load_ptr(p.add(v * LANES)) }, *acc);
                    }
                }
            }
            for (acc, list) in acc.iter_mut().zip(&lists) {
                for e in &list[common..] {
                    let wv = s.splat(e.value);
                    // SAFETY: as above.
                    let p = unsafe { base.add(e.offset as usize) };
                    for (v, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: as above.
                        *acc = s.fma(wv, unsafe { s.load_ptr(p.add(v * LANES)) }, *acc);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (v, acc) in acc.iter().enumerate() {
                    let at = r * TILE + v * LANES;
                    s.store((&mut sums[at..][..LANES]).try_into().expect("16"), *acc);
                }
            }
        }
    }
}
