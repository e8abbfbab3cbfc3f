//! Named tensors in PyTorch's `state_dict` sense, and strict loading into any
//! [`Params`].

use crate::error::{Error, Result, Shape, ShapeMismatch, StateDictMismatch};
use crate::layer::{join, ParamRole, Params};
use std::collections::BTreeMap;

/// The values of a stored tensor: floating point (held as `f32`, whatever the file's
/// float dtype) or integer (held as `i64`, for counters such as
/// `num_batches_tracked`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TensorData {
    /// Floating-point values.
    F32(Vec<f32>),
    /// Integer values.
    I64(Vec<i64>),
}

/// One tensor of a state dict: shape and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    /// The shape; `[]` for a scalar.
    pub shape: Vec<usize>,
    /// The values.
    pub data: TensorData,
}

impl StoredTensor {
    /// A float tensor. Fails when `data` does not have the shape's element count.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        Self::checked(shape, data.len()).map(|shape| StoredTensor {
            shape,
            data: TensorData::F32(data),
        })
    }

    /// An integer tensor. Fails when `data` does not have the shape's element count.
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Result<Self> {
        Self::checked(shape, data.len()).map(|shape| StoredTensor {
            shape,
            data: TensorData::I64(data),
        })
    }

    fn checked(shape: Vec<usize>, len: usize) -> Result<Vec<usize>> {
        if crate::data::numel(&shape) != Some(len) {
            return Err(Error::invalid(
                "tensor",
                format!("shape {} does not hold {len} values", Shape(shape)),
            ));
        }
        Ok(shape)
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }

    /// The float values, or `None` for an integer tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            TensorData::I64(_) => None,
        }
    }
}

/// A PyTorch-style state dict: tensors by name, in sorted order.
///
/// Read one from a safetensors file with [`StateDict::read_safetensors`] (dense, or
/// with pruned weights in compressed-tensors' bitmask layout), take one from a model
/// with [`StateDict::from_layer`], load one into a model with
/// [`StateDict::load_into`] (strict, like `load_state_dict(strict=True)`), and write
/// one with [`StateDict::write_safetensors`] or, compressed,
/// [`StateDict::write_safetensors_as`].
///
/// ```
/// use reflow::layer::Layer;
/// use reflow::models::{ResNet, ResNetConfig};
/// use reflow::StateDict;
///
/// let net = ResNet::new(ResNetConfig::cifar_resnet(20)?)?;
/// let state = StateDict::from_layer(&net);
/// assert!(state.get("layer2.0.downsample.1.running_var").is_some());
/// assert!(state.get("layer1.0.bn1.num_batches_tracked").is_some());
///
/// let mut copy = ResNet::new(ResNetConfig::cifar_resnet(20)?)?;
/// state.load_into(&mut copy)?;
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict {
    tensors: BTreeMap<String, StoredTensor>,
}

/// The suffix of a batch-norm layer's batch counter.
const NUM_BATCHES_TRACKED: &str = "num_batches_tracked";

impl StateDict {
    /// An empty state dict.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every parameter of `layer` under its name, plus each batch-norm layer's
    /// `num_batches_tracked`: what PyTorch's `model.state_dict()` holds.
    pub fn from_layer(layer: &dyn Params) -> Self {
        let mut tensors = BTreeMap::new();
        layer.visit_params(&mut |p| {
            tensors.insert(
                p.name.to_string(),
                StoredTensor {
                    shape: p.shape.to_vec(),
                    data: TensorData::F32(p.data.to_vec()),
                },
            );
        });
        layer.visit_norms(&mut |name, s| {
            tensors.insert(
                join(name, NUM_BATCHES_TRACKED),
                StoredTensor {
                    shape: vec![],
                    data: TensorData::I64(vec![s.num_batches_tracked]),
                },
            );
        });
        StateDict { tensors }
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, tensor: StoredTensor) {
        self.tensors.insert(name.into(), tensor);
    }

    /// Removes a tensor, returning it.
    pub fn remove(&mut self, name: &str) -> Option<StoredTensor> {
        self.tensors.remove(name)
    }

    /// The tensor stored under `name`.
    pub fn get(&self, name: &str) -> Option<&StoredTensor> {
        self.tensors.get(name)
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Names and tensors, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &StoredTensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when there is no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Compares the keys and shapes with `layer`'s, as PyTorch's strict loading does.
    /// `num_batches_tracked` may be absent (it is not a parameter) but is reported
    /// when unexpected. Dtypes are checked too: a parameter stored as integers is an
    /// [`Error::UnsupportedDtype`].
    pub fn check(&self, layer: &dyn Params) -> Result<StateDictMismatch> {
        let mut report = StateDictMismatch::default();
        let mut expected = BTreeMap::new();
        let mut dtype_error = None;
        layer.visit_params(&mut |p| {
            expected.insert(p.name.to_string(), ());
            match self.tensors.get(p.name) {
                None => report.missing.push(p.name.to_string()),
                Some(t) if t.shape != p.shape => report.shapes.push(ShapeMismatch {
                    key: p.name.to_string(),
                    expected: p.shape.into(),
                    found: Shape(t.shape.clone()),
                }),
                Some(t) if t.as_f32().is_none() && dtype_error.is_none() => {
                    dtype_error = Some(Error::UnsupportedDtype {
                        key: p.name.to_string(),
                        dtype: "an integer type".into(),
                        expected: "a float dtype (F32, F16, BF16 or F64)",
                    })
                }
                Some(_) => {}
            }
        });
        layer.visit_norms(&mut |name, _| {
            let key = join(name, NUM_BATCHES_TRACKED);
            if let Some(t) = self.tensors.get(&key) {
                if t.numel() != 1 {
                    report.shapes.push(ShapeMismatch {
                        key: key.clone(),
                        expected: Shape(vec![]),
                        found: Shape(t.shape.clone()),
                    });
                }
            }
            expected.insert(key, ());
        });
        if let Some(e) = dtype_error {
            return Err(e);
        }
        report.unexpected = self
            .tensors
            .keys()
            .filter(|k| !expected.contains_key(*k))
            .cloned()
            .collect();
        Ok(report)
    }

    /// Loads every tensor into `layer`, strictly: when any key is missing or
    /// unexpected, or any shape differs, nothing is changed and the error lists every
    /// problem by name ([`Error::StateDict`]). So too when a value cannot be right —
    /// NaN or infinite, or a negative running variance ([`Error::BadValue`], naming
    /// the first such key): [`StateDict::load_into_as_stored`] loads those anyway.
    pub fn load_into(&self, layer: &mut dyn Params) -> Result<()> {
        self.check_values(layer)?;
        self.load_into_as_stored(layer)
    }

    /// [`StateDict::load_into`] without the check of the values: for a checkpoint
    /// whose non-finite values are meant (NaN propagates through the network, as in
    /// PyTorch).
    pub fn load_into_as_stored(&self, layer: &mut dyn Params) -> Result<()> {
        let report = self.check(layer)?;
        if !report.is_empty() {
            return Err(Error::StateDict(report));
        }
        self.copy_into(layer);
        Ok(())
    }

    /// The first value among the tensors `layer` would load that cannot be right:
    /// NaN or infinite anywhere, negative in a running variance.
    fn check_values(&self, layer: &dyn Params) -> Result<()> {
        let mut first = None;
        layer.visit_params(&mut |p| {
            if first.is_some() {
                return;
            }
            let Some(values) = self.tensors.get(p.name).and_then(|t| t.as_f32()) else {
                return;
            };
            let bad = if p.role == ParamRole::RunningVar {
                values.iter().position(|v| !v.is_finite() || *v < 0.0)
            } else {
                values.iter().position(|v| !v.is_finite())
            };
            if let Some(i) = bad {
                first = Some(Error::BadValue {
                    key: p.name.to_string(),
                    reason: format!(
                        "{} at index {i} (of {}){}",
                        values[i],
                        values.len(),
                        if p.role == ParamRole::RunningVar && values[i] < 0.0 {
                            ": a variance cannot be negative"
                        } else {
                            ""
                        }
                    ),
                });
            }
        });
        first.map_or(Ok(()), Err)
    }

    /// Loads the tensors whose key and shape fit `layer` and returns what did not fit,
    /// like PyTorch's `load_state_dict(strict=False)` (which would fail on shape
    /// mismatches; here they are skipped and reported).
    pub fn load_into_partial(&self, layer: &mut dyn Params) -> Result<StateDictMismatch> {
        let report = self.check(layer)?;
        self.copy_into(layer);
        Ok(report)
    }

    fn copy_into(&self, layer: &mut dyn Params) {
        layer.visit_params_mut(&mut |p| {
            if let Some(t) = self.tensors.get(p.name) {
                if let (Some(v), true) = (t.as_f32(), t.shape == p.shape) {
                    p.data.copy_from_slice(v);
                }
            }
        });
        layer.visit_norms_mut(&mut |name, s| {
            if let Some(t) = self.tensors.get(&join(name, NUM_BATCHES_TRACKED)) {
                match &t.data {
                    TensorData::I64(v) if v.len() == 1 => *s.num_batches_tracked = v[0],
                    TensorData::F32(v) if v.len() == 1 => *s.num_batches_tracked = v[0] as i64,
                    _ => {}
                }
            }
        });
    }
}
