//! Wanda (Sun et al., ICLR 2024; `method.md`, "Activation-aware pruners"): each weight
//! scored by its magnitude times the L2 norm of the input column it multiplies, the
//! smallest scores of every output row removed.

use super::mask::{decide_masks, prune_smallest};
use super::plan::removal_count;
use super::rows::{observe_calibration, prune_sequentially, row_of, row_plan_methods};
use super::rows::{InputTaps, RowPlan};
use super::{Masks, Pruner, SparsityReport};
use crate::data::CalibrationData;
use crate::error::{Error, Result};
use crate::layer::{ActivationView, Network, Observer, Params, Tap};
use std::collections::BTreeMap;

/// The squared L2 norm of every column of each convolution's and linear layer's
/// unfolded input, summed over calibration data: what [`WandaPruner`] scores with.
///
/// Column `(c, ky, kx)` of a convolution's unfolded input is the input value each
/// output position multiplies by weight `[·, c, ky, kx]` (zero in the padding; see
/// [`ConvWindow`](crate::layer::ConvWindow)); a layer's sums are indexed
/// `(c · kh + ky) · kw + kx` over all its input channels (a linear layer: by input
/// feature). A layer that reports its input without a window (a linear layer, or a
/// custom layer) has one column per channel, summed over the batch and the positions.
///
/// ```
/// use reflow::layer::Layer;
/// use reflow::nn::{Conv2d, Conv2dConfig, Tensor4};
/// use reflow::prune::InputNorms;
///
/// let conv = Conv2d::new(Conv2dConfig::new(2, 4, 3).padding(1))?;
/// let batches = vec![Tensor4::ones((1, 2, 4, 4))];
/// let norms = InputNorms::measure(&conv, &batches)?;
/// // The centre tap reads all 16 positions; a corner tap of a 3×3 window with
/// // padding 1 reads 9 of them.
/// let sums = norms.layer("").unwrap();
/// assert_eq!((sums[4], sums[0]), (16.0, 9.0));
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputNorms {
    layers: BTreeMap<String, Vec<f64>>,
}

impl InputNorms {
    /// One eval pass of `model` over every batch of `data`, summing the squares of each
    /// convolution's and linear layer's unfolded input columns.
    pub fn measure<I>(model: &dyn Network<I>, data: &dyn CalibrationData<I>) -> Result<Self> {
        Self::collect(model, data, Collector::default())
    }

    /// [`InputNorms::measure`] for layer `layer` alone.
    fn measure_layer<I>(
        model: &dyn Network<I>,
        data: &dyn CalibrationData<I>,
        layer: &str,
    ) -> Result<Self> {
        let taps = InputTaps::of(layer);
        Self::collect(
            model,
            data,
            Collector {
                taps,
                ..Collector::default()
            },
        )
    }

    fn collect<I>(
        model: &dyn Network<I>,
        data: &dyn CalibrationData<I>,
        mut collector: Collector,
    ) -> Result<Self> {
        observe_calibration(model, data, &mut collector)?;
        match collector.error {
            Some(e) => Err(e),
            None => Ok(InputNorms {
                layers: collector.layers,
            }),
        }
    }

    /// The sums of squares of layer `name`'s input columns (the layer's path, as in
    /// its weight's name without `.weight`: `layer1.0.conv1`, or `""` for a lone layer).
    pub fn layer(&self, name: &str) -> Option<&[f64]> {
        self.layers.get(name).map(Vec::as_slice)
    }

    /// The layers measured, in name order.
    pub fn layers(&self) -> impl Iterator<Item = &str> {
        self.layers.keys().map(String::as_str)
    }
}

/// The observer of [`InputNorms::measure`].
#[derive(Default)]
struct Collector {
    taps: InputTaps,
    layers: BTreeMap<String, Vec<f64>>,
    error: Option<Error>,
}

impl Observer for Collector {
    fn wants(&self, tap: &Tap<'_>) -> bool {
        self.taps.wants(tap)
    }

    fn observe(&mut self, tap: &Tap<'_>, x: ActivationView<'_>) {
        let columns = match tap.window {
            Some(w) => x.channels * w.kernel[0] * w.kernel[1],
            None => x.channels,
        };
        let sums = self
            .layers
            .entry(tap.layer.to_string())
            .or_insert_with(|| vec![0.0; columns]);
        if sums.len() != columns {
            self.error.get_or_insert_with(|| {
                Error::invalid(
                    format!("input of \"{}\"", tap.layer),
                    format!("{columns} columns in one batch, {} in another", sums.len()),
                )
            });
            return;
        }
        match tap.window {
            Some(w) if w.size[0] * w.size[1] == x.spatial => add_window_columns(sums, &x, w),
            Some(w) => {
                self.error.get_or_insert_with(|| {
                    Error::invalid(
                        format!("input of \"{}\"", tap.layer),
                        format!("{} values per plane, not {:?}", x.spatial, w.size),
                    )
                });
            }
            None => {
                for n in 0..x.batch {
                    for (c, sum) in sums.iter_mut().enumerate() {
                        *sum += squares(x.plane(n, c).iter());
                    }
                }
            }
        }
    }
}

fn squares<'a>(values: impl Iterator<Item = &'a f32>) -> f64 {
    values.map(|&v| f64::from(v) * f64::from(v)).sum()
}

/// Adds to `sums[(c · kh + ky) · kw + kx]` the squares of the input values that tap
/// `(ky, kx)` reads over all output positions: the rows `oy·sh + ky·dh − ph` and
/// columns `ox·sw + kx·dw − pw` inside the image.
fn add_window_columns(sums: &mut [f64], x: &ActivationView<'_>, w: crate::layer::ConvWindow) {
    let [h, wd] = w.size;
    // The input indices one axis reads at kernel offset k, for all output positions.
    let reads = |a: usize, k: usize| -> Vec<usize> {
        let (size, kernel) = ([h, wd][a], w.kernel[a]);
        let span = w.dilation[a] * (kernel - 1) + 1;
        let padded = size + 2 * w.padding[a];
        let out = if padded >= span {
            (padded - span) / w.stride[a] + 1
        } else {
            0
        };
        (0..out)
            .filter_map(|o| {
                let i = (o * w.stride[a] + k * w.dilation[a]).checked_sub(w.padding[a])?;
                (i < size).then_some(i)
            })
            .collect()
    };
    let rows: Vec<Vec<usize>> = (0..w.kernel[0]).map(|ky| reads(0, ky)).collect();
    let cols: Vec<Vec<usize>> = (0..w.kernel[1]).map(|kx| reads(1, kx)).collect();
    let taps = w.kernel[0] * w.kernel[1];
    for n in 0..x.batch {
        for c in 0..x.channels {
            let plane = x.plane(n, c);
            for (ky, rows) in rows.iter().enumerate() {
                for (kx, cols) in cols.iter().enumerate() {
                    let mut s = 0.0;
                    for &r in rows {
                        s += squares(cols.iter().map(|&q| &plane[r * wd + q]));
                    }
                    sums[c * taps + ky * w.kernel[1] + kx] += s;
                }
            }
        }
    }
}

/// Wanda's pruner (`method.md`): weight `W[o, j]` of a convolution or linear layer,
/// `j = (c, ky, kx)` its flattened row, scores `S = |W[o, j]| · ‖X_j‖₂`, the norm of
/// the unfolded input column it multiplies over the calibration data
/// ([`InputNorms`]). Per output row, the `round(s · row length)` smallest scores are
/// removed (among equal scores, the lower index first); with [`WandaPruner::nm`],
/// the `M − N` smallest of every `M` consecutive weights of a row instead (a row
/// whose length is not a multiple of M is left dense). Layer scope: every row loses
/// the same share.
///
/// ```
/// use reflow::layer::Params;
/// use reflow::nn::{Linear, Tensor2};
/// use reflow::prune::{InputNorms, Pruner, WandaPruner};
///
/// // Input feature 0 is ten times larger than feature 1: with equal weights, Wanda
/// // removes the weight on feature 1 from each row.
/// let mut fc = Linear::new(2, 3, false);
/// fc.visit_params_mut(&mut |p| p.data.fill(1.0));
/// let x = Tensor2::from_shape_vec((1, 2), vec![10.0, 1.0])?;
/// let norms = InputNorms::measure(&fc, &vec![x])?;
/// let masks = WandaPruner::new(0.5, norms).masks(&fc)?;
/// let mask = masks.get("weight").unwrap();
/// assert!((0..3).all(|o| !mask.is_pruned(2 * o) && mask.is_pruned(2 * o + 1)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct WandaPruner {
    plan: RowPlan,
    norms: InputNorms,
}

impl WandaPruner {
    /// Removes `sparsity` of every row, scored with `norms`.
    pub fn new(sparsity: f64, norms: InputNorms) -> Self {
        WandaPruner {
            plan: RowPlan::new(sparsity),
            norms,
        }
    }

    row_plan_methods!();

    /// The same pruner scoring with `norms` (measured after it was made, e.g. once
    /// the network it was checked against has seen the calibration data).
    pub fn with_norms(mut self, norms: InputNorms) -> Self {
        self.norms = norms;
        self
    }

    /// The norm of the input column that weight `j` of row `o` of `name` (of `shape`)
    /// multiplies, for every `(o, j)`: `[out][row]`, flattened.
    fn column_norms(norms: &InputNorms, name: &str, shape: &[usize]) -> Result<Vec<f64>> {
        let layer = name.strip_suffix(".weight").unwrap_or("");
        let sums = norms.layer(layer).ok_or_else(|| {
            Error::invalid(
                format!("\"{name}\""),
                "no input statistics: the layer reported no input during the calibration pass",
            )
        })?;
        let (out, row) = (shape.first().copied().unwrap_or(1), row_of(shape));
        // A grouped convolution: row `o` reads the columns of its group.
        let groups = match sums.len() % row.max(1) {
            0 if row > 0 && sums.len() >= row => sums.len() / row,
            _ => 0,
        };
        if groups == 0 || !out.is_multiple_of(groups) {
            return Err(Error::invalid(
                format!("\"{name}\""),
                format!(
                    "{} input columns measured do not fit rows of {row} weights in groups of {out} outputs",
                    sums.len()
                ),
            ));
        }
        let per_group = out / groups;
        Ok((0..out)
            .flat_map(|o| sums[o / per_group * row..][..row].iter().map(|s| s.sqrt()))
            .collect())
    }

    /// Which weights of tensor `name` (`shape`, `data`) go, scored with `norms`.
    fn decide(
        &self,
        norms: &InputNorms,
        name: &str,
        shape: &[usize],
        data: &[f32],
    ) -> Result<Vec<bool>> {
        let norms = Self::column_norms(norms, name, shape)?;
        let row = row_of(shape).max(1);
        let (len, remove) = match self.plan.nm {
            Some((n, m)) if row.is_multiple_of(m) => (m, m - n),
            Some(_) => (row, 0),
            None => (row, removal_count(self.plan.sparsity, row)),
        };
        let score = |i: usize| f64::from(data[i]).abs() * norms[i];
        let mut pruned = vec![false; data.len()];
        let mut order: Vec<usize> = Vec::with_capacity(len);
        for start in (0..data.len()).step_by(len) {
            order.clear();
            order.extend(start..start + len);
            prune_smallest(&mut order, remove, score, &mut pruned);
        }
        Ok(pruned)
    }

    /// Prunes `model` layer by layer, each layer's input norms measured on `model`
    /// with the layers before it already pruned, instead of on the dense network: one
    /// pass over `data` per layer in scope, in the network's parameter order (its
    /// forward order, for the bundled networks). The pruner's own norms are not used.
    /// Returns what [`Pruner::prune`] does.
    ///
    /// ```
    /// use reflow::models::{ResNet, ResNetConfig};
    /// use reflow::nn::Tensor4;
    /// use reflow::prune::{InputNorms, WandaPruner};
    ///
    /// let mut net = ResNet::new(ResNetConfig::cifar_resnet(8)?)?;
    /// let batches = vec![Tensor4::from_elem((2, 3, 8, 8), 0.5)];
    /// let pruner = WandaPruner::new(0.5, InputNorms::default());
    /// let (masks, _) = pruner.prune_sequential(&mut net, &batches)?;
    /// // Rows of 16 · 3 · 3 weights: 72 of each go.
    /// let mask = masks.get("layer1.0.conv1.weight").unwrap();
    /// assert_eq!(mask.pruned_count() * 2, mask.len());
    /// # Ok::<(), reflow::Error>(())
    /// ```
    pub fn prune_sequential<I>(
        &self,
        model: &mut dyn Network<I>,
        data: &dyn CalibrationData<I>,
    ) -> Result<(Masks, SparsityReport)> {
        prune_sequentially(model, &self.plan, |net, t| {
            // A tensor N:M leaves dense: a mask that removes nothing, as in `masks`.
            let pruned = match self.plan.leaves_dense(t.shape) {
                true => vec![false; t.values.len()],
                false => {
                    let norms = InputNorms::measure_layer(net, data, t.layer)?;
                    self.decide(&norms, t.name, t.shape, t.values)?
                }
            };
            let kept = t.values.iter().zip(&pruned);
            let values = kept.map(|(&v, &p)| if p { 0.0 } else { v }).collect();
            Ok(Some((values, pruned)))
        })
    }
}

impl Pruner for WandaPruner {
    fn masks(&self, model: &dyn Params) -> Result<Masks> {
        let members = self.plan.members(model)?;
        decide_masks(model, &members, |p| {
            self.decide(&self.norms, p.name, p.shape, p.data).map(Some)
        })
    }
}
