//! Where a network's input images come from: any [`ImageSource`], read by index.

use super::Normalization;
use crate::data::Tensor4;
use crate::error::{Error, Result};
use ndarray::{Array4, Axis};

/// Images a network can be fed, by index: held in memory ([`IdxImages`](crate::io::IdxImages),
/// [`FloatImages`]) or read on demand. A [`Dataset`](crate::io::Dataset) pairs one with
/// labels, and [`ImageBatches`](crate::data::ImageBatches) draws calibration
/// batches from one.
///
/// ```
/// use reflow::io::{FloatImages, IdxImages, ImageSource, Normalization};
///
/// let norm = Normalization::new(vec![0.5], vec![0.25])?;
/// let pixels = IdxImages::from_pixels([3, 1, 1, 2], vec![0, 255, 51, 102, 153, 204])?;
/// let x = pixels.tensor(&[2, 0], &norm)?; // images 2 and 0, normalised
/// let want = [0.4, 1.2, -2.0, 2.0];
/// assert!(x.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6));
///
/// // Values normalised already are given as they are.
/// let floats = FloatImages::new([2, 1, 1, 1], vec![0.5, -1.0])?;
/// assert_eq!(floats.tensor(&[1], &norm)?.as_slice().unwrap(), &[-1.0]);
/// # Ok::<(), reflow::Error>(())
/// ```
pub trait ImageSource: Send + Sync {
    /// Number of images.
    fn len(&self) -> usize;

    /// True when there is no image.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[C, H, W]` of every image.
    fn image_dims(&self) -> [usize; 3];

    /// True when the stored values are network input already (normalised floats):
    /// [`ImageSource::tensor`] then does not use the normalisation.
    fn is_normalized(&self) -> bool {
        false
    }

    /// Checks that images `indices` can be given, as far as it can without decoding
    /// them, so that a run fails before any work: a folder of image files
    /// (`ImageFolder`, feature `image`) reads their headers. Sources held in memory
    /// have nothing to check beyond the indices.
    fn check(&self, indices: &[usize]) -> Result<()> {
        check_indices(indices, self.len())
    }

    /// Images `indices`, in that order, as `[n, C, H, W]`: stored 8-bit pixels as
    /// `(p / 255 − mean_c) / std_c` (torchvision's `ToTensor` + `Normalize`), values
    /// normalised already as they are. An index past the end is an error.
    fn tensor(&self, indices: &[usize], norm: &Normalization) -> Result<Tensor4>;
}

impl<S: ImageSource + ?Sized> ImageSource for Box<S> {
    fn len(&self) -> usize {
        (**self).len()
    }

    fn image_dims(&self) -> [usize; 3] {
        (**self).image_dims()
    }

    fn is_normalized(&self) -> bool {
        (**self).is_normalized()
    }

    fn check(&self, indices: &[usize]) -> Result<()> {
        (**self).check(indices)
    }

    fn tensor(&self, indices: &[usize], norm: &Normalization) -> Result<Tensor4> {
        (**self).tensor(indices, norm)
    }
}

/// `indices` as maximal runs of consecutive indices.
pub(crate) fn runs(indices: &[usize]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut rest = indices;
    std::iter::from_fn(move || {
        let (&first, _) = rest.split_first()?;
        let len = 1 + rest.windows(2).take_while(|w| w[1] == w[0] + 1).count();
        rest = &rest[len..];
        Some(first..first + len)
    })
}

/// The tensors of `parts` stacked along the batch axis.
pub(crate) fn stack(parts: Vec<Tensor4>, [c, h, w]: [usize; 3]) -> Result<Tensor4> {
    match parts.len() {
        0 => Ok(Array4::zeros((0, c, h, w))),
        1 => Ok(parts.into_iter().next().expect("one part")),
        _ => {
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            ndarray::concatenate(Axis(0), &views)
                .map_err(|e| Error::invalid("image batch", e.to_string()))
        }
    }
}

/// The first images of a source, as a source of its own (`reflow prune
/// --test-count`: a quick look at a large test set).
///
/// ```
/// use reflow::data::FirstImages;
/// use reflow::io::{IdxImages, ImageSource, Normalization};
///
/// let norm = Normalization::new(vec![0.0], vec![1.0])?;
/// let images = IdxImages::from_pixels([3, 1, 1, 1], vec![0, 255, 51])?;
/// let first = FirstImages::new(images, 2)?;
/// assert_eq!(first.len(), 2);
/// assert_eq!(first.tensor(&[1], &norm)?.as_slice().unwrap(), &[1.0]);
/// assert!(first.tensor(&[2], &norm).is_err());
/// assert!(FirstImages::new(first, 3).is_err());
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FirstImages<S> {
    source: S,
    len: usize,
}

impl<S: ImageSource> FirstImages<S> {
    /// The first `len` images of `source`: at least one, at most all of them.
    pub fn new(source: S, len: usize) -> Result<Self> {
        if len == 0 {
            return Err(Error::zero("image count"));
        }
        if len > source.len() {
            return Err(Error::invalid(
                "image count",
                format!("{len} asked for, the source has {}", source.len()),
            ));
        }
        Ok(FirstImages { source, len })
    }
}

impl<S: ImageSource> ImageSource for FirstImages<S> {
    fn len(&self) -> usize {
        self.len
    }

    fn image_dims(&self) -> [usize; 3] {
        self.source.image_dims()
    }

    fn is_normalized(&self) -> bool {
        self.source.is_normalized()
    }

    fn check(&self, indices: &[usize]) -> Result<()> {
        check_indices(indices, self.len)?;
        self.source.check(indices)
    }

    fn tensor(&self, indices: &[usize], norm: &Normalization) -> Result<Tensor4> {
        check_indices(indices, self.len)?;
        self.source.tensor(indices, norm)
    }
}

pub(crate) fn check_indices(indices: &[usize], len: usize) -> Result<()> {
    match indices.iter().find(|&&i| i >= len) {
        Some(i) => Err(Error::invalid(
            "image index",
            format!("{i} is past the {len} images"),
        )),
        None => Ok(()),
    }
}

/// Images stored as network input already: `f32` `[N, C, H, W]`, normalised (a NumPy
/// array a user preprocessed, say). Every value must be finite.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatImages {
    dims: [usize; 4],
    values: Vec<f32>,
}

impl FloatImages {
    /// Wraps `values` of shape `dims`. Fails when the count does not fit the shape, an
    /// image dimension is 0, or a value is NaN or infinite (naming the image).
    pub fn new(dims: [usize; 4], values: Vec<f32>) -> Result<Self> {
        if numel(&dims) != Some(values.len()) {
            return Err(Error::invalid(
                "images",
                format!("{} values for dimensions {dims:?}", values.len()),
            ));
        }
        if dims[1..].contains(&0) {
            return Err(Error::invalid(
                "images",
                format!("empty image dimensions {dims:?}"),
            ));
        }
        let image = dims[1] * dims[2] * dims[3];
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "images",
                format!("{} in image {}", values[i], i / image),
            ));
        }
        Ok(FloatImages { dims, values })
    }

    /// `[N, C, H, W]`.
    pub fn dims(&self) -> [usize; 4] {
        self.dims
    }

    /// The largest magnitude among the values: normalised images rarely pass 10,
    /// pixels left in 0..=255 do.
    pub fn max_abs(&self) -> f32 {
        self.values.iter().fold(0.0, |m, v| m.max(v.abs()))
    }
}

impl ImageSource for FloatImages {
    fn len(&self) -> usize {
        self.dims[0]
    }

    fn image_dims(&self) -> [usize; 3] {
        [self.dims[1], self.dims[2], self.dims[3]]
    }

    fn is_normalized(&self) -> bool {
        true
    }

    fn tensor(&self, indices: &[usize], _: &Normalization) -> Result<Tensor4> {
        check_indices(indices, self.dims[0])?;
        let [c, h, w] = self.image_dims();
        let image = c * h * w;
        let mut data = Vec::with_capacity(indices.len() * image);
        for r in runs(indices) {
            data.extend_from_slice(&self.values[r.start * image..r.end * image]);
        }
        Ok(Array4::from_shape_vec((indices.len(), c, h, w), data).expect("sizes checked"))
    }
}

/// The number of elements of `shape`, or `None` when the product overflows (a
/// wrapped product could match a file's length by accident).
pub(crate) fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}
