//! The crate's error type.
//!
//! Every fallible function in `reflow` returns [`Result<T>`](Result). Each variant names
//! what went wrong in the user's terms: the state-dict key, the layer path, the file,
//! the expected and the found shape.

use std::fmt;
use std::path::PathBuf;

/// Shorthand for `std::result::Result<T, reflow::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A tensor shape, printed PyTorch-style as `[64, 3, 7, 7]`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Shape(pub Vec<usize>);

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

impl From<&[usize]> for Shape {
    fn from(s: &[usize]) -> Self {
        Shape(s.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(s: [usize; N]) -> Self {
        Shape(s.to_vec())
    }
}

/// One parameter whose stored shape differs from the model's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The state-dict key.
    pub key: String,
    /// The shape the model has.
    pub expected: Shape,
    /// The shape the state dict has.
    pub found: Shape,
}

/// Why a state dict does not fit a model, in the manner of PyTorch's
/// `load_state_dict(strict=True)`: every missing key, every unexpected key and every
/// shape mismatch, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateDictMismatch {
    /// Keys the model has and the state dict lacks.
    pub missing: Vec<String>,
    /// Keys the state dict has and the model lacks.
    pub unexpected: Vec<String>,
    /// Keys both have, with different shapes.
    pub shapes: Vec<ShapeMismatch>,
}

impl StateDictMismatch {
    /// True when the state dict fits the model exactly.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shapes.is_empty()
    }
}

impl fmt::Display for StateDictMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("missing keys: {}", quoted(&self.missing)));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!("unexpected keys: {}", quoted(&self.unexpected)));
        }
        if !self.shapes.is_empty() {
            let s: Vec<String> = self
                .shapes
                .iter()
                .map(|m| {
                    format!(
                        "\"{}\" (model {}, checkpoint {})",
                        m.key, m.expected, m.found
                    )
                })
                .collect();
            parts.push(format!("shape mismatches: {}", s.join(", ")));
        }
        write!(f, "{}", parts.join("; "))
    }
}

fn quoted(keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("\"{k}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything that can go wrong in `reflow`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// A safetensors file is truncated, corrupt or otherwise unreadable.
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors {
        /// The file (or `<memory>` for bytes).
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },

    /// A tensor stored in compressed-tensors' bitmask layout cannot be rebuilt: one of
    /// its entries (`NAME.compressed`, `NAME.bitmask`, `NAME.shape`,
    /// `NAME.row_offsets`) is missing or disagrees with the others.
    #[error("{path}: compressed tensor \"{key}\": {reason}")]
    CompressedTensor {
        /// The file (or `<memory>` for bytes).
        path: PathBuf,
        /// The dense tensor's state-dict key, e.g. `layer1.0.conv1.weight`.
        key: String,
        /// What is wrong, naming the entry.
        reason: String,
    },

    /// A tensor is stored in a dtype `reflow` cannot use for it.
    #[error("tensor \"{key}\" has dtype {dtype}, expected {expected}")]
    UnsupportedDtype {
        /// The state-dict key.
        key: String,
        /// The dtype found.
        dtype: String,
        /// What would have been accepted.
        expected: &'static str,
    },

    /// An IDX file is truncated, corrupt or of an unsupported kind.
    #[error("{path}: invalid IDX file: {reason}")]
    Idx {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// An image file, or a folder of them, cannot be used: not decodable, of an
    /// unsupported kind, of a size that disagrees with the others, or no image at all.
    #[error("{path}: {reason}")]
    Image {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A state dict does not fit a model (strict loading).
    #[error("state dict does not fit the model: {0}")]
    StateDict(StateDictMismatch),

    /// The keys of a state dict do not describe a network of the expected family.
    #[error("not a {family} state dict: key \"{key}\": {reason}")]
    Architecture {
        /// The family the keys were read as ("ResNet", "VGG", ...).
        family: String,
        /// The first offending key.
        key: String,
        /// Why it does not fit.
        reason: String,
    },

    /// A tensor given to a layer or function has the wrong shape.
    #[error("{context}: expected shape {expected}, found {found}")]
    Shape {
        /// Where: a layer path such as `layer2.0.conv1`, or a function name.
        context: String,
        /// What was expected, e.g. `[_, 3, _, _]` (`_` stands for any size).
        expected: String,
        /// What was given.
        found: Shape,
    },

    /// A stored value cannot be right: NaN or infinite, or a negative running
    /// variance. [`crate::StateDict::load_into_as_stored`] loads such a checkpoint
    /// anyway.
    #[error("checkpoint value: key \"{key}\": {reason}")]
    BadValue {
        /// The tensor.
        key: String,
        /// What is wrong, and where.
        reason: String,
    },

    /// A number outside the values its parameter takes (a sparsity of 1, a momentum
    /// of 0, a dropout probability of 1.2).
    #[error("invalid {name}: {value} is outside {allowed}")]
    OutOfRange {
        /// The parameter, e.g. `momentum` or `channel fraction`.
        name: String,
        /// The value given, as written (`p = 1.2` for a probability `p`).
        value: String,
        /// The values allowed, as an interval: `[0, 1)`, `(0, 1]`.
        allowed: String,
    },

    /// A name that is none of those its parameter takes (a mode, a policy, a format).
    #[error("invalid {name}: \"{given}\" (expected {expected})")]
    UnknownName {
        /// The parameter, e.g. `sparse policy`.
        name: String,
        /// The name given.
        given: String,
        /// The names taken, in words: `measured, never or always`.
        expected: String,
    },

    /// No data where a stage needs some: an empty calibration set, no batches to
    /// measure on.
    #[error("invalid {name}: {what}")]
    EmptyData {
        /// The data, e.g. `calibration data`.
        name: String,
        /// What is empty: `empty calibration set (0 batches)`.
        what: String,
    },

    /// A computation a kernel or layer does not offer (a dilated sparse convolution,
    /// a reader the build was compiled without).
    #[error("unsupported {name}: {reason}")]
    Unsupported {
        /// What is asked of, e.g. `config`.
        name: String,
        /// What it does not do.
        reason: String,
    },

    /// A configuration or argument is invalid in a way no variant above names: a
    /// family's config whose parts disagree, a layer built from mismatched parts.
    #[error("invalid {name}: {reason}")]
    InvalidArgument {
        /// The parameter or option, e.g. `groups` or `mean`.
        name: String,
        /// Why it is rejected.
        reason: String,
    },

    /// Two data files that must agree do not (e.g. image and label counts).
    #[error("data mismatch: {0}")]
    Data(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// [`Error::OutOfRange`].
    pub(crate) fn out_of_range(
        name: impl Into<String>,
        value: impl fmt::Display,
        allowed: impl Into<String>,
    ) -> Self {
        Error::OutOfRange {
            name: name.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }

    /// [`Error::OutOfRange`] for a count or size that must be at least one and is 0.
    pub(crate) fn zero(name: impl Into<String>) -> Self {
        Error::out_of_range(name, 0, "[1, ∞)")
    }

    /// [`Error::UnknownName`].
    pub(crate) fn unknown(
        name: impl Into<String>,
        given: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        Error::UnknownName {
            name: name.into(),
            given: given.into(),
            expected: expected.into(),
        }
    }

    /// [`Error::EmptyData`].
    pub(crate) fn empty(name: impl Into<String>, what: impl Into<String>) -> Self {
        Error::EmptyData {
            name: name.into(),
            what: what.into(),
        }
    }

    /// [`Error::Unsupported`].
    pub(crate) fn unsupported(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Unsupported {
            name: name.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn shape(
        context: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<Shape>,
    ) -> Self {
        Error::Shape {
            context: context.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }
}
