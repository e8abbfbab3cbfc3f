//! NumPy `.npy` arrays of images and labels (feature `npy`).

use super::{FloatImages, IdxImages, IdxLabels, ImageSource, Normalization};
use crate::data::Tensor4;
use crate::error::{Error, Result};
use ndarray::ArrayD;
use ndarray_npy::{ReadNpyError, ReadNpyExt, ReadableElement};
use std::path::Path;

/// Images from a `.npy` file: `uint8` pixels `[N, H, W]` (one channel) or
/// `[N, C, H, W]`, normalised like IDX images; or `float32` `[N, C, H, W]` already
/// normalised, given to the network as they are.
///
/// ```no_run
/// use reflow::io::{Dataset, ImageSource, NpyImages, read_npy_labels};
///
/// let test = Dataset::new(NpyImages::read("x_test.npy")?, read_npy_labels("y_test.npy")?)?;
/// println!("{} images of {:?}", test.len(), test.images().image_dims());
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum NpyImages {
    /// 8-bit pixels.
    Pixels(IdxImages),
    /// Normalised values.
    Normalized(FloatImages),
}

fn npy_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Data(format!("{}: {reason}", path.display()))
}

/// The array in `bytes` as `T`, `None` when its dtype is another. The header's shape
/// and dtype are checked against the bytes that follow it before anything is
/// allocated.
fn array<T: ReadableElement>(bytes: &[u8], path: &Path) -> Result<Option<ArrayD<T>>> {
    check_header(bytes).map_err(|why| npy_error(path, format!("not a valid .npy file: {why}")))?;
    match ArrayD::<T>::read_npy(bytes) {
        Ok(a) => Ok(Some(a)),
        Err(ReadNpyError::WrongDescriptor(_)) => Ok(None),
        Err(e) => Err(npy_error(path, format!("not a valid .npy file: {e}"))),
    }
}

/// The shape and the element size the header of `bytes` declares, whose product
/// (overflow-checked) must be the number of bytes after the header.
fn check_header(bytes: &[u8]) -> std::result::Result<(), String> {
    let rest = bytes
        .strip_prefix(b"\x93NUMPY")
        .ok_or("no .npy magic string")?;
    let (major, rest) = match rest {
        [major, _minor, rest @ ..] => (*major, rest),
        _ => return Err("the header is cut short".into()),
    };
    let (len, rest) = match (major, rest) {
        (1, [a, b, rest @ ..]) => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        (2 | 3, [a, b, c, d, rest @ ..]) => (u32::from_le_bytes([*a, *b, *c, *d]) as usize, rest),
        (1..=3, _) => return Err("the header is cut short".into()),
        (v, _) => return Err(format!("format version {v} is not 1, 2 or 3")),
    };
    let header = rest
        .get(..len)
        .ok_or("the header is longer than the file")?;
    let data = rest.len() - len;
    let header = String::from_utf8_lossy(header);
    let field = |name: &str| -> std::result::Result<String, String> {
        let at = header
            .find(&format!("'{name}'"))
            .ok_or_else(|| format!("no '{name}' in the header"))?;
        Ok(header[at + name.len() + 2..]
            .trim_start()
            .trim_start_matches(':')
            .trim_start()
            .to_string())
    };
    let descr = field("descr")?;
    let item: usize = descr
        .trim_start_matches(['\'', '"'])
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .map_err(|_| format!("dtype {}", descr.split(',').next().unwrap_or("")))?;
    let shape = field("shape")?;
    let inside = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("the shape is not a tuple")?;
    let dims = inside
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.trim_end_matches('L').parse::<usize>())
        .collect::<std::result::Result<Vec<usize>, _>>()
        .map_err(|_| format!("shape ({inside}) is not a tuple of sizes"))?;
    match super::byte_size(&dims, item) {
        Some(n) if n == data => Ok(()),
        Some(n) => Err(format!(
            "shape {dims:?} of {item}-byte values needs {n} bytes after the header, the file has {data}"
        )),
        None => Err(format!("shape {dims:?} of {item}-byte values overflows")),
    }
}

/// The dtype the header of `bytes` names, for an error message.
fn descr(bytes: &[u8]) -> String {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(128)]);
    head.split("'descr':")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .map_or("unknown".into(), |d| d.trim().to_string())
}

impl NpyImages {
    /// Reads `path`. Errors name the file: not a `.npy` file, a dtype other than
    /// `uint8` or `float32`, a rank other than 3 or 4 (`uint8`) or 4 (`float32`), an
    /// empty image dimension, a NaN or infinite value.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = super::file::read_regular(path)?;
        if let Some(a) = array::<u8>(&bytes, path)? {
            let dims = match *a.shape() {
                [n, h, w] => [n, 1, h, w],
                [n, c, h, w] => [n, c, h, w],
                ref s => {
                    return Err(npy_error(
                        path,
                        format!("uint8 images must be [N, H, W] or [N, C, H, W], not {s:?}"),
                    ))
                }
            };
            if dims[1..].contains(&0) {
                return Err(npy_error(path, format!("empty image dimensions {dims:?}")));
            }
            let pixels = a.iter().copied().collect();
            return Ok(NpyImages::Pixels(IdxImages::from_pixels(dims, pixels)?));
        }
        if let Some(a) = array::<f32>(&bytes, path)? {
            let dims = match *a.shape() {
                [n, c, h, w] => [n, c, h, w],
                ref s => {
                    return Err(npy_error(
                        path,
                        format!("float32 images must be [N, C, H, W] (normalised), not {s:?}"),
                    ))
                }
            };
            let values = a.iter().copied().collect();
            return FloatImages::new(dims, values)
                .map(NpyImages::Normalized)
                .map_err(|e| npy_error(path, e));
        }
        Err(npy_error(
            path,
            format!(
                "dtype {}: images must be uint8 pixels or float32 normalised values",
                descr(&bytes)
            ),
        ))
    }

    fn source(&self) -> &dyn ImageSource {
        match self {
            NpyImages::Pixels(p) => p,
            NpyImages::Normalized(f) => f,
        }
    }
}

impl ImageSource for NpyImages {
    fn len(&self) -> usize {
        self.source().len()
    }

    fn image_dims(&self) -> [usize; 3] {
        self.source().image_dims()
    }

    fn is_normalized(&self) -> bool {
        self.source().is_normalized()
    }

    fn tensor(&self, indices: &[usize], norm: &Normalization) -> Result<Tensor4> {
        self.source().tensor(indices, norm)
    }
}

/// Reads class labels `[N]` from a `.npy` file of `int64`, `int32` or `uint8`. A
/// negative label, another dtype or rank is an error naming the file.
pub fn read_npy_labels(path: impl AsRef<Path>) -> Result<IdxLabels> {
    let path = path.as_ref();
    let bytes = super::file::read_regular(path)?;
    let labels: Vec<i64> = if let Some(a) = array::<i64>(&bytes, path)? {
        check_rank(path, a.shape())?;
        a.iter().copied().collect()
    } else if let Some(a) = array::<i32>(&bytes, path)? {
        check_rank(path, a.shape())?;
        a.iter().map(|&v| i64::from(v)).collect()
    } else if let Some(a) = array::<u8>(&bytes, path)? {
        check_rank(path, a.shape())?;
        a.iter().map(|&v| i64::from(v)).collect()
    } else {
        return Err(npy_error(
            path,
            format!(
                "dtype {}: labels must be int64, int32 or uint8",
                descr(&bytes)
            ),
        ));
    };
    let labels = labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            u32::try_from(l).map_err(|_| {
                npy_error(
                    path,
                    format!("label {l} of sample {i} is not a class index"),
                )
            })
        })
        .collect::<Result<Vec<u32>>>()?;
    Ok(IdxLabels::from_vec(labels))
}

fn check_rank(path: &Path, shape: &[usize]) -> Result<()> {
    match shape.len() {
        1 => Ok(()),
        _ => Err(npy_error(
            path,
            format!("labels must be [N], not {shape:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::check_header;

    fn npy(header: &str, data: usize) -> Vec<u8> {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(vec![0; data]);
        bytes
    }

    #[test]
    fn the_declared_size_must_be_the_files() {
        let header = "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3, 4), }";
        assert!(check_header(&npy(header, 24)).is_ok());
        let e = check_header(&npy(header, 23)).unwrap_err();
        assert!(e.contains("needs 24 bytes") && e.contains("has 23"), "{e}");
        let huge = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000, 28, 28), }";
        assert!(check_header(&npy(huge, 100))
            .unwrap_err()
            .contains("313600000000"));
        let overflow =
            "{'descr': '<i8', 'fortran_order': False, 'shape': (18446744073709551615, 2), }";
        assert!(check_header(&npy(overflow, 0))
            .unwrap_err()
            .contains("overflows"));
        let labels = "{'descr': '<i8', 'fortran_order': False, 'shape': (5,), }";
        assert!(check_header(&npy(labels, 40)).is_ok());
        assert!(check_header(b"\x93NUMPY\x01").is_err());
        assert!(check_header(b"PK\x03\x04").is_err());
    }
}
