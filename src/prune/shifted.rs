//! A stride-1 convolution's input Hessian from shifted channel correlations: what
//! [`Unfold`](super::unfold::Unfold) would multiply, with a third of the work for a
//! 3×3 kernel.
//!
//! With stride 1, kernel tap `a` reads the input pixels of a rectangle `Rₐ` (its
//! window, clipped to the image), and tap `b` reads them moved by `δ = b − a`
//! (scaled by the dilation). The Hessian's block of the two taps is therefore
//! `Σ_{p ∈ Rₐ} x[p] x[p + δ]ᵀ` (zero outside the image): it depends on the taps
//! only through `δ` and `Rₐ`. The windows' edges cut the image into a grid of cells;
//! each cell's correlations `Σ x[p] x[p + δ]ᵀ` for every `δ` a tap covering it needs
//! (one matrix product), summed over the calibration set, give every block as a sum
//! of the cells inside `Rₐ`. For `kh × kw` taps there are `kh · (2kw − 1)` shifts
//! with `δ` after `a` in raster order, against `(kh · kw)²` tap pairs: a 3×3
//! convolution's Hessian takes 13 channel correlations instead of 81 blocks (41 with
//! symmetry), and every product is of two `f32` values in `f64`, as before.

use crate::layer::{ActivationView, ConvWindow};
use faer::{Accum, Par};
use rayon::prelude::*;
use std::ops::Range;

/// Values a chunk's gathered operand holds at most (2 MiB of `f64`, about a core's
/// L2 cache: the product reads it back from there).
const CHUNK_VALUES: usize = 1 << 18;

/// Output positions a chunk holds at least and at most.
const CHUNK_POSITIONS: Range<usize> = 512..8192;

/// The running sums of one stride-1 convolution's shifted channel correlations,
/// per group and cell.
#[derive(Debug, Clone)]
pub(crate) struct Correlations {
    window: ConvWindow,
    /// Input channels per group.
    channels: usize,
    groups: usize,
    cells: Vec<Cell>,
    /// `[group][cell]`: `channels × (shifts · channels)` row-major, the value at
    /// `[c][k · channels + c']` being `Σ x[c, p] x[c', p + δₖ]` over the cell.
    sums: Vec<Vec<Vec<f64>>>,
}

/// A rectangle of input pixels that every window either holds or misses.
#[derive(Debug, Clone)]
struct Cell {
    rows: Range<usize>,
    cols: Range<usize>,
    /// Taps (`ky · kw + kx`) whose window holds the cell.
    taps: Vec<usize>,
    /// The tap moves `[dy, dx]` (in taps, `dy ≥ 0`) the cell's sums hold, in order.
    shifts: Vec<[isize; 2]>,
}

impl Correlations {
    /// Sums for a convolution of `window` over `channels` input channels, or `None`
    /// when its stride is not 1 (its taps read interleaved pixel lattices).
    pub fn new(window: &ConvWindow, channels: usize) -> Option<Self> {
        if window.stride != [1, 1] {
            return None;
        }
        let groups = window.groups.max(1);
        let per_group = channels / groups;
        let [kh, kw] = window.kernel;
        // Each tap's window clipped to the image, per axis.
        let spans = [0, 1].map(|a| {
            let (k, d, p, size) = (
                window.kernel[a] as isize,
                window.dilation[a] as isize,
                window.padding[a] as isize,
                window.size[a] as isize,
            );
            let out = (size + 2 * p - d * (k - 1)).max(0);
            (0..k)
                .map(|i| {
                    let start = i * d - p;
                    let clip = |v: isize| v.clamp(0, size) as usize;
                    clip(start)..clip(start + out)
                })
                .collect::<Vec<_>>()
        });
        let cuts = spans.clone().map(|spans| {
            let mut cuts: Vec<usize> = spans.iter().flat_map(|s| [s.start, s.end]).collect();
            cuts.sort_unstable();
            cuts.dedup();
            cuts
        });
        let mut cells = Vec::new();
        for rows in cuts[0].windows(2).map(|c| c[0]..c[1]) {
            for cols in cuts[1].windows(2).map(|c| c[0]..c[1]) {
                let holds =
                    |s: &Range<usize>, r: &Range<usize>| s.start <= r.start && r.end <= s.end;
                let taps: Vec<usize> = (0..kh * kw)
                    .filter(|&t| holds(&spans[0][t / kw], &rows) && holds(&spans[1][t % kw], &cols))
                    .collect();
                if taps.is_empty() {
                    continue;
                }
                let mut shifts: Vec<[isize; 2]> = taps
                    .iter()
                    .flat_map(|&a| (a..kh * kw).map(move |b| shift(a, b, kw)))
                    .collect();
                shifts.sort_unstable();
                shifts.dedup();
                cells.push(Cell {
                    rows: rows.clone(),
                    cols,
                    taps,
                    shifts,
                });
            }
        }
        let sums = (0..groups)
            .map(|_| {
                let size = |c: &Cell| per_group * per_group * c.shifts.len();
                cells.iter().map(|c| zeros(size(c))).collect()
            })
            .collect();
        Some(Correlations {
            window: *window,
            channels: per_group,
            groups,
            cells,
            sums,
        })
    }

    /// Values down one column of the unfolded input: `channels · kh · kw` per group.
    pub fn rows(&self) -> usize {
        self.channels * self.window.kernel[0] * self.window.kernel[1]
    }

    /// Whether `x` has the channels and planes of the window the sums were made for.
    pub fn suits(&self, x: ActivationView<'_>) -> bool {
        x.channels == self.channels * self.groups
            && x.spatial == self.window.size[0] * self.window.size[1]
    }

    /// Adds the correlations of batch `x` (its channels and planes those of the
    /// window `new` was given), in `f64`: one group on every thread (with `operands`
    /// as its buffers), or several groups a group per thread.
    pub fn add(&mut self, x: ActivationView<'_>, operands: &mut Operands) {
        let at = |g: usize| Group {
            x,
            window: &self.window,
            cells: &self.cells,
            first: g * self.channels,
            channels: self.channels,
        };
        match self.sums.as_mut_slice() {
            [sums] => at(0).add(sums, operands, true),
            groups => groups.par_iter_mut().enumerate().for_each(|(g, sums)| {
                at(g).add(sums, &mut Operands::default(), false);
            }),
        }
    }

    /// The Hessians, `groups` matrices of `rows × rows` row-major (`rows = channels ·
    /// kh · kw`, row `c · kh · kw + tap`), both triangles, each block the sum of the
    /// cells inside its first tap's window.
    pub fn hessians(&self) -> Vec<f64> {
        let [kh, kw] = self.window.kernel;
        let (taps, c) = (kh * kw, self.channels);
        let row = c * taps;
        let mut h = zeros(self.groups * row * row);
        for (sums, h) in self.sums.iter().zip(h.chunks_mut(row * row)) {
            // Row (c1, ta), columns (c2, tb) with tb ≥ ta: the cells ta's window holds.
            h.par_chunks_mut(row).enumerate().for_each(|(r1, h)| {
                let (c1, ta) = (r1 / taps, r1 % taps);
                for (cell, sum) in self.cells.iter().zip(sums) {
                    if !cell.taps.contains(&ta) {
                        continue;
                    }
                    let k = cell.shifts.len();
                    let sum = &sum[c1 * k * c..(c1 + 1) * k * c];
                    for tb in ta..taps {
                        let at = cell.shifts.binary_search(&shift(ta, tb, kw));
                        let at = at.expect("every shift a covering tap needs is summed");
                        for (v, &s) in h[tb..].iter_mut().step_by(taps).zip(&sum[at * c..]) {
                            *v += s;
                        }
                    }
                }
            });
            // The others (tb < ta) from their transposes; within a tap's own block the
            // upper half wins, as for every other Hessian.
            mirror(h, row, |i, j| (j % taps, j) < (i % taps, i));
        }
        h
    }
}

/// The gathered operand of a cell's product, kept between batches: the cell's
/// pixels moved by each shift, `(shifts · channels) × positions` (the unmoved ones
/// among them).
#[derive(Debug, Default)]
pub(crate) struct Operands {
    moved: Vec<f64>,
}

/// One group's channels of a batch, cut into cells.
struct Group<'a> {
    x: ActivationView<'a>,
    window: &'a ConvWindow,
    cells: &'a [Cell],
    /// The group's first channel and its channel count.
    first: usize,
    channels: usize,
}

impl Group<'_> {
    /// Adds each cell's correlations to `sums`, a chunk of lines at a time; gathers
    /// and products on every thread when `parallel`.
    fn add(&self, sums: &mut [Vec<f64>], operands: &mut Operands, parallel: bool) {
        let c = self.channels;
        let par = if parallel { Par::rayon(0) } else { Par::Seq };
        for (cell, sum) in self.cells.iter().zip(sums) {
            let k = cell.shifts.len();
            // A tap's move to itself: every cell has it.
            let still = cell
                .shifts
                .binary_search(&[0, 0])
                .expect("no move is a shift");
            let width = cell.cols.len();
            let lines = self.x.batch * cell.rows.len();
            let positions = (CHUNK_VALUES / ((k + 1) * c).max(1))
                .clamp(CHUNK_POSITIONS.start, CHUNK_POSITIONS.end);
            let per_chunk = (positions / width.max(1)).max(1);
            for start in (0..lines).step_by(per_chunk) {
                let chunk = start..(start + per_chunk).min(lines);
                let len = chunk.len() * width;
                let moved = &mut operands.moved;
                moved.resize(k * c * len, 0.0);
                let gather = Gather {
                    x: self.x,
                    window: self.window,
                    cell,
                    first: self.first,
                    lines: chunk,
                };
                let shifted = |(r, row): (usize, &mut [f64])| {
                    gather.fill(r % c, cell.shifts[r / c], row);
                };
                if parallel {
                    moved.par_chunks_mut(len).enumerate().for_each(shifted);
                } else {
                    moved.chunks_mut(len).enumerate().for_each(shifted);
                }
                // The cell's own pixels: the rows of the shift [0, 0].
                let pixels = &moved[still * c * len..(still + 1) * c * len];
                // sum (column-major k·c × c) += moved · pixelsᵀ: row-major [c][k·c + c'].
                faer::linalg::matmul::matmul(
                    faer::MatMut::from_column_major_slice_mut(sum, k * c, c),
                    Accum::Add,
                    faer::MatRef::from_row_major_slice(moved, k * c, len),
                    faer::MatRef::from_row_major_slice(pixels, c, len).transpose(),
                    1.0,
                    par,
                );
            }
        }
    }
}

/// `n` zeros, written: `vec![0.0; n]` maps a large vector to the shared zero page,
/// and the first product that reads and then adds to it faults twice per page,
/// with a TLB shootdown on every thread.
pub(super) fn zeros(n: usize) -> Vec<f64> {
    let mut v = Vec::with_capacity(n);
    v.resize(n, 0.0);
    v
}

/// Side of the tiles [`mirror`] copies in.
const TILE: usize = 64;

/// Sets each `h[i][j]` (row-major, `row × row`) for which `from_transpose(i, j)` to
/// `h[j][i]`, in tiles, to read and write within the cache.
pub(super) fn mirror(h: &mut [f64], row: usize, from_transpose: impl Fn(usize, usize) -> bool) {
    for ti in (0..row).step_by(TILE) {
        for tj in (0..row).step_by(TILE) {
            for i in ti..(ti + TILE).min(row) {
                for j in tj..(tj + TILE).min(row) {
                    if from_transpose(i, j) {
                        h[i * row + j] = h[j * row + i];
                    }
                }
            }
        }
    }
}

/// The move from tap `a` to tap `b` (`b` at or after `a` in raster order), in taps.
fn shift(a: usize, b: usize, kw: usize) -> [isize; 2] {
    [
        (b / kw) as isize - (a / kw) as isize,
        (b % kw) as isize - (a % kw) as isize,
    ]
}

/// Copies a cell's pixels of a few lines (image and row) of one channel, moved.
struct Gather<'a> {
    x: ActivationView<'a>,
    window: &'a ConvWindow,
    cell: &'a Cell,
    /// The group's first channel.
    first: usize,
    /// `image · rows + row` in the cell.
    lines: Range<usize>,
}

impl Gather<'_> {
    /// Channel `c` of the group at the cell's pixels moved by `shift` taps (zero
    /// outside the image), line after line.
    fn fill(&self, c: usize, shift: [isize; 2], out: &mut [f64]) {
        let [h, w] = self.window.size;
        let dy = shift[0] * self.window.dilation[0] as isize;
        let dx = shift[1] * self.window.dilation[1] as isize;
        let (rows, cols) = (&self.cell.rows, &self.cell.cols);
        // The cell's columns whose moved pixel is inside the image.
        let lo = (cols.start as isize).max(-dx).min(cols.end as isize);
        let hi = (cols.end as isize).min(w as isize - dx).max(lo);
        let inside = (lo - cols.start as isize) as usize..(hi - cols.start as isize) as usize;
        let spatial = self.x.spatial;
        let channel = self.first + c;
        // The first line's image and row, counted on (no division per line).
        let (mut n, mut r) = (self.lines.start / rows.len(), self.lines.start % rows.len());
        for out in out.chunks_exact_mut(cols.len()) {
            let y = (rows.start + r) as isize + dy;
            if (0..h as isize).contains(&y) && !inside.is_empty() {
                // The first moved pixel inside the image (`lo + dx ≥ 0`).
                let start =
                    (n * self.x.channels + channel) * spatial + y as usize * w + (lo + dx) as usize;
                let from = &self.x.data[start..start + inside.len()];
                out[..inside.start].fill(0.0);
                for (o, &v) in out[inside.clone()].iter_mut().zip(from) {
                    *o = f64::from(v);
                }
                out[inside.end..].fill(0.0);
            } else {
                out.fill(0.0);
            }
            r += 1;
            if r == rows.len() {
                (n, r) = (n + 1, 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::unfold::Unfold;

    /// The unfolded product `X Xᵀ` per group, both triangles.
    fn unfolded(x: ActivationView<'_>, window: &ConvWindow) -> Vec<f64> {
        let unfold = Unfold::new(x, Some(*window)).unwrap();
        let (row, len) = (unfold.rows(), unfold.columns());
        let mut h = vec![0.0; unfold.groups() * row * row];
        let mut cols = vec![0.0f64; row * len];
        for (g, h) in h.chunks_mut(row * row).enumerate() {
            unfold.fill(g, 0..unfold.lines(), &mut cols, false);
            for i in 0..row {
                for j in 0..row {
                    let (a, b) = (&cols[i * len..][..len], &cols[j * len..][..len]);
                    h[i * row + j] = a.iter().zip(b).map(|(a, b)| a * b).sum();
                }
            }
        }
        h
    }

    #[test]
    fn the_shifted_sums_are_the_unfolded_products() {
        // Kernels, paddings and dilations whose windows cut the image in many ways:
        // windows larger than the padding, windows that leave pixels unread, a
        // window that reads nothing, grouped channels, non-square everything.
        // (kernel, padding, dilation, groups, size)
        type Case = ([usize; 2], [usize; 2], [usize; 2], usize, [usize; 2]);
        let cases: &[Case] = &[
            ([3, 3], [1, 1], [1, 1], 1, [6, 5]),
            ([3, 3], [0, 0], [1, 1], 2, [5, 7]),
            ([5, 5], [2, 2], [1, 1], 1, [7, 6]),
            ([3, 3], [2, 2], [2, 2], 1, [6, 6]),
            ([1, 3], [0, 1], [1, 1], 1, [4, 5]),
            ([3, 2], [1, 0], [2, 1], 2, [7, 4]),
            ([7, 7], [3, 3], [1, 1], 1, [3, 3]),
            ([3, 3], [0, 2], [3, 1], 1, [7, 4]),
            ([3, 3], [0, 0], [1, 1], 1, [2, 5]),
        ];
        for &(kernel, padding, dilation, groups, size) in cases {
            let (batch, channels) = (3, 4 * groups);
            let data: Vec<f32> = (0..batch * channels * size[0] * size[1])
                .map(|i| ((i * 7919 % 101) as f32 - 50.0) / 17.0)
                .collect();
            let x = ActivationView::new(&data, batch, channels, size[0] * size[1]).unwrap();
            let window = ConvWindow {
                kernel,
                stride: [1, 1],
                padding,
                dilation,
                groups,
                size,
            };
            let mut sums = Correlations::new(&window, channels).unwrap();
            // Two batches, the second the first again.
            let mut operands = Operands::default();
            sums.add(x, &mut operands);
            sums.add(x, &mut operands);
            let want = unfolded(x, &window);
            let got = sums.hessians();
            assert_eq!(got.len(), want.len());
            let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - 2.0 * w).abs() <= 1e-12 * scale,
                    "{kernel:?} {padding:?} {dilation:?} {groups} {size:?}: [{i}] {g} vs {}",
                    2.0 * w
                );
            }
        }
    }

    #[test]
    fn a_strided_convolution_is_not_summed_by_shifts() {
        let window = ConvWindow {
            kernel: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
            dilation: [1, 1],
            groups: 1,
            size: [8, 8],
        };
        assert!(Correlations::new(&window, 4).is_none());
    }
}
