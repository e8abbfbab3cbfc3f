//! Tensors as safetensors stores them: little-endian bytes with a dtype and a shape,
//! both ways. The dense and the compressed layouts share it.

use crate::error::{Error, Result};
use crate::state_dict::{StoredTensor, TensorData};
use safetensors::tensor::{Dtype, TensorView, View};
use std::borrow::Cow;

/// A tensor ready to serialise: dtype, shape, little-endian bytes.
pub(super) struct Encoded {
    pub(super) dtype: Dtype,
    pub(super) shape: Vec<usize>,
    pub(super) bytes: Vec<u8>,
}

/// Tensors ready to serialise, by name.
pub(super) type Serialised = Vec<(String, Encoded)>;

impl Encoded {
    /// `tensor` as it is: floats as F32, integers as I64.
    pub(super) fn dense(tensor: &StoredTensor) -> Self {
        let (dtype, bytes) = match &tensor.data {
            TensorData::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            TensorData::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        };
        Encoded {
            dtype,
            shape: tensor.shape.clone(),
            bytes,
        }
    }
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
fn decode_le<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks of N bytes")))
        .collect()
}

/// The values of the entry `name`: F32, F16, BF16 and F64 as `f32`, I64 and I32 as
/// `i64`; any other dtype is an [`Error::UnsupportedDtype`] naming the entry.
pub(super) fn decode(name: &str, view: &TensorView) -> Result<TensorData> {
    let raw = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => TensorData::F32(decode_le(raw, f32::from_le_bytes)),
        Dtype::F64 => TensorData::F32(decode_le(raw, |b| f64::from_le_bytes(b) as f32)),
        Dtype::F16 => TensorData::F32(decode_le(raw, |b| half::f16::from_le_bytes(b).to_f32())),
        Dtype::BF16 => TensorData::F32(decode_le(raw, |b| half::bf16::from_le_bytes(b).to_f32())),
        Dtype::I64 => TensorData::I64(decode_le(raw, i64::from_le_bytes)),
        Dtype::I32 => TensorData::I64(decode_le(raw, |b| i32::from_le_bytes(b) as i64)),
        other => {
            return Err(Error::UnsupportedDtype {
                key: name.to_string(),
                dtype: format!("{other:?}"),
                expected: "F32, F16, BF16 or F64 (I64 for counters)",
            })
        }
    })
}
