//! SparseGPT (Frantar & Alistarh, 2023; `method.md`, "Activation-aware pruners"): a
//! layer-wise optimal-brain-surgeon step that chooses the weights to remove from the
//! inverse Hessian of the layer's inputs and updates the weights it keeps.

use super::mask::decide_masks;
use super::rows::{observe_calibration, prune_sequentially, row_of, row_plan_methods};
use super::rows::{Decision, InputTaps, RowPlan};
use super::shifted::{mirror, zeros, Correlations, Operands};
use super::unfold::Unfold;
use super::{Masks, Pruner, SparsityReport};
use crate::data::CalibrationData;
use crate::error::{Error, Result};
use crate::layer::{ActivationView, Network, Observer, Params, Tap};
use faer::linalg::matmul::triangular::BlockStructure;
use faer::linalg::matmul::{matmul, triangular};
use faer::linalg::triangular_inverse;
use faer::{Accum, Mat, Par, Side};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Columns SparseGPT processes together (the reference's `blocksize`).
pub const BLOCK: usize = 128;

/// Dampening added to the Hessian's diagonal, as a fraction of its mean (`percdamp`).
pub const DAMPENING: f64 = 0.01;

/// Each convolution's and linear layer's input Hessian `H = Σ x xᵀ` over the columns
/// of its unfolded input (one per output position and image), per group of a grouped
/// convolution: what [`SparseGptPruner`] prunes with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hessians {
    layers: BTreeMap<String, LayerHessian>,
}

#[derive(Debug, Clone, PartialEq)]
struct LayerHessian {
    /// Rows of one group's weights: `in / groups · kh · kw`.
    row: usize,
    /// `groups` matrices of `row × row`, row-major.
    h: Vec<f64>,
    /// Columns summed.
    columns: usize,
}

impl Hessians {
    /// One eval pass of `model` over every batch of `data`, summing each layer's
    /// `x xᵀ` over its unfolded input columns.
    pub fn measure<I>(model: &dyn Network<I>, data: &dyn CalibrationData<I>) -> Result<Self> {
        let mut collector = Collector::default();
        observe_calibration(model, data, &mut collector)?;
        collector.finish()
    }

    /// [`Hessians::measure`] for layer `layer` alone.
    fn measure_layer<I>(
        model: &dyn Network<I>,
        data: &dyn CalibrationData<I>,
        layer: &str,
    ) -> Result<Self> {
        let mut collector = Collector {
            taps: InputTaps::of(layer),
            ..Collector::default()
        };
        observe_calibration(model, data, &mut collector)?;
        collector.finish()
    }

    /// Layer `name`'s Hessians (its path: `layer1.0.conv1`), `groups` matrices of
    /// `row × row` in row-major order, and how many columns they sum.
    pub fn layer(&self, name: &str) -> Option<(&[f64], usize)> {
        self.layers.get(name).map(|l| (l.h.as_slice(), l.columns))
    }
}

/// Output positions unfolded and multiplied at a time: enough for a fast matrix
/// product, few enough to keep the unfolded chunk in cache-sized pieces.
const CHUNK: usize = 2048;

#[derive(Default)]
struct Collector {
    taps: InputTaps,
    layers: BTreeMap<String, LayerHessian>,
    /// Stride-1 convolutions' sums, made Hessians at the end.
    shifted: BTreeMap<String, (Correlations, usize)>,
    error: Option<Error>,
    buffers: Buffers,
}

impl Collector {
    /// Each unfolded Hessian's lower triangle from its upper one (only the upper is
    /// summed); the shifted ones as they come, both triangles.
    fn finish(mut self) -> Result<Hessians> {
        if let Some(e) = self.error {
            return Err(e);
        }
        for layer in self.layers.values_mut() {
            let row = layer.row;
            for h in layer.h.chunks_mut(row * row) {
                mirror(h, row, |i, j| j < i);
            }
        }
        // Both triangles already.
        for (name, (sums, columns)) in std::mem::take(&mut self.shifted) {
            let h = sums.hessians();
            let row = sums.rows();
            self.layers.insert(name, LayerHessian { row, h, columns });
        }
        Ok(Hessians {
            layers: self.layers,
        })
    }
}

impl Observer for Collector {
    fn wants(&self, tap: &Tap<'_>) -> bool {
        self.taps.wants(tap)
    }

    fn observe(&mut self, tap: &Tap<'_>, x: ActivationView<'_>) {
        let at = || format!("input of \"{}\"", tap.layer);
        let unfold = match Unfold::new(x, tap.window) {
            Ok(unfold) => unfold,
            Err(why) => {
                self.error.get_or_insert_with(|| Error::invalid(at(), why));
                return;
            }
        };
        let (row, groups) = (unfold.rows(), unfold.groups());
        // A stride-1 window larger than 1×1: summed from shifted correlations.
        let window = tap.window.filter(|w| w.kernel != [1, 1]);
        if let Some(sums) = window.and_then(|w| Correlations::new(&w, x.channels)) {
            let (sums, columns) = self
                .shifted
                .entry(tap.layer.to_string())
                .or_insert((sums, 0));
            if !sums.suits(x) {
                self.error.get_or_insert_with(|| {
                    Error::invalid(at(), "its shape changed between batches")
                });
                return;
            }
            sums.add(x, &mut self.buffers.operands);
            *columns += unfold.columns();
            return;
        }
        let layer = self
            .layers
            .entry(tap.layer.to_string())
            .or_insert_with(|| LayerHessian {
                row,
                h: zeros(groups * row * row),
                columns: 0,
            });
        if layer.row != row || layer.h.len() != groups * row * row {
            self.error
                .get_or_insert_with(|| Error::invalid(at(), "its shape changed between batches"));
            return;
        }
        if row < SMALL_ROWS {
            // Many small groups (a depthwise convolution): a group per thread.
            let h = layer.h.par_chunks_mut(row * row).enumerate();
            h.for_each(|(g, h)| add_products(&unfold, g, h, &mut Buffers::default()));
        } else {
            for (g, h) in layer.h.chunks_mut(row * row).enumerate() {
                add_products(&unfold, g, h, &mut self.buffers);
            }
        }
        layer.columns += unfold.columns();
    }
}

/// Below this many rows a group's products are too small to spread over threads.
const SMALL_ROWS: usize = 64;

/// The unfolded columns of one chunk; kept between layers, grown to the largest size.
#[derive(Default)]
struct Buffers {
    columns: Vec<f64>,
    operands: Operands,
}

/// Adds to `h` (row-major, upper triangle) `X Xᵀ` over group `g`'s unfolded columns
/// of `unfold`, a chunk of [`CHUNK`] positions at a time, in `f64` (each product of two
/// `f32` values is exact in `f64`): the lower triangle of each chunk's product, added
/// to `h`'s upper triangle read column-major. A group of [`SMALL_ROWS`] rows or more
/// on every thread; a smaller one (a depthwise or a thin convolution,
/// squeeze-excitation) on the calling thread.
fn add_products(unfold: &Unfold<'_>, g: usize, h: &mut [f64], buffers: &mut Buffers) {
    let row = unfold.rows();
    let small = row < SMALL_ROWS;
    let per_chunk = (CHUNK / unfold.line_len().max(1)).max(1);
    let columns = &mut buffers.columns;
    for start in (0..unfold.lines()).step_by(per_chunk) {
        let lines = start..(start + per_chunk).min(unfold.lines());
        let len = lines.len() * unfold.line_len();
        columns.resize(row * len, 0.0);
        unfold.fill(g, lines, columns, !small);
        let x = faer::MatRef::from_row_major_slice(columns, row, len);
        let sum = faer::MatMut::from_column_major_slice_mut(&mut *h, row, row);
        let par = if small { Par::Seq } else { Par::rayon(0) };
        lower_gram(sum, x, Accum::Add, 1.0, par);
    }
}

/// The lower triangle of `x xᵀ` into `dst` (added to it or replacing it).
fn lower_gram<T: faer::traits::ComplexField>(
    dst: faer::MatMut<'_, T>,
    x: faer::MatRef<'_, T>,
    beta: Accum,
    one: T,
    par: Par,
) {
    triangular::matmul(
        dst,
        BlockStructure::TriangularLower,
        beta,
        x,
        BlockStructure::Rectangular,
        x.transpose(),
        BlockStructure::Rectangular,
        one,
        par,
    )
}

/// SparseGPT's pruner (`method.md`; IST-DASLab/sparsegpt `SparseGPT.fasterprune`),
/// per layer and per group of a grouped convolution, on `W = weight.flatten(1)`:
/// columns whose `H_ii` is 0 are zeroed (and `H_ii := 1`); `H += 1 % of its mean
/// diagonal`; `U` is the upper Cholesky factor of `H⁻¹`; in blocks of 128 columns the
/// weights to remove are those with the smallest `w² / U_ii²` (unstructured: every
/// value of the block at or under the value at rank `⌊s · block size⌋`; N:M: the
/// `M − N` smallest of every `M` consecutive columns of a row), and each column's
/// error `(w − q) / U_ii` is subtracted from the later columns along `U`'s row. The
/// kept weights change: [`Pruner::prune`] writes them; [`Pruner::masks`] says which
/// weights it sets to zero.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseGptPruner {
    plan: RowPlan,
    /// Shared: a network's Hessians can take a gigabyte, and every sparsity of a
    /// study prunes with the same ones.
    hessians: Arc<Hessians>,
}

impl SparseGptPruner {
    /// Removes `sparsity` of every layer, with `hessians` (or an `Arc` of them, to
    /// share them between pruners without a copy).
    pub fn new(sparsity: f64, hessians: impl Into<Arc<Hessians>>) -> Self {
        SparseGptPruner {
            plan: RowPlan::new(sparsity),
            hessians: hessians.into(),
        }
    }

    row_plan_methods!();

    /// Prunes `model` layer by layer, each layer's Hessian measured on `model` with
    /// the layers before it already pruned and updated (OBC's and SparseGPT's
    /// sequential mode), instead of on the dense network: one pass over `data` per
    /// layer in scope, in the network's parameter order (its forward order, for the
    /// bundled networks). The pruner's own Hessians are not used. Returns what
    /// [`Pruner::prune`] does.
    ///
    /// ```
    /// use reflow::layer::Params;
    /// use reflow::models::{ResNet, ResNetConfig};
    /// use reflow::nn::Tensor4;
    /// use reflow::prune::{Hessians, SparseGptPruner};
    ///
    /// let mut net = ResNet::new(ResNetConfig::cifar_resnet(8)?)?;
    /// net.visit_params_mut(&mut |p| {
    ///     if p.shape.len() == 4 {
    ///         for (i, w) in p.data.iter_mut().enumerate() {
    ///             *w = ((i * 37 % 17) as f32 - 8.0) / 32.0;
    ///         }
    ///     }
    /// });
    /// let batches = vec![Tensor4::from_shape_fn((16, 3, 32, 32), |(n, c, y, x)| {
    ///     ((n * 7 + c * 5 + y * 3 + x) % 11) as f32 / 11.0 - 0.5
    /// })];
    /// // 16 images are fewer than the classifier's 64 input columns: it stays dense.
    /// let pruner = SparseGptPruner::new(0.5, Hessians::default()).exclude("fc");
    /// let (masks, _) = pruner.prune_sequential(&mut net, &batches)?;
    /// let mask = masks.get("layer1.0.conv1.weight").unwrap();
    /// assert!((mask.pruned_count() as f64 / mask.len() as f64 - 0.5).abs() < 0.05);
    /// # Ok::<(), reflow::Error>(())
    /// ```
    pub fn prune_sequential<I>(
        &self,
        model: &mut dyn Network<I>,
        data: &dyn CalibrationData<I>,
    ) -> Result<(Masks, SparsityReport)> {
        prune_sequentially(model, &self.plan, |net, t| {
            match self.plan.leaves_dense(t.shape) {
                true => Ok(None),
                false => {
                    let hessians = Hessians::measure_layer(net, data, t.layer)?;
                    self.solve(&hessians, t.name, t.shape, t.values)
                }
            }
        })
    }

    /// The same pruner with `hessians` (measured after it was made).
    pub fn with_hessians(mut self, hessians: impl Into<Arc<Hessians>>) -> Self {
        self.hessians = hessians.into();
        self
    }

    /// The pruned and updated weights of tensor `name` (`shape`, `data`) with
    /// `hessians`, and which of them are set to zero; `None` for a tensor N:M leaves
    /// dense.
    fn solve(
        &self,
        hessians: &Hessians,
        name: &str,
        shape: &[usize],
        data: &[f32],
    ) -> Result<Decision> {
        let layer = name.strip_suffix(".weight").unwrap_or("");
        let at = |reason: String| Error::invalid(format!("\"{name}\""), reason);
        let hessian = hessians.layers.get(layer).ok_or_else(|| {
            at("no input Hessian: the layer reported no input during the calibration pass".into())
        })?;
        let out = shape.first().copied().unwrap_or(1);
        let row = row_of(shape);
        if self.plan.leaves_dense(shape) {
            return Ok(None);
        }
        let groups = hessian.h.len() / (row * row).max(1);
        if hessian.row != row || groups == 0 || !out.is_multiple_of(groups) {
            return Err(at(format!(
                "rows of {row} weights do not match the inputs measured ({} per group)",
                hessian.row
            )));
        }
        if hessian.columns < row {
            return Err(at(format!(
                "{} calibration positions, fewer than its {row} input columns: its Hessian has no full rank; give more calibration images",
                hessian.columns
            )));
        }
        if hessian.h.iter().any(|v| !v.is_finite()) {
            return Err(at(
                "its input Hessian is not finite: its inputs overflowed f32".into(),
            ));
        }
        let per_group = out / groups;
        let (mut weights, mut pruned) = (Vec::with_capacity(data.len()), Vec::new());
        for g in 0..groups {
            let h = &hessian.h[g * row * row..(g + 1) * row * row];
            let w = &data[g * per_group * row..(g + 1) * per_group * row];
            let (q, mask) = self.prune_group(w, per_group, row, h).map_err(at)?;
            weights.extend(q);
            pruned.extend(mask);
        }
        Ok(Some((weights, pruned)))
    }

    /// `fasterprune` on one group: `w` `rows × cols` row-major, `h` its `cols × cols`
    /// Hessian.
    fn prune_group(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        h: &[f64],
    ) -> std::result::Result<(Vec<f32>, Vec<bool>), String> {
        let mut w: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
        // H is symmetric: its row-major values read as columns.
        let mut h = Mat::from_fn(cols, cols, |i, j| h[j * cols + i]);
        let mut dead = vec![false; cols];
        for (i, dead) in dead.iter_mut().enumerate() {
            if h[(i, i)] == 0.0 {
                *dead = true;
                h[(i, i)] = 1.0;
                for r in 0..rows {
                    w[r * cols + i] = 0.0;
                }
            }
        }
        let damp = DAMPENING * (0..cols).map(|i| h[(i, i)]).sum::<f64>() / cols.max(1) as f64;
        for i in 0..cols {
            h[(i, i)] += damp;
        }
        let u_rows = inverse_upper_factor(h.as_ref())?;
        let u = |i: usize, j: usize| u_rows[i * cols + j];
        let mut mask = vec![false; rows * cols];
        for i1 in (0..cols).step_by(BLOCK) {
            let i2 = (i1 + BLOCK).min(cols);
            let count = i2 - i1;
            let score = |w: &[f64], r: usize, c: usize| w[r * cols + c].powi(2) / u(c, c).powi(2);
            if self.plan.nm.is_none() {
                // One threshold over the block: every value at or under the one of
                // rank ⌊s · size⌋.
                let scores: Vec<f64> = (0..rows)
                    .flat_map(|r| (i1..i2).map(move |c| (r, c)))
                    .map(|(r, c)| score(&w, r, c))
                    .collect();
                let mut sorted = scores.clone();
                sorted.sort_by(f64::total_cmp);
                let thresh = sorted
                    [((sorted.len() as f64 * self.plan.sparsity) as usize).min(sorted.len() - 1)];
                for (k, s) in scores.into_iter().enumerate() {
                    mask[(k / count) * cols + i1 + k % count] = s <= thresh;
                }
            }
            let mut err = vec![0.0; rows * count];
            for i in 0..count {
                let c = i1 + i;
                if let Some((n, m)) = self.plan.nm {
                    if i % m == 0 {
                        for r in 0..rows {
                            let mut order: Vec<usize> = (c..(c + m).min(i2)).collect();
                            order.sort_by(|&a, &b| score(&w, r, a).total_cmp(&score(&w, r, b)));
                            for &k in order.iter().take(m - n) {
                                mask[r * cols + k] = true;
                            }
                        }
                    }
                }
                let d = u(c, c);
                // Row c of U beyond the diagonal, up to the block's end.
                let later = &u_rows[c * cols + c + 1..c * cols + i2];
                for r in 0..rows {
                    let row = &mut w[r * cols..(r + 1) * cols];
                    let wv = row[c];
                    let q = if mask[r * cols + c] { 0.0 } else { wv };
                    let e = (wv - q) / d;
                    row[c] = q;
                    err[r * count + i] = e;
                    for (w, u) in row[c + 1..i2].iter_mut().zip(later) {
                        *w -= e * u;
                    }
                }
            }
            // The block's errors onto the later columns: W[:, i2..] −= E · U[i1..i2, i2..].
            if i2 < cols {
                let mut later = faer::MatMut::from_row_major_slice_mut(&mut w, rows, cols);
                matmul(
                    later.as_mut().submatrix_mut(0, i2, rows, cols - i2),
                    Accum::Add,
                    faer::MatRef::from_row_major_slice(&err, rows, count),
                    faer::MatRef::from_row_major_slice(&u_rows, cols, cols).submatrix(
                        i1,
                        i2,
                        count,
                        cols - i2,
                    ),
                    -1.0,
                    Par::rayon(0),
                );
            }
        }
        for (k, m) in mask.iter_mut().enumerate() {
            *m |= dead[k % cols];
        }
        Ok((w.into_iter().map(|v| v as f32).collect(), mask))
    }
}

/// `U` row-major, the upper Cholesky factor of `H⁻¹` (`H⁻¹ = Uᵀ U`), without forming
/// `H⁻¹`: with `J` the order-reversing permutation, `J H J = L Lᵀ` (Cholesky), so
/// `H = V Vᵀ` with `V = J L J` upper triangular, and `U = V⁻¹ = J L⁻¹ J`. A third of
/// the work of the reference's Cholesky, inverse and second Cholesky, the same `U`.
fn inverse_upper_factor(h: faer::MatRef<'_, f64>) -> std::result::Result<Vec<f64>, String> {
    let n = h.nrows();
    let reversed = Mat::from_fn(n, n, |i, j| h[(n - 1 - i, n - 1 - j)]);
    let llt = reversed
        .llt(Side::Lower)
        .map_err(|_| "its input Hessian is singular even after dampening".to_string())?;
    let mut inverse = Mat::zeros(n, n);
    triangular_inverse::invert_lower_triangular(inverse.as_mut(), llt.L(), Par::rayon(0));
    // U[i][j] = L⁻¹[n−1−i][n−1−j], non-zero for j ≥ i: read down L⁻¹'s columns.
    let mut u = vec![0.0; n * n];
    for j in 0..n {
        let column = inverse.col(n - 1 - j);
        for i in 0..=j {
            u[i * n + j] = column[n - 1 - i];
        }
    }
    Ok(u)
}

impl Pruner for SparseGptPruner {
    fn masks(&self, model: &dyn Params) -> Result<Masks> {
        let members = self.plan.members(model)?;
        decide_masks(model, &members, |p| {
            Ok(self
                .solve(&self.hessians, p.name, p.shape, p.data)?
                .map(|(_, pruned)| pruned))
        })
    }

    /// Prunes and writes the updated weights of every layer in scope.
    fn prune(&self, model: &mut dyn Params) -> Result<(Masks, SparsityReport)> {
        let members = self.plan.members(model)?;
        let mut solved = BTreeMap::new();
        let masks = decide_masks(model, &members, |p| {
            let Some((weights, pruned)) = self.solve(&self.hessians, p.name, p.shape, p.data)?
            else {
                return Ok(None);
            };
            solved.insert(p.name.to_string(), weights);
            Ok(Some(pruned))
        })?;
        model.visit_params_mut(&mut |p| {
            if let Some(weights) = solved.get(p.name) {
                p.data.copy_from_slice(weights);
            }
        });
        Ok((masks, SparsityReport::measure(model)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hessian_singular_after_dampening_is_an_error() {
        // Not positive semi-definite (eigenvalues 3 and −1): 1 % of its mean diagonal
        // cannot make it definite. A measured Hessian never is, but rounding can
        // bring one there.
        let pruner = SparseGptPruner::new(0.5, Hessians::default());
        let err = pruner
            .prune_group(&[1.0, 2.0], 1, 2, &[1.0, 2.0, 2.0, 1.0])
            .unwrap_err();
        assert_eq!(err, "its input Hessian is singular even after dampening");
        let fine = pruner.prune_group(&[1.0, 2.0], 1, 2, &[2.0, 1.0, 1.0, 2.0]);
        assert!(fine.is_ok());
    }
}
