//! safetensors checkpoints ⇄ [`StateDict`].

use super::compressed::{self, Compressed};
use super::encoding::{decode, Encoded};
use super::write_atomic;
use crate::error::{Error, Result};
use crate::state_dict::{StateDict, StoredTensor};
use safetensors::tensor::SafeTensors;
use std::fmt;
use std::path::{Path, PathBuf};

crate::names::names! {
    /// How [`StateDict::write_safetensors_as`] stores the tensors.
    ///
    /// ```
    /// use reflow::io::SaveFormat;
    ///
    /// assert_eq!("compressed".parse::<SaveFormat>()?, SaveFormat::Compressed);
    /// assert_eq!(SaveFormat::default(), SaveFormat::Dense);
    /// assert!("zip".parse::<SaveFormat>().is_err());
    /// # Ok::<(), reflow::Error>(())
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum SaveFormat as "save format", expecting "\"dense\" or \"compressed\"" {
        /// Every tensor as it is, floats as F32 and integers as I64: what PyTorch's
        /// `safetensors.torch.save_file(model.state_dict(), path)` writes.
        #[default]
        Dense = "dense",
        /// Sparse weights in the bitmask layout of compressed-tensors (Neural Magic /
        /// vLLM, format `"sparse-bitmask"`), which its `BitmaskCompressor` decompresses;
        /// every other tensor dense, in the same file. A float `*.weight` of rank 2 or
        /// more is compressed when that takes fewer bytes (from about 3 % zeros on: a
        /// value's mask bit costs 1/32 of its four bytes). A `-0.0` weight is read back
        /// as `+0.0`: the mask keeps the values `!= 0`, as compressed-tensors' does. See
        /// `docs/models.md`, "Compressed checkpoints".
        Compressed = "compressed",
    }
}

impl StateDict {
    /// Reads a safetensors file. F32, F16, BF16 and F64 tensors become `f32`; I64 and
    /// I32 tensors (counters such as `num_batches_tracked`) become `i64`. Any other
    /// dtype is an [`Error::UnsupportedDtype`] naming the key; a truncated or corrupt
    /// file is an [`Error::Safetensors`].
    ///
    /// Tensors stored in the bitmask layout of compressed-tensors
    /// ([`SaveFormat::Compressed`], or written by compressed-tensors'
    /// `BitmaskCompressor`) are rebuilt dense under their own name (`conv1.weight`
    /// from `conv1.compressed`, `conv1.bitmask`, `conv1.shape` and
    /// `conv1.row_offsets`). A compressed tensor whose entries are missing or
    /// disagree is an [`Error::CompressedTensor`] naming it.
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
        let invalid = |e: safetensors::SafeTensorError| Error::Safetensors {
            path: path.clone(),
            reason: e.to_string(),
        };
        if let Some(name) = duplicate_key(bytes) {
            return Err(Error::Safetensors {
                path,
                reason: format!("the header names tensor \"{name}\" twice"),
            });
        }
        let file = SafeTensors::deserialize(bytes).map_err(invalid)?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(invalid)?;
        let compressed = Compressed::find(file.iter(), header.metadata().as_ref(), &path)?;
        let mut state = StateDict::new();
        for (name, view) in file.iter() {
            if compressed.holds_entry(name) {
                continue;
            }
            let data = decode(name, &view)?;
            state.insert(
                name,
                StoredTensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        compressed.rebuild_into(&mut state, &path)?;
        Ok(state)
    }

    /// Serialises to safetensors bytes: floats as F32, integers as I64.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        self.to_safetensors_bytes_as(SaveFormat::Dense)
    }

    /// Serialises to safetensors bytes in `format`. [`SaveFormat::Compressed`] fails
    /// with an [`Error::InvalidArgument`] when a tensor's name ends like a compressed
    /// tensor's entry (`.compressed`, `.bitmask`, `.shape`, `.row_offsets`): it would
    /// not read back as itself.
    ///
    /// ```
    /// use reflow::io::SaveFormat;
    /// use reflow::state_dict::StoredTensor;
    /// use reflow::StateDict;
    ///
    /// // A 3x3 convolution of 64 filters, 80 % of its weights pruned.
    /// let weights: Vec<f32> = (0..64 * 64 * 9)
    ///     .map(|i| if i % 5 == 0 { 0.01 * (i % 7) as f32 + 0.5 } else { 0.0 })
    ///     .collect();
    /// let mut state = StateDict::new();
    /// state.insert("conv.weight", StoredTensor::f32(vec![64, 64, 3, 3], weights)?);
    /// state.insert("bn.bias", StoredTensor::f32(vec![64], vec![0.1; 64])?);
    ///
    /// let dense = state.to_safetensors_bytes_as(SaveFormat::Dense)?;
    /// let compressed = state.to_safetensors_bytes_as(SaveFormat::Compressed)?;
    /// assert!(compressed.len() * 10 < dense.len() * 3);
    /// // Read back dense, bit for bit.
    /// assert_eq!(StateDict::from_safetensors_bytes(&compressed)?, state);
    /// # Ok::<(), reflow::Error>(())
    /// ```
    pub fn to_safetensors_bytes_as(&self, format: SaveFormat) -> Result<Vec<u8>> {
        let (entries, metadata) = match format {
            SaveFormat::Dense => {
                let entries = self
                    .iter()
                    .map(|(name, t)| (name.to_string(), Encoded::dense(t)))
                    .collect();
                (entries, None)
            }
            SaveFormat::Compressed => {
                let (entries, metadata) = compressed::encode(self)?;
                (entries, Some(metadata))
            }
        };
        safetensors::serialize(entries.iter().map(|(n, e)| (n.as_str(), e)), metadata).map_err(
            |e| Error::Safetensors {
                path: PathBuf::from("<memory>"),
                reason: e.to_string(),
            },
        )
    }

    /// Writes a safetensors file that PyTorch reads with `safetensors.torch.load_file`
    /// and loads with `load_state_dict(strict=True)`. The write is atomic: a temporary
    /// file in the same folder, then a rename.
    pub fn write_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        self.write_safetensors_as(path, SaveFormat::Dense)
    }

    /// Writes a safetensors file in `format`, atomically as
    /// [`StateDict::write_safetensors`] does. [`StateDict::read_safetensors`] reads
    /// either format back; a compressed file takes compressed-tensors to decompress
    /// in Python (see `docs/models.md`, "Compressed checkpoints").
    ///
    /// ```
    /// use reflow::io::SaveFormat;
    /// use reflow::prelude::*;
    ///
    /// # let trained = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/resnet20_cifar.safetensors");
    /// let mut net = ResNet::load(trained)?;
    /// MagnitudePruner::new(0.8).prune(&mut net)?;
    /// let dir = tempfile::tempdir()?;
    /// let (dense, compressed) = (dir.path().join("d.safetensors"), dir.path().join("c.safetensors"));
    /// StateDict::from_layer(&net).write_safetensors_as(&dense, SaveFormat::Dense)?;
    /// StateDict::from_layer(&net).write_safetensors_as(&compressed, SaveFormat::Compressed)?;
    /// let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len());
    /// assert!(size(&compressed)? * 2 < size(&dense)?);
    ///
    /// let back = ResNet::load(&compressed)?;
    /// assert_eq!(StateDict::from_layer(&back), StateDict::from_layer(&net));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_safetensors_as(&self, path: impl AsRef<Path>, format: SaveFormat) -> Result<()> {
        write_atomic(path, &self.to_safetensors_bytes_as(format)?)
    }
}

/// The first key the JSON header of a safetensors file gives twice (a JSON map keeps
/// the last silently), or `None` — also when the header is unreadable, which the
/// safetensors reader then reports.
fn duplicate_key(bytes: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<M: MapAccess<'de>>(
            self,
            mut map: M,
        ) -> std::result::Result<Self::Value, M::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if !seen.insert(key.clone()) {
                    return Ok(Some(key));
                }
            }
            Ok(None)
        }
    }
    let len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let header = bytes.get(8..8usize.checked_add(usize::try_from(len).ok()?)?)?;
    serde_json::Deserializer::from_slice(header)
        .deserialize_map(Keys)
        .ok()
        .flatten()
}
