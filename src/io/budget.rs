//! Sizes an input chooses — in a file header or a flag — checked before anything of
//! that size is allocated, so that a 1 KB file whose header claims 10¹⁰ pixels is a
//! one-line error, not an aborted process.

use crate::error::{Error, Result};

/// Pillow's `Image.MAX_IMAGE_PIXELS` (89,478,485): above it Pillow warns that an
/// image may be a decompression bomb, and reflow reports it
/// (an image folder's check lists such images).
pub const MAX_IMAGE_PIXELS: usize = 89_478_485;

/// Above this many pixels (twice [`MAX_IMAGE_PIXELS`]) Pillow refuses an image
/// (`DecompressionBombError`), and so does reflow: a decoded or transformed image,
/// a crop or a resize, checked before it is allocated.
pub const REFUSED_IMAGE_PIXELS: usize = 2 * MAX_IMAGE_PIXELS;

/// Fails, naming `what`, when an `height × width` image has more than
/// [`REFUSED_IMAGE_PIXELS`] pixels (or the product overflows).
pub fn check_image_pixels(what: &str, height: usize, width: usize) -> Result<()> {
    match height.checked_mul(width) {
        Some(p) if p <= REFUSED_IMAGE_PIXELS => Ok(()),
        _ => Err(Error::invalid(
            what,
            format!(
                "{height}x{width} is more than {REFUSED_IMAGE_PIXELS} pixels (Pillow refuses it too: a possible decompression bomb)"
            ),
        )),
    }
}

/// True when an `height × width` image is above Pillow's warning size.
#[cfg_attr(not(feature = "image"), allow(dead_code))]
pub(crate) fn is_large_image(height: usize, width: usize) -> bool {
    height.saturating_mul(width) > MAX_IMAGE_PIXELS
}

/// The bytes `shape` of `item`-byte elements take, or `None` on overflow.
#[cfg_attr(not(feature = "npy"), allow(dead_code))]
pub(crate) fn byte_size(shape: &[usize], item: usize) -> Option<usize> {
    crate::data::numel(shape)?.checked_mul(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pillows_limits() {
        assert!(check_image_pixels("crop", 13_377, 13_377).is_ok());
        assert!(check_image_pixels("crop", 13_378, 13_378).is_err());
        assert!(check_image_pixels("image", usize::MAX, 2).is_err());
        assert!(is_large_image(10_000, 9_000) && !is_large_image(9_000, 9_000));
        assert_eq!(byte_size(&[2, 3], 4), Some(24));
        assert_eq!(byte_size(&[usize::MAX, 2], 1), None);
    }
}
