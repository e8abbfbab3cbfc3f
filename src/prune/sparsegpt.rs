//! SparseGPT (Frantar & Alistarh, 2023; `method.md`, "Activation-aware pruners"): a
//! layer-wise optimal-brain-surgeon step that chooses the weights to remove from the
//! inverse Hessian of the layer's inputs and updates the weights it keeps.

use super::mask::decide_masks;
use super::rows::{observe_calibration, row_of, row_plan_methods, RowPlan};
use super::{Masks, Pruner, SparsityReport};
use crate::data::CalibrationData;
use crate::error::{Error, Result};
use crate::layer::{ActivationView, ConvWindow, LayerKind, Network, Observer, Params};
use crate::layer::{Site, Tap};
use faer::linalg::matmul::matmul;
use faer::linalg::solvers::DenseSolveCore;
use faer::{Accum, Mat, Par, Side};
use std::collections::BTreeMap;

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
        match collector.error {
            Some(e) => Err(e),
            None => Ok(Hessians {
                layers: collector.layers,
            }),
        }
    }

    /// Layer `name`'s Hessians (its path: `layer1.0.conv1`), `groups` matrices of
    /// `row × row` in row-major order, and how many columns they sum.
    pub fn layer(&self, name: &str) -> Option<(&[f64], usize)> {
        self.layers.get(name).map(|l| (l.h.as_slice(), l.columns))
    }
}

#[derive(Default)]
struct Collector {
    layers: BTreeMap<String, LayerHessian>,
    error: Option<Error>,
}

impl Observer for Collector {
    fn wants(&self, tap: &Tap<'_>) -> bool {
        tap.site == Site::Input && matches!(tap.kind, LayerKind::Conv | LayerKind::Linear)
    }

    fn observe(&mut self, tap: &Tap<'_>, x: ActivationView<'_>) {
        let window = tap.window.unwrap_or(ConvWindow {
            kernel: [1, 1],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            size: [x.spatial, 1],
        });
        let groups = window.groups.max(1);
        let row = x.channels / groups * window.kernel[0] * window.kernel[1];
        let layer = self
            .layers
            .entry(tap.layer.to_string())
            .or_insert_with(|| LayerHessian {
                row,
                h: vec![0.0; groups * row * row],
                columns: 0,
            });
        if layer.row != row || layer.h.len() != groups * row * row {
            self.error.get_or_insert_with(|| {
                Error::invalid(
                    format!("input of \"{}\"", tap.layer),
                    "its shape changed between batches",
                )
            });
            return;
        }
        for n in 0..x.batch {
            for g in 0..groups {
                let cols = unfold(&x, n, g, &window);
                let mut h = faer::MatMut::from_row_major_slice_mut(
                    &mut layer.h[g * row * row..(g + 1) * row * row],
                    row,
                    row,
                );
                matmul(
                    h.as_mut(),
                    Accum::Add,
                    cols.as_ref(),
                    cols.transpose(),
                    1.0,
                    Par::Seq,
                );
            }
            layer.columns += output_positions(&window);
        }
    }
}

fn output_positions(w: &ConvWindow) -> usize {
    (0..2)
        .map(|a| {
            let span = w.dilation[a] * (w.kernel[a] - 1) + 1;
            let padded = w.size[a] + 2 * w.padding[a];
            if padded >= span {
                (padded - span) / w.stride[a] + 1
            } else {
                0
            }
        })
        .product()
}

/// Group `g` of image `n`'s unfolded input: `row × positions`, row `(c, ky, kx)` of
/// the group's channels, zero in the padding (PyTorch's `unfold`).
fn unfold(x: &ActivationView<'_>, n: usize, g: usize, w: &ConvWindow) -> Mat<f64> {
    let [h, wd] = w.size;
    let out = |a: usize, size: usize| {
        let span = w.dilation[a] * (w.kernel[a] - 1) + 1;
        match size + 2 * w.padding[a] >= span {
            true => (size + 2 * w.padding[a] - span) / w.stride[a] + 1,
            false => 0,
        }
    };
    let (ho, wo) = (out(0, h), out(1, wd));
    let cg = x.channels / w.groups.max(1);
    let [kh, kw] = w.kernel;
    Mat::from_fn(cg * kh * kw, ho * wo, |r, p| {
        let (c, ky, kx) = (r / (kh * kw), r / kw % kh, r % kw);
        let (oy, ox) = (p / wo, p % wo);
        let iy = (oy * w.stride[0] + ky * w.dilation[0]).checked_sub(w.padding[0]);
        let ix = (ox * w.stride[1] + kx * w.dilation[1]).checked_sub(w.padding[1]);
        match (iy, ix) {
            (Some(iy), Some(ix)) if iy < h && ix < wd => {
                f64::from(x.plane(n, g * cg + c)[iy * wd + ix])
            }
            _ => 0.0,
        }
    })
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
    hessians: Hessians,
}

impl SparseGptPruner {
    /// Removes `sparsity` of every layer, with `hessians`.
    pub fn new(sparsity: f64, hessians: Hessians) -> Self {
        SparseGptPruner {
            plan: RowPlan::new(sparsity),
            hessians,
        }
    }

    row_plan_methods!();

    /// The same pruner with `hessians` (measured after it was made).
    pub fn with_hessians(mut self, hessians: Hessians) -> Self {
        self.hessians = hessians;
        self
    }

    /// The pruned and updated weights of tensor `name` (`shape`, `data`), and which
    /// of them are set to zero; `None` for a tensor N:M leaves dense.
    fn solve(
        &self,
        name: &str,
        shape: &[usize],
        data: &[f32],
    ) -> Result<Option<(Vec<f32>, Vec<bool>)>> {
        let layer = name.strip_suffix(".weight").unwrap_or("");
        let at = |reason: String| Error::invalid(format!("\"{name}\""), reason);
        let hessian = self.hessians.layers.get(layer).ok_or_else(|| {
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
        let mut w = Mat::from_fn(rows, cols, |r, c| f64::from(w[r * cols + c]));
        let mut h = Mat::from_fn(cols, cols, |i, j| h[i * cols + j]);
        let mut dead = vec![false; cols];
        for (i, dead) in dead.iter_mut().enumerate() {
            if h[(i, i)] == 0.0 {
                *dead = true;
                h[(i, i)] = 1.0;
                for r in 0..rows {
                    w[(r, i)] = 0.0;
                }
            }
        }
        let damp = DAMPENING * (0..cols).map(|i| h[(i, i)]).sum::<f64>() / cols.max(1) as f64;
        for i in 0..cols {
            h[(i, i)] += damp;
        }
        let singular = "its input Hessian is singular even after dampening".to_string();
        let inverse = h.llt(Side::Lower).map_err(|_| singular.clone())?.inverse();
        let lower = inverse.llt(Side::Lower).map_err(|_| singular)?;
        // The upper factor U = Lᵀ: U[i][j] = L[j][i].
        let l = lower.L();
        let u = |i: usize, j: usize| l[(j, i)];
        let mut mask = vec![false; rows * cols];
        for i1 in (0..cols).step_by(BLOCK) {
            let i2 = (i1 + BLOCK).min(cols);
            let count = i2 - i1;
            let mut err = Mat::<f64>::zeros(rows, count);
            if self.plan.nm.is_none() {
                // One threshold over the block: every value at or under the one of
                // rank ⌊s · size⌋.
                let mut scores: Vec<f64> = (0..rows)
                    .flat_map(|r| (i1..i2).map(move |c| (r, c)))
                    .map(|(r, c)| w[(r, c)].powi(2) / u(c, c).powi(2))
                    .collect();
                let mut sorted = scores.clone();
                sorted.sort_by(f64::total_cmp);
                let thresh = sorted
                    [((sorted.len() as f64 * self.plan.sparsity) as usize).min(sorted.len() - 1)];
                for (k, s) in scores.drain(..).enumerate() {
                    mask[(k / count) * cols + i1 + k % count] = s <= thresh;
                }
            }
            for i in 0..count {
                let c = i1 + i;
                if let Some((n, m)) = self.plan.nm {
                    if i % m == 0 {
                        for r in 0..rows {
                            let mut order: Vec<usize> = (c..(c + m).min(i2)).collect();
                            let score = |k: usize| w[(r, k)].powi(2) / u(k, k).powi(2);
                            order.sort_by(|&a, &b| score(a).total_cmp(&score(b)));
                            for &k in order.iter().take(m - n) {
                                mask[r * cols + k] = true;
                            }
                        }
                    }
                }
                let d = u(c, c);
                for r in 0..rows {
                    let wv = w[(r, c)];
                    let q = if mask[r * cols + c] { 0.0 } else { wv };
                    let e = (wv - q) / d;
                    w[(r, c)] = q;
                    err[(r, i)] = e;
                    for j in c + 1..i2 {
                        w[(r, j)] -= e * u(c, j);
                    }
                }
            }
            // The block's errors onto the later columns: W[:, i2..] −= E · U[i1..i2, i2..].
            if i2 < cols {
                matmul(
                    w.as_mut().submatrix_mut(0, i2, rows, cols - i2),
                    Accum::Add,
                    err.as_ref(),
                    l.submatrix(i2, i1, cols - i2, count).transpose(),
                    -1.0,
                    Par::Seq,
                );
            }
        }
        for (k, m) in mask.iter_mut().enumerate() {
            *m |= dead[k % cols];
        }
        let q = (0..rows * cols)
            .map(|k| w[(k / cols, k % cols)] as f32)
            .collect();
        Ok((q, mask))
    }
}

impl Pruner for SparseGptPruner {
    fn masks(&self, model: &dyn Params) -> Result<Masks> {
        let members = self.plan.members(model)?;
        decide_masks(model, &members, |p| {
            Ok(self
                .solve(p.name, p.shape, p.data)?
                .map(|(_, pruned)| pruned))
        })
    }

    /// Prunes and writes the updated weights of every layer in scope.
    fn prune(&self, model: &mut dyn Params) -> Result<(Masks, SparsityReport)> {
        let members = self.plan.members(model)?;
        let mut solved = BTreeMap::new();
        let masks = decide_masks(model, &members, |p| {
            let Some((weights, pruned)) = self.solve(p.name, p.shape, p.data)? else {
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
