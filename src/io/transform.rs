//! torchvision's evaluation preprocessing on 8-bit images, exactly: `Resize(size)` of
//! the shorter side and `CenterCrop(size)`, on [`Pixels`]. `ToTensor` and `Normalize`
//! follow in [`Normalization`](super::Normalization).
//!
//! The resize is Pillow's bilinear resampling (what torchvision's `Resize` runs on the
//! PIL images an `ImageFolder` loads): a triangle filter widened by the scale when
//! shrinking (antialiased), 22-bit fixed-point weights, a horizontal pass then a
//! vertical one, each rounded to 8 bits. Given the same decoded pixels, the output is
//! Pillow's, bit for bit.

use super::check_image_pixels;
use crate::error::{Error, Result};

/// An 8-bit image, channel-major: `[C, H, W]`.
///
/// ```
/// use reflow::io::Pixels;
///
/// let gray = Pixels::new([1, 2, 3], vec![0, 10, 20, 30, 40, 50])?;
/// assert_eq!(gray.dims(), [1, 2, 3]);
/// assert_eq!(gray.center_crop(2, 1)?.as_slice(), &[10, 40]);
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixels {
    dims: [usize; 3],
    data: Vec<u8>,
}

impl Pixels {
    /// Wraps `data` of `dims` (`[C, H, W]`, none 0).
    pub fn new(dims: [usize; 3], data: Vec<u8>) -> Result<Self> {
        if dims.contains(&0) {
            return Err(Error::invalid(
                "pixels",
                format!("empty image dimensions {dims:?}"),
            ));
        }
        if super::numel(&dims) != Some(data.len()) {
            return Err(Error::invalid(
                "pixels",
                format!("{} bytes for dimensions {dims:?}", data.len()),
            ));
        }
        Ok(Pixels { dims, data })
    }

    /// `[C, H, W]`.
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    /// The bytes, channel-major.
    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }

    /// The bytes, channel-major.
    pub fn into_vec(self) -> Vec<u8> {
        self.data
    }

    /// The image resized to `height × width` as Pillow's `Image.resize((width, height),
    /// BILINEAR)` does (antialiased when shrinking). Both sizes must be positive, and
    /// their product at most [`REFUSED_IMAGE_PIXELS`](super::REFUSED_IMAGE_PIXELS).
    pub fn resize(&self, height: usize, width: usize) -> Result<Pixels> {
        check_output("resize", height, width)?;
        let [c, h, w] = self.dims;
        let horizontal = (width != w).then(|| Filter::new(w, width));
        let vertical = (height != h).then(|| Filter::new(h, height));
        let mut out = Vec::with_capacity(c * height * width);
        for plane in self.data.chunks_exact(h * w) {
            // Pillow resamples horizontally first, only the rows the vertical pass
            // reads, rounding to 8 bits in between.
            let (rows, first, row_len) = match &horizontal {
                Some(hf) => {
                    let (first, last) = vertical.as_ref().map_or((0, h), Filter::span);
                    let mut rows = Vec::with_capacity((last - first) * width);
                    for row in plane[first * w..last * w].chunks_exact(w) {
                        hf.along_row(row, &mut rows);
                    }
                    (std::borrow::Cow::Owned(rows), first, width)
                }
                None => (std::borrow::Cow::Borrowed(plane), 0, w),
            };
            match &vertical {
                Some(vf) => vf.across_rows(&rows, row_len, first, &mut out),
                None => out.extend_from_slice(&rows),
            }
        }
        Ok(Pixels {
            dims: [c, height, width],
            data: out,
        })
    }

    /// The `height × width` centre, as torchvision's `CenterCrop` takes it: the top and
    /// left offsets are `round((size − crop) / 2)` (halves to even), and an image
    /// smaller than the crop is padded with zeros first (`⌊d/2⌋` before, `⌈d/2⌉` after).
    /// Fails when a size is 0 or the crop is more than
    /// [`REFUSED_IMAGE_PIXELS`](super::REFUSED_IMAGE_PIXELS).
    pub fn center_crop(&self, height: usize, width: usize) -> Result<Pixels> {
        check_output("crop", height, width)?;
        let [c, h, w] = self.dims;
        // Offsets of the crop in the (padded) image, as signed source coordinates.
        let offset = |size: usize, crop: usize| -> isize {
            if crop > size {
                -(((crop - size) / 2) as isize)
            } else {
                round_half_even_half(size - crop) as isize
            }
        };
        let (top, left) = (offset(h, height), offset(w, width));
        let mut data = Vec::with_capacity(c * height * width);
        // The crop's columns inside the image: [x0, x1) of the crop, from source `left + x0`.
        let x0 = (-left).clamp(0, width as isize) as usize;
        let x1 = (w as isize - left).clamp(x0 as isize, width as isize) as usize;
        for plane in self.data.chunks_exact(h * w) {
            for y in 0..height as isize {
                let sy = y + top;
                let start = data.len();
                data.resize(start + width, 0);
                if (0..h as isize).contains(&sy) && x1 > x0 {
                    let from = sy as usize * w + (left + x0 as isize) as usize;
                    data[start + x0..start + x1].copy_from_slice(&plane[from..from + (x1 - x0)]);
                }
            }
        }
        Ok(Pixels {
            dims: [c, height, width],
            data,
        })
    }
}

/// An output of `height × width` for `what` (resize, crop): both positive, within the
/// pixel budget.
fn check_output(what: &str, height: usize, width: usize) -> Result<()> {
    if height == 0 || width == 0 {
        return Err(Error::invalid(
            what,
            format!("to {height}x{width}: sizes must be positive"),
        ));
    }
    check_image_pixels(what, height, width)
}

/// Python's `round(d / 2)`: halves go to the even neighbour.
fn round_half_even_half(d: usize) -> usize {
    let half = d / 2;
    if d % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// Fractional bits of Pillow's 8-bit resampling weights.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One axis of Pillow's bilinear resampling: for each output index, the first input
/// index it reads and its fixed-point weights.
struct Filter {
    starts: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

impl Filter {
    /// Pillow's `precompute_coeffs` with the bilinear filter over the whole input, then
    /// `normalize_coeffs_8bpc`.
    fn new(input: usize, output: usize) -> Filter {
        let scale = input as f64 / output as f64;
        let filter_scale = scale.max(1.0);
        let support = filter_scale; // the triangle's support, 1, widened
        let inverse = 1.0 / filter_scale;
        let (mut starts, mut weights) = (Vec::with_capacity(output), Vec::with_capacity(output));
        for i in 0..output {
            let center = (i as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero, then the bounds are clamped.
            let min = ((center - support + 0.5) as i64).max(0) as usize;
            let max = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let raw: Vec<f64> = (min..max)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) * inverse).abs();
                    if t < 1.0 {
                        1.0 - t
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|&k| {
                    let k = if total != 0.0 { k / total } else { k };
                    let scaled = k * f64::from(1u32 << PRECISION_BITS);
                    (if k < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
                })
                .collect();
            starts.push(min);
            weights.push(fixed);
        }
        Filter { starts, weights }
    }

    /// The input range `[first, last)` any output reads.
    fn span(&self) -> (usize, usize) {
        let last = self.starts.len() - 1;
        (self.starts[0], self.starts[last] + self.weights[last].len())
    }

    /// Every output of one `row`, pushed to `out` (Pillow's horizontal pass).
    fn along_row(&self, row: &[u8], out: &mut Vec<u8>) {
        for (&start, weights) in self.starts.iter().zip(&self.weights) {
            let taps = &row[start..start + weights.len()];
            let mut sum: i32 = 1 << (PRECISION_BITS - 1);
            for (&p, &k) in taps.iter().zip(weights) {
                sum += i32::from(p) * k;
            }
            out.push(clip8(sum));
        }
    }

    /// Every output row from `rows` (`row_len` values each, the first being input row
    /// `first`), pushed to `out` (Pillow's vertical pass). The same integer sums as
    /// Pillow's, taken a row at a time.
    fn across_rows(&self, rows: &[u8], row_len: usize, first: usize, out: &mut Vec<u8>) {
        let mut sums = vec![0i32; row_len];
        for (&start, weights) in self.starts.iter().zip(&self.weights) {
            sums.fill(1 << (PRECISION_BITS - 1));
            for (j, &k) in weights.iter().enumerate() {
                let row = &rows[(start + j - first) * row_len..][..row_len];
                for (sum, &p) in sums.iter_mut().zip(row) {
                    *sum += i32::from(p) * k;
                }
            }
            out.extend(sums.iter().map(|&sum| clip8(sum)));
        }
    }
}

/// Pillow's `clip8`: a fixed-point sum to a byte.
fn clip8(sum: i32) -> u8 {
    if sum >= (1 << PRECISION_BITS << 8) {
        255
    } else if sum <= 0 {
        0
    } else {
        (sum >> PRECISION_BITS) as u8
    }
}

/// torchvision's evaluation transform before `ToTensor`: `Resize(resize)` of the
/// shorter side, then `CenterCrop(crop)`, each optional.
///
/// ```
/// use reflow::io::{EvalTransform, Pixels};
///
/// let t = EvalTransform::imagenet(); // Resize(256), CenterCrop(224)
/// assert_eq!(t.resized_dims(375, 500), [256, 341]);
/// let photo = Pixels::new([3, 375, 500], vec![128; 3 * 375 * 500])?;
/// let x = t.apply(&photo)?;
/// assert_eq!(x.dims(), [3, 224, 224]);
/// assert!(x.as_slice().iter().all(|&p| p == 128));
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EvalTransform {
    /// The shorter side's length after resizing; `None` keeps the size.
    pub resize: Option<usize>,
    /// The side of the square centre crop; `None` keeps the whole image.
    pub crop: Option<usize>,
}

impl EvalTransform {
    /// No resize, no crop: images are used at their own size.
    pub fn none() -> Self {
        EvalTransform::default()
    }

    /// ImageNet evaluation: `Resize(256)`, `CenterCrop(224)` (with
    /// [`Normalization::imagenet`](super::Normalization::imagenet)).
    pub fn imagenet() -> Self {
        EvalTransform {
            resize: Some(256),
            crop: Some(224),
        }
    }

    /// Fails when a size is 0, or a square of its side is more than
    /// [`REFUSED_IMAGE_PIXELS`](super::REFUSED_IMAGE_PIXELS) (13,377 is the largest).
    pub fn validate(&self) -> Result<()> {
        for (name, size) in [("resize", self.resize), ("crop", self.crop)] {
            match size {
                Some(0) => return Err(Error::invalid(name, "the size must be positive")),
                Some(s) => check_image_pixels(name, s, s)?,
                None => {}
            }
        }
        Ok(())
    }

    /// `[H, W]` after the resize of an `height × width` image: the shorter side becomes
    /// `resize`, the longer `⌊resize · long / short⌋`, as torchvision computes it.
    pub fn resized_dims(&self, height: usize, width: usize) -> [usize; 2] {
        let Some(size) = self.resize else {
            return [height, width];
        };
        let (short, long) = (height.min(width), height.max(width));
        let other = (size as f64 * long as f64 / short as f64) as usize;
        if width <= height {
            [other, size]
        } else {
            [size, other]
        }
    }

    /// `[H, W]` of the output for an `height × width` input. Fails when the input, or
    /// the image it is resized to (a very long or very narrow image resized by its
    /// short side), is more than [`REFUSED_IMAGE_PIXELS`](super::REFUSED_IMAGE_PIXELS).
    pub fn output_dims(&self, height: usize, width: usize) -> Result<[usize; 2]> {
        check_image_pixels("image", height, width)?;
        let [rh, rw] = self.resized_dims(height, width);
        check_image_pixels("resized image", rh, rw)?;
        Ok(match self.crop {
            Some(c) => [c, c],
            None => [rh, rw],
        })
    }

    /// The transformed image.
    pub fn apply(&self, image: &Pixels) -> Result<Pixels> {
        self.validate()?;
        let [_, h, w] = image.dims();
        self.output_dims(h, w)?;
        let [rh, rw] = self.resized_dims(h, w);
        let resized = if [rh, rw] == [h, w] {
            None
        } else {
            Some(image.resize(rh, rw)?)
        };
        let resized = resized.as_ref().unwrap_or(image);
        Ok(match self.crop {
            Some(c) => resized.center_crop(c, c)?,
            None => resized.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity() {
        let p = Pixels::new([1, 3, 4], (0..12).collect()).unwrap();
        assert_eq!(p.resize(3, 4).unwrap(), p);
    }

    #[test]
    fn crop_offsets_round_half_to_even() {
        // (5 − 2) / 2 = 1.5 → 2; (4 − 1) / 2 = 1.5 → 2; (3 − 2) / 2 = 0.5 → 0.
        assert_eq!(round_half_even_half(3), 2);
        assert_eq!(round_half_even_half(1), 0);
        assert_eq!(round_half_even_half(5), 2);
        assert_eq!(round_half_even_half(7), 4);
        let p = Pixels::new([1, 1, 5], vec![1, 2, 3, 4, 5]).unwrap();
        assert_eq!(p.center_crop(1, 2).unwrap().as_slice(), &[3, 4]);
        // Padding: 5 → 8 adds 1 before and 2 after.
        assert_eq!(
            p.center_crop(1, 8).unwrap().as_slice(),
            &[0, 1, 2, 3, 4, 5, 0, 0]
        );
    }

    #[test]
    fn constant_images_stay_constant() {
        let p = Pixels::new([2, 7, 9], vec![200; 126]).unwrap();
        for (h, w) in [(3, 4), (14, 5), (7, 20), (1, 1)] {
            assert!(p.resize(h, w).unwrap().as_slice().iter().all(|&v| v == 200));
        }
    }
}
