//! Pruning masks: which weights of which tensors are removed.

use crate::error::{Error, Result, Shape, ShapeMismatch, StateDictMismatch};
use crate::layer::{Param, Params};
use crate::state_dict::{StateDict, StoredTensor};
use std::collections::{BTreeMap, HashSet};

/// The pruned positions of one weight tensor, as a bitset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMask {
    shape: Vec<usize>,
    len: usize,
    pruned: Vec<u64>,
}

impl TensorMask {
    /// A mask that keeps every weight of a tensor of `shape`.
    pub fn keep_all(shape: &[usize]) -> Self {
        let len = shape.iter().product();
        TensorMask {
            shape: shape.to_vec(),
            len,
            pruned: vec![0; len.div_ceil(64)],
        }
    }

    /// A mask from per-weight flags (`true` = pruned).
    pub fn from_pruned(shape: &[usize], pruned: impl IntoIterator<Item = bool>) -> Result<Self> {
        let mut mask = Self::keep_all(shape);
        let mut n = 0;
        // One past the tensor's length is enough to tell too many flags: an endless
        // iterator is not walked to its end.
        for (i, p) in pruned.into_iter().take(mask.len + 1).enumerate() {
            if i < mask.len && p {
                mask.prune(i);
            }
            n = i + 1;
        }
        if n != mask.len {
            let count = match n > mask.len {
                true => "more".to_string(),
                false => n.to_string(),
            };
            return Err(Error::invalid(
                "mask",
                format!(
                    "{count} flags for a tensor of shape {} ({} values)",
                    Shape(shape.to_vec()),
                    mask.len
                ),
            ));
        }
        Ok(mask)
    }

    /// The bitset, 64 weights per word (bit `j` of word `c` is weight `64·c + j`).
    pub(crate) fn words_mut(&mut self) -> &mut [u64] {
        &mut self.pruned
    }

    pub(crate) fn prune(&mut self, i: usize) {
        self.pruned[i / 64] |= 1 << (i % 64);
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of weights.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a tensor without elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether weight `i` (row-major) is pruned.
    pub fn is_pruned(&self, i: usize) -> bool {
        i < self.len && self.pruned[i / 64] >> (i % 64) & 1 == 1
    }

    /// Number of pruned weights.
    pub fn pruned_count(&self) -> usize {
        self.pruned.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether every weight this mask prunes is also pruned by `other`.
    pub fn is_subset_of(&self, other: &TensorMask) -> bool {
        self.len == other.len
            && self
                .pruned
                .iter()
                .zip(&other.pruned)
                .all(|(a, b)| a & !b == 0)
    }

    /// Zeroes the pruned weights of `data`.
    fn apply(&self, data: &mut [f32]) {
        for (w, chunk) in self.pruned.iter().zip(data.chunks_mut(64)) {
            if *w != 0 {
                for (j, v) in chunk.iter_mut().enumerate() {
                    if w >> j & 1 == 1 {
                        *v = 0.0;
                    }
                }
            }
        }
    }
}

/// The masks of a network's pruned tensors, by parameter name.
///
/// Masks are data: inspect them, compare them, save them
/// ([`Masks::to_state_dict`], in PyTorch's `weight_mask` convention) and apply them
/// to any network with the same parameter names and shapes. Applying twice is the same
/// as applying once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Masks {
    tensors: BTreeMap<String, TensorMask>,
}

/// The suffix PyTorch's `torch.nn.utils.prune` gives a mask buffer: `weight` →
/// `weight_mask`.
const MASK_SUFFIX: &str = "_mask";

impl Masks {
    /// No masks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the mask of parameter `name`.
    pub fn insert(&mut self, name: impl Into<String>, mask: TensorMask) {
        self.tensors.insert(name.into(), mask);
    }

    /// The mask of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&TensorMask> {
        self.tensors.get(name)
    }

    /// Parameter names and masks, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &TensorMask)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of masked tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when no tensor is masked.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total pruned weights.
    pub fn pruned_count(&self) -> usize {
        self.tensors.values().map(TensorMask::pruned_count).sum()
    }

    /// Whether every weight pruned here is also pruned by `other` (the nesting of a
    /// lower sparsity's masks in a higher one's).
    pub fn is_subset_of(&self, other: &Masks) -> bool {
        self.tensors.iter().all(|(name, m)| match other.get(name) {
            Some(o) => m.is_subset_of(o),
            None => m.pruned_count() == 0,
        })
    }

    /// Zeroes the masked weights of `model`. Every mask must name a parameter of the
    /// model with the same shape; otherwise nothing is changed and the error lists
    /// the problems by name.
    pub fn apply(&self, model: &mut dyn Params) -> Result<()> {
        let mut report = StateDictMismatch::default();
        let mut seen = 0;
        model.visit_params(&mut |p| {
            if let Some(m) = self.tensors.get(p.name) {
                seen += 1;
                if m.shape != p.shape {
                    report.shapes.push(ShapeMismatch {
                        key: p.name.to_string(),
                        expected: p.shape.into(),
                        found: Shape(m.shape.clone()),
                    });
                }
            }
        });
        if seen != self.tensors.len() {
            let mut names: BTreeMap<&str, ()> =
                self.tensors.keys().map(|k| (k.as_str(), ())).collect();
            model.visit_params(&mut |p| {
                names.remove(p.name);
            });
            report.unexpected = names.keys().map(|k| k.to_string()).collect();
        }
        if !report.is_empty() {
            return Err(Error::StateDict(report));
        }
        model.visit_params_mut(&mut |p| {
            if let Some(m) = self.tensors.get(p.name) {
                m.apply(p.data);
            }
        });
        Ok(())
    }

    /// The masks as a state dict in PyTorch's convention: for parameter
    /// `layer1.0.conv1.weight`, a float tensor `layer1.0.conv1.weight_mask` of the same
    /// shape, 1 where the weight is kept and 0 where it is pruned.
    pub fn to_state_dict(&self) -> StateDict {
        let mut state = StateDict::new();
        for (name, m) in &self.tensors {
            let keep = (0..m.len)
                .map(|i| if m.is_pruned(i) { 0.0 } else { 1.0 })
                .collect();
            let t = StoredTensor::f32(m.shape.clone(), keep).expect("len matches shape");
            state.insert(format!("{name}{MASK_SUFFIX}"), t);
        }
        state
    }

    /// Reads masks written by [`Masks::to_state_dict`] (or PyTorch's `weight_mask`
    /// buffers): every `<name>_mask` tensor, 0 = pruned. Other keys are ignored.
    pub fn from_state_dict(state: &StateDict) -> Result<Self> {
        let mut masks = Masks::new();
        for (key, t) in state.iter() {
            let Some(name) = key.strip_suffix(MASK_SUFFIX) else {
                continue;
            };
            let values: Vec<f32> = match &t.data {
                crate::state_dict::TensorData::F32(v) => v.clone(),
                crate::state_dict::TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            };
            masks.insert(
                name,
                TensorMask::from_pruned(&t.shape, values.iter().map(|&v| v == 0.0))?,
            );
        }
        Ok(masks)
    }
}
/// The masks `decide` gives the prunable tensors of `model` named in `members`, in
/// walk order: which of each tensor's weights go (`None` leaves a tensor out). The
/// first error stops the walk.
pub(crate) fn decide_masks(
    model: &dyn Params,
    members: &HashSet<String>,
    mut decide: impl FnMut(&Param<'_>) -> Result<Option<Vec<bool>>>,
) -> Result<Masks> {
    let mut masks = Masks::new();
    let mut error = None;
    model.visit_params(&mut |p| {
        if !members.contains(p.name) || error.is_some() {
            return;
        }
        match decide(&p).and_then(|pruned| {
            pruned
                .map(|v| TensorMask::from_pruned(p.shape, v))
                .transpose()
        }) {
            Ok(Some(mask)) => masks.insert(p.name, mask),
            Ok(None) => {}
            Err(e) => error = Some(e),
        }
    });
    match error {
        Some(e) => Err(e),
        None => Ok(masks),
    }
}

/// Marks the `count` of `indices` with the smallest `key` pruned; among equal keys
/// the one earlier in `indices` first (a stable sort: give them in increasing order
/// for "the lower index first").
pub(crate) fn prune_smallest(
    indices: &mut [usize],
    count: usize,
    key: impl Fn(usize) -> f64,
    pruned: &mut [bool],
) {
    indices.sort_by(|&a, &b| key(a).total_cmp(&key(b)));
    for &i in &indices[..count] {
        pruned[i] = true;
    }
}
