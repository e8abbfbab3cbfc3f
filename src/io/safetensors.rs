//! safetensors checkpoints ⇄ [`StateDict`].

use super::write_atomic;
use crate::error::{Error, Result};
use crate::state_dict::{StateDict, StoredTensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// A tensor ready to serialise: dtype, shape, little-endian bytes.
struct Encoded {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Encoded {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Decodes little-endian elements of `N` bytes each.
fn decode<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks of N bytes")))
        .collect()
}

impl StateDict {
    /// Reads a safetensors file. F32, F16, BF16 and F64 tensors become `f32`; I64 and
    /// I32 tensors (counters such as `num_batches_tracked`) become `i64`. Any other
    /// dtype is an [`Error::UnsupportedDtype`] naming the key; a truncated or corrupt
    /// file is an [`Error::Safetensors`].
    pub fn read_safetensors(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = super::file::read_regular(path)?;
        Self::parse_safetensors(&bytes, path.to_path_buf())
    }

    /// Reads a safetensors file from memory; see [`StateDict::read_safetensors`].
    pub fn from_safetensors_bytes(bytes: &[u8]) -> Result<Self> {
        Self::parse_safetensors(bytes, PathBuf::from("<memory>"))
    }

    fn parse_safetensors(bytes: &[u8], path: PathBuf) -> Result<Self> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
            path,
            reason: e.to_string(),
        })?;
        let mut state = StateDict::new();
        for (name, view) in file.iter() {
            let raw = view.data();
            let data = match view.dtype() {
                Dtype::F32 => TensorData::F32(decode(raw, f32::from_le_bytes)),
                Dtype::F64 => TensorData::F32(decode(raw, |b| f64::from_le_bytes(b) as f32)),
                Dtype::F16 => {
                    TensorData::F32(decode(raw, |b| half::f16::from_le_bytes(b).to_f32()))
                }
                Dtype::BF16 => {
                    TensorData::F32(decode(raw, |b| half::bf16::from_le_bytes(b).to_f32()))
                }
                Dtype::I64 => TensorData::I64(decode(raw, i64::from_le_bytes)),
                Dtype::I32 => TensorData::I64(decode(raw, |b| i32::from_le_bytes(b) as i64)),
                other => {
                    return Err(Error::UnsupportedDtype {
                        key: name.to_string(),
                        dtype: format!("{other:?}"),
                        expected: "F32, F16, BF16 or F64 (I64 for counters)",
                    })
                }
            };
            state.insert(
                name,
                StoredTensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(state)
    }

    /// Serialises to safetensors bytes: floats as F32, integers as I64.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let encoded: Vec<(&str, Encoded)> = self
            .iter()
            .map(|(name, t)| {
                let (dtype, bytes) = match &t.data {
                    TensorData::F32(v) => {
                        (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
                    }
                    TensorData::I64(v) => {
                        (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect())
                    }
                };
                (
                    name,
                    Encoded {
                        dtype,
                        shape: t.shape.clone(),
                        bytes,
                    },
                )
            })
            .collect();
        safetensors::serialize(encoded.iter().map(|(n, e)| (*n, e)), None).map_err(|e| {
            Error::Safetensors {
                path: PathBuf::from("<memory>"),
                reason: e.to_string(),
            }
        })
    }

    /// Writes a safetensors file that PyTorch reads with `safetensors.torch.load_file`
    /// and loads with `load_state_dict(strict=True)`. The write is atomic: a temporary
    /// file in the same folder, then a rename.
    pub fn write_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path, &self.to_safetensors_bytes()?)
    }
}
