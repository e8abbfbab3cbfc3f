//! Sparse tensors in the bitmask layout of compressed-tensors (Neural Magic / vLLM,
//! format `"sparse-bitmask"`): writing a state dict's sparse weights in it, and
//! rebuilding the dense tensors from a file that holds it.
//!
//! The layout is that of compressed-tensors' `BitmaskCompressor`, as version 0.14.0.1
//! writes it (the last version that ships the compressor). A tensor `P.weight`
//! becomes four entries:
//!
//! | entry | dtype | shape | holds |
//! |---|---|---|---|
//! | `P.shape` | I64 | `[rank]` | the dense shape |
//! | `P.compressed` | the tensor's | `[nnz]` | the values that are not zero, row-major |
//! | `P.bitmask` | U8 | `shape[..rank-1] + [⌈cols / 8⌉]` | each row's mask (a row runs along the last dimension, `cols` long), eight columns a byte, the first in the least significant bit (NumPy's `packbits(bitorder="little")`), unused bits zero |
//! | `P.row_offsets` | I64 | `shape[..rank-1]` | `cumsum(counts, 0) − counts` of the rows' non-zero counts: in a 2-D tensor, where each row's values start in `P.compressed` |
//!
//! compressed-tensors keeps the format's name in a model's `config.json`, under
//! `quantization_config.sparsity_config.format`. A lone safetensors file has no
//! `config.json`, so reflow writes the same object in the file's metadata, under
//! `quantization_config`.
//!
//! compressed-tensors masks a tensor of any rank along its last dimension. A
//! convolution's last dimension is its kernel width (3, or 1 for a 1×1 convolution):
//! each mask byte would cover one to three weights. reflow therefore writes a tensor
//! of rank 3 or more as its 2-D view `[shape[0], rest]` (one row per output channel,
//! as `weight.flatten(1)` in PyTorch), which compressed-tensors decompresses as it
//! stands, and records the dense shape in the metadata entry `reflow.shapes`. It
//! reads every rank compressed-tensors writes.

use super::encoding::{decode, Encoded, Serialised};
use crate::error::{Error, Result, Shape};
use crate::state_dict::{StateDict, StoredTensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The format's name, as compressed-tensors writes it (`CompressionFormat.sparse_bitmask`).
const FORMAT: &str = "sparse-bitmask";

/// compressed-tensors' name for a sparsity config that compresses nothing.
const DENSE_FORMAT: &str = "dense";

/// The metadata entry holding the compression config (compressed-tensors keeps it
/// in `config.json` under the same key).
const CONFIG_KEY: &str = "quantization_config";

/// The metadata entry holding the dense shape of each tensor written as a 2-D view.
const SHAPES_KEY: &str = "reflow.shapes";

/// The suffix compressed-tensors removes from a compressed tensor's name.
const WEIGHT: &str = ".weight";

/// The entries of one compressed tensor, by the suffix after its name, in the order
/// of [`Parts`].
const PARTS: [&str; 4] = ["compressed", "bitmask", "shape", "row_offsets"];

/// `name` as an entry of a compressed tensor: the tensor's name without `.weight`,
/// and which entry (an index into [`PARTS`]).
fn entry_of(name: &str) -> Option<(&str, usize)> {
    PARTS.iter().enumerate().find_map(|(i, part)| {
        let prefix = name.strip_suffix(part)?.strip_suffix('.')?;
        (!prefix.is_empty()).then_some((prefix, i))
    })
}

/// `prefix.part`, as compressed-tensors' `merge_names` joins them.
fn entry_name(prefix: &str, part: usize) -> String {
    format!("{prefix}.{}", PARTS[part])
}

/// The entries of `state` in the compressed layout, and the file's metadata: every
/// float `*.weight` tensor of rank 2 or more that takes fewer bytes compressed than
/// dense is compressed; every other tensor is written dense.
pub(super) fn encode(state: &StateDict) -> Result<(Serialised, HashMap<String, String>)> {
    let mut entries = Vec::new();
    let mut targets = Vec::new();
    let mut shapes = serde_json::Map::new();
    let (mut zeros, mut values) = (0usize, 0usize);
    for (name, tensor) in state.iter() {
        if entry_of(name).is_some() {
            return Err(Error::invalid(
                "tensor",
                format!(
                    "\"{name}\" cannot be written in the compressed layout: its name ends \
                     like an entry of a compressed tensor (.compressed, .bitmask, .shape, \
                     .row_offsets)"
                ),
            ));
        }
        let Some(sparse) = Sparse::of(name, tensor) else {
            entries.push((name.to_string(), Encoded::dense(tensor)));
            continue;
        };
        zeros += tensor.numel() - sparse.nonzero;
        values += tensor.numel();
        if tensor.shape.len() > 2 {
            shapes.insert(name.to_string(), json!(tensor.shape));
        }
        targets.push(sparse.prefix.to_string());
        entries.extend(sparse.entries());
    }
    let global_sparsity = match values {
        0 => 0.0,
        n => zeros as f64 / n as f64,
    };
    let config = json!({
        "quant_method": "compressed-tensors",
        "sparsity_config": {
            "format": FORMAT,
            "global_sparsity": global_sparsity,
            "targets": targets,
        },
    });
    let mut metadata = HashMap::from([(CONFIG_KEY.to_string(), config.to_string())]);
    if !shapes.is_empty() {
        metadata.insert(SHAPES_KEY.to_string(), Value::Object(shapes).to_string());
    }
    Ok((entries, metadata))
}

/// A float weight worth compressing, seen as rows of its 2-D view.
struct Sparse<'a> {
    /// The name without `.weight`.
    prefix: &'a str,
    values: &'a [f32],
    rows: usize,
    cols: usize,
    nonzero: usize,
}

impl<'a> Sparse<'a> {
    /// `tensor` when it is a float `*.weight` of rank 2 or more whose four entries
    /// take fewer bytes than its dense values.
    fn of(name: &'a str, tensor: &'a StoredTensor) -> Option<Self> {
        let prefix = name.strip_suffix(WEIGHT).filter(|p| !p.is_empty())?;
        let values = tensor.as_f32()?;
        let (&rows, rest) = tensor.shape.split_first()?;
        let cols: usize = rest.iter().product();
        if rest.is_empty() || values.is_empty() {
            return None;
        }
        let nonzero = values.iter().filter(|&&v| v != 0.0).count();
        let compressed = 4 * nonzero + rows * cols.div_ceil(8) + 8 * rows + 8 * 2;
        (compressed < 4 * values.len()).then_some(Sparse {
            prefix,
            values,
            rows,
            cols,
            nonzero,
        })
    }

    /// The four entries, as compressed-tensors' `BitmaskTensor.dict` names them.
    fn entries(&self) -> [(String, Encoded); 4] {
        let row_bytes = self.cols.div_ceil(8);
        let mut bitmask = vec![0u8; self.rows * row_bytes];
        let mut compressed = Vec::with_capacity(4 * self.nonzero);
        let mut row_offsets = Vec::with_capacity(8 * self.rows);
        let mut offset = 0i64;
        for (values, mask) in self
            .values
            .chunks_exact(self.cols)
            .zip(bitmask.chunks_exact_mut(row_bytes))
        {
            row_offsets.extend(offset.to_le_bytes());
            for (col, &v) in values.iter().enumerate() {
                if v != 0.0 {
                    mask[col / 8] |= 1 << (col % 8);
                    compressed.extend(v.to_le_bytes());
                    offset += 1;
                }
            }
        }
        let shape: Vec<u8> = [self.rows, self.cols]
            .iter()
            .flat_map(|&d| (d as i64).to_le_bytes())
            .collect();
        let entry = |part: usize, dtype, shape, bytes| {
            (
                entry_name(self.prefix, part),
                Encoded {
                    dtype,
                    shape,
                    bytes,
                },
            )
        };
        [
            entry(0, Dtype::F32, vec![self.nonzero], compressed),
            entry(1, Dtype::U8, vec![self.rows, row_bytes], bitmask),
            entry(2, Dtype::I64, vec![2], shape),
            entry(3, Dtype::I64, vec![self.rows], row_offsets),
        ]
    }
}

/// The four entries of a compressed tensor, in the order of [`PARTS`].
type Parts<'a> = [Option<TensorView<'a>>; 4];

/// The compressed tensors of a safetensors file, found by their entries' names.
pub(super) struct Compressed<'a> {
    /// Whether the file is in the compressed layout: its metadata names the format,
    /// or it holds a `*.bitmask` entry. Only then are names ending in `.compressed`,
    /// `.bitmask`, `.shape` or `.row_offsets` entries of compressed tensors; a file
    /// of neither kind is read as it always was.
    active: bool,
    /// By the name without `.weight`.
    tensors: BTreeMap<&'a str, Parts<'a>>,
    /// The dense shapes of `reflow.shapes`, by tensor name.
    shapes: BTreeMap<String, Vec<usize>>,
}

impl<'a> Compressed<'a> {
    /// Finds the compressed tensors among `entries`; `metadata` is the file's.
    pub(super) fn find(
        entries: impl Iterator<Item = (&'a str, TensorView<'a>)>,
        metadata: Option<&HashMap<String, String>>,
        path: &Path,
    ) -> Result<Self> {
        let header_error = |reason: String| Error::Safetensors {
            path: path.to_path_buf(),
            reason,
        };
        let mut active = false;
        if let Some(config) = metadata.and_then(|m| m.get(CONFIG_KEY)) {
            // A config that is no JSON is another tool's business: the file is read
            // by its entries.
            let config: Value = serde_json::from_str(config).unwrap_or(Value::Null);
            match config["sparsity_config"]["format"].as_str() {
                Some(FORMAT) => active = true,
                Some(DENSE_FORMAT) | None => {}
                Some(other) => {
                    return Err(header_error(format!(
                        "compressed-tensors format \"{other}\" is not supported (reflow \
                         reads \"{FORMAT}\")"
                    )))
                }
            }
        }
        let shapes = match metadata.and_then(|m| m.get(SHAPES_KEY)) {
            None => BTreeMap::new(),
            Some(text) => serde_json::from_str(text).map_err(|e| {
                header_error(format!(
                    "metadata \"{SHAPES_KEY}\" is not a map of tensor names to shapes: {e}"
                ))
            })?,
        };
        let mut tensors: BTreeMap<&str, Parts> = BTreeMap::new();
        for (name, view) in entries {
            if let Some((prefix, part)) = entry_of(name) {
                active |= PARTS[part] == "bitmask";
                tensors.entry(prefix).or_default()[part] = Some(view);
            }
        }
        if !active {
            tensors.clear();
        }
        let found = Compressed {
            active,
            tensors,
            shapes,
        };
        if let Some(name) = found.shapes.keys().find(|k| !found.holds_tensor(k)) {
            return Err(header_error(format!(
                "metadata \"{SHAPES_KEY}\" gives the shape of \"{name}\", which the file \
                 does not hold compressed"
            )));
        }
        Ok(found)
    }

    /// Whether the entry `name` belongs to a compressed tensor (and is not a tensor
    /// of its own).
    pub(super) fn holds_entry(&self, name: &str) -> bool {
        self.active && entry_of(name).is_some()
    }

    /// Whether the tensor `name` (`P.weight`) is stored compressed.
    fn holds_tensor(&self, name: &str) -> bool {
        name.strip_suffix(WEIGHT)
            .is_some_and(|prefix| self.tensors.contains_key(prefix))
    }

    /// Rebuilds every compressed tensor into `state`, which holds the file's dense
    /// tensors.
    pub(super) fn rebuild_into(&self, state: &mut StateDict, path: &Path) -> Result<()> {
        for (prefix, parts) in &self.tensors {
            let key = format!("{prefix}{WEIGHT}");
            let bad = |reason: String| invalid(path, &key, reason);
            if state.contains(&key) {
                return Err(bad(format!(
                    "the file holds it dense as well, beside \"{prefix}.bitmask\""
                )));
            }
            let [Some(compressed), Some(bitmask), Some(shape), Some(row_offsets)] = parts else {
                let (present, missing): (Vec<usize>, Vec<usize>) =
                    (0..PARTS.len()).partition(|&i| parts[i].is_some());
                let quote = |parts: Vec<usize>| {
                    let names: Vec<String> = parts
                        .into_iter()
                        .map(|i| format!("\"{}\"", entry_name(prefix, i)))
                        .collect();
                    names.join(", ")
                };
                return Err(bad(format!(
                    "{} without {}",
                    quote(present),
                    quote(missing)
                )));
            };
            let entries = Entries {
                key: &key,
                path,
                prefix,
                compressed,
                bitmask,
                shape,
                row_offsets,
            };
            let tensor = entries.rebuild(self.shapes.get(&key).map(Vec::as_slice))?;
            state.insert(key, tensor);
        }
        Ok(())
    }
}

/// The error of the compressed tensor `key` whose entries are missing or disagree,
/// `reason` naming the entry.
fn invalid(path: &Path, key: &str, reason: String) -> Error {
    Error::CompressedTensor {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason,
    }
}

/// The four entries of one compressed tensor.
struct Entries<'v, 'a> {
    /// The dense tensor's name, `P.weight`.
    key: &'v str,
    /// The file, for errors.
    path: &'v Path,
    /// `P`.
    prefix: &'v str,
    compressed: &'v TensorView<'a>,
    bitmask: &'v TensorView<'a>,
    shape: &'v TensorView<'a>,
    row_offsets: &'v TensorView<'a>,
}

impl Entries<'_, '_> {
    /// The quoted name of entry `part`.
    fn name(&self, part: usize) -> String {
        format!("\"{}\"", entry_name(self.prefix, part))
    }

    /// The integers of an entry (`.shape` or `.row_offsets`).
    fn integers(&self, part: usize, view: &TensorView) -> Result<Vec<i64>> {
        let name = entry_name(self.prefix, part);
        match decode(&name, view)? {
            TensorData::I64(v) => Ok(v),
            _ => Err(Error::UnsupportedDtype {
                key: name,
                dtype: format!("{:?}", view.dtype()),
                expected: "I64 or I32",
            }),
        }
    }

    /// The dense tensor, after checking every entry against the others. `dense_shape`
    /// is the shape `reflow.shapes` gives, when it gives one. Nothing is allocated
    /// before the entries' sizes agree, so that the dense tensor is at most eight
    /// times as many values as the file has mask bytes.
    fn rebuild(&self, dense_shape: Option<&[usize]>) -> Result<StoredTensor> {
        let invalid = |reason: String| Err(invalid(self.path, self.key, reason));

        // The dense shape: rows along every dimension but the last, `cols` long.
        let dims = self.integers(2, self.shape)?;
        if self.shape.shape().len() != 1 || dims.is_empty() {
            return invalid(format!(
                "{} must list the dense dimensions (one value or more), found a tensor of \
                 shape {}",
                self.name(2),
                Shape(self.shape.shape().to_vec())
            ));
        }
        let Ok(dims) = dims
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<usize>, _>>()
        else {
            return invalid(format!(
                "{} holds a negative dimension: {dims:?}",
                self.name(2)
            ));
        };
        let Some((&cols, row_dims)) = dims.split_last() else {
            return invalid(format!("{} is empty", self.name(2)));
        };
        let product = |dims: &[usize]| dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let (Some(numel), Some(rows)) = (product(&dims), product(row_dims)) else {
            return invalid(format!("{} {} is too large", self.name(2), Shape(dims)));
        };

        // The sizes: ⌈cols / 8⌉ mask bytes a row, one offset a row, values in one
        // dimension.
        if self.bitmask.dtype() != Dtype::U8 {
            return Err(Error::UnsupportedDtype {
                key: entry_name(self.prefix, 1),
                dtype: format!("{:?}", self.bitmask.dtype()),
                expected: "U8 (eight mask bits a byte)",
            });
        }
        let row_bytes = cols.div_ceil(8);
        let mask_shape: Vec<usize> = row_dims.iter().copied().chain([row_bytes]).collect();
        if self.bitmask.shape() != mask_shape {
            return invalid(format!(
                "{} has shape {}, expected {} for {} {}: ⌈{cols} / 8⌉ bytes a row",
                self.name(1),
                Shape(self.bitmask.shape().to_vec()),
                Shape(mask_shape),
                self.name(2),
                Shape(dims.clone())
            ));
        }
        let offsets = self.integers(3, self.row_offsets)?;
        if self.row_offsets.shape() != row_dims {
            return invalid(format!(
                "{} has shape {}, expected {}: one offset a row of {} {}",
                self.name(3),
                Shape(self.row_offsets.shape().to_vec()),
                Shape(row_dims.to_vec()),
                self.name(2),
                Shape(dims.clone())
            ));
        }
        if self.compressed.shape().len() != 1 {
            return invalid(format!(
                "{} must be 1-D, found shape {}",
                self.name(0),
                Shape(self.compressed.shape().to_vec())
            ));
        }

        // The mask: nothing marked past a row's last column.
        let mask = self.bitmask.data();
        let mut counts = Vec::with_capacity(rows);
        for (row, bytes) in mask.chunks_exact(row_bytes.max(1)).enumerate() {
            let used = cols - 8 * (row_bytes - 1);
            if used < 8 && bytes[row_bytes - 1] >> used != 0 {
                return invalid(format!(
                    "{} marks row {row} past its last column ({})",
                    self.name(1),
                    cols - 1
                ));
            }
            counts.push(bytes.iter().map(|b| b.count_ones() as usize).sum::<usize>());
        }
        // Rows of no column have no mask byte (and no value).
        counts.resize(rows, 0);

        // The values: one for each marked position.
        let marked: usize = counts.iter().sum();
        if self.compressed.shape()[0] != marked {
            return invalid(format!(
                "{} holds {} values, {} marks {marked}",
                self.name(0),
                self.compressed.shape()[0],
                self.name(1)
            ));
        }

        // The offsets: compressed-tensors' `cumsum(counts, 0) - counts`, the values
        // before each row along the first dimension (in a 2-D tensor, the values
        // before the row).
        let inner: usize = row_dims.get(1..).unwrap_or(&[]).iter().product();
        let mut before = vec![0usize; inner];
        for (row, (&offset, &count)) in offsets.iter().zip(&counts).enumerate() {
            let expected = &mut before[row % inner];
            if offset != *expected as i64 {
                return invalid(format!(
                    "{} gives row {row} offset {offset}, expected {expected} (the values \
                     {} marks before it)",
                    self.name(3),
                    self.name(1)
                ));
            }
            *expected += count;
        }

        let shape = match dense_shape {
            None => dims,
            Some(given) if product(given) == Some(numel) => given.to_vec(),
            Some(given) => {
                return invalid(format!(
                    "metadata \"{SHAPES_KEY}\" gives shape {}, which does not hold the \
                     {numel} values of {} {}",
                    Shape(given.to_vec()),
                    self.name(2),
                    Shape(dims)
                ))
            }
        };
        let data = match decode(&entry_name(self.prefix, 0), self.compressed)? {
            TensorData::F32(values) => TensorData::F32(scatter(&values, mask, numel, cols)),
            TensorData::I64(values) => TensorData::I64(scatter(&values, mask, numel, cols)),
        };
        Ok(StoredTensor { shape, data })
    }
}

/// The dense row-major values of `numel` elements in rows of `cols`, `values` placed
/// where `mask` (⌈cols / 8⌉ bytes a row, least significant bit first) marks them.
/// The caller has checked that `mask` marks exactly `values.len()` positions.
fn scatter<T: Copy + Default>(values: &[T], mask: &[u8], numel: usize, cols: usize) -> Vec<T> {
    let mut dense = vec![T::default(); numel];
    if cols == 0 {
        return dense;
    }
    let row_bytes = cols.div_ceil(8);
    let mut next = values.iter();
    for (row, bits) in dense
        .chunks_exact_mut(cols)
        .zip(mask.chunks_exact(row_bytes))
    {
        for (col, slot) in row.iter_mut().enumerate() {
            if bits[col / 8] >> (col % 8) & 1 == 1 {
                if let Some(&v) = next.next() {
                    *slot = v;
                }
            }
        }
    }
    dense
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_column_is_the_least_significant_bit() {
        // NumPy: packbits([1, 0, 0, 0, 0, 0, 0, 0, 0, 1], bitorder="little") == [1, 2].
        let t = StoredTensor::f32(
            vec![1, 10],
            vec![5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 7.0],
        )
        .unwrap();
        let sparse = Sparse {
            prefix: "fc",
            values: t.as_f32().unwrap(),
            rows: 1,
            cols: 10,
            nonzero: 2,
        };
        let [_, (name, bitmask), ..] = sparse.entries();
        assert_eq!(name, "fc.bitmask");
        assert_eq!(bitmask.bytes, [1, 2]);
        assert_eq!(
            scatter(&[5.0f32, 7.0], &bitmask.bytes, 10, 10),
            t.as_f32().unwrap()
        );
    }

    #[test]
    fn entries_are_named_after_the_tensor_without_weight() {
        assert_eq!(
            entry_of("layer1.0.conv1.bitmask"),
            Some(("layer1.0.conv1", 1))
        );
        assert_eq!(entry_of("fc.row_offsets"), Some(("fc", 3)));
        assert_eq!(entry_of("fc.weight"), None);
        assert_eq!(entry_of(".shape"), None);
        assert_eq!(entry_of("shape"), None);
        assert_eq!(entry_of("reshape"), None);
    }
}
