//! Decoding one JPEG or PNG file to [`Pixels`] of the network's channels, as Pillow
//! converts (feature `image`).

use super::Pixels;
use crate::error::{Error, Result};
use image::{ColorType, DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use std::path::Path;

pub(super) fn image_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Image {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The JPEG or PNG image at `path` as `channels` planes (1: gray, 3: RGB), converted
/// as Pillow's `Image.open(path).convert("L")` or `convert("RGB")` converts: gray to
/// RGB repeats the value, RGB to gray is ITU-R 601-2 luma in Pillow's fixed point,
/// alpha is dropped, a palette is looked up. The file's content decides its format,
/// not its name.
///
/// Fails, naming the file, when it cannot be read, is no JPEG or PNG, is corrupt, or
/// has 16-bit samples; and when `channels` is neither 1 nor 3.
///
/// ```no_run
/// use reflow::io::{read_image, EvalTransform};
///
/// let photo = read_image("cat.jpg", 3)?;
/// let x = EvalTransform::imagenet().apply(&photo)?; // [3, 224, 224]
/// # Ok::<(), reflow::Error>(())
/// ```
pub fn read_image(path: impl AsRef<Path>, channels: usize) -> Result<Pixels> {
    let path = path.as_ref();
    check_channels(channels)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let reader = ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    let format = check_format(path, reader.format())?;
    // The decoder fills a JPEG cut short with gray; Pillow refuses it, and so do we.
    if format == ImageFormat::Jpeg && !jpeg_is_complete(&bytes) {
        return Err(image_error(
            path,
            "truncated JPEG: the data ends before the end-of-image marker",
        ));
    }
    let image = reader.decode().map_err(|e| undecodable(path, e))?;
    convert(image, channels, path)
}

/// True when the JPEG in `bytes` reaches its end-of-image marker: its segments are
/// followed by their lengths, entropy-coded data up to the next marker that is no
/// stuffed byte or restart marker. Stray bytes between segments are passed over, as
/// libjpeg passes over them.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut i = 2;
    loop {
        while i < bytes.len() && bytes[i] != 0xFF {
            i += 1;
        }
        while i < bytes.len() && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else {
            return false;
        };
        i += 1;
        match marker {
            0xD9 => return true,
            // A stuffed 0xFF, a restart or TEM marker: no length follows.
            0x00 | 0x01 | 0xD0..=0xD7 => {}
            _ => match bytes.get(i..i + 2) {
                Some(&[hi, lo]) => i += usize::from(u16::from_be_bytes([hi, lo])),
                _ => return false,
            },
        }
    }
}

fn undecodable(path: &Path, e: image::ImageError) -> Error {
    image_error(path, format!("cannot decode: {e}"))
}

pub(super) fn check_channels(channels: usize) -> Result<()> {
    if channels == 1 || channels == 3 {
        return Ok(());
    }
    Err(Error::invalid(
        "channels",
        format!("{channels}: images are read as 1-channel (gray) or 3-channel (RGB)"),
    ))
}

/// Size and colour type of the image at `path`, from its header.
pub(super) fn header(path: &Path) -> Result<([usize; 2], ColorType)> {
    let decoder = open(path)?
        .into_decoder()
        .map_err(|e| undecodable(path, e))?;
    let (w, h) = decoder.dimensions();
    Ok(([h as usize, w as usize], decoder.color_type()))
}

fn open(path: &Path) -> Result<ImageReader<std::io::BufReader<std::fs::File>>> {
    let reader = ImageReader::open(path)
        .and_then(ImageReader::with_guessed_format)
        .map_err(|e| Error::io(path, e))?;
    check_format(path, reader.format())?;
    Ok(reader)
}

fn check_format(path: &Path, format: Option<ImageFormat>) -> Result<ImageFormat> {
    match format {
        Some(f @ (ImageFormat::Jpeg | ImageFormat::Png)) => Ok(f),
        Some(other) => Err(image_error(
            path,
            format!("a {other:?} image; reflow reads JPEG and PNG"),
        )),
        None => Err(image_error(path, "not a JPEG or PNG image")),
    }
}

/// Fails unless `color` is one `reflow` converts: 8-bit gray or colour, with or
/// without alpha.
pub(super) fn check_color(path: &Path, color: ColorType) -> Result<()> {
    match color {
        ColorType::L8 | ColorType::La8 | ColorType::Rgb8 | ColorType::Rgba8 => Ok(()),
        ColorType::L16 | ColorType::La16 | ColorType::Rgb16 | ColorType::Rgba16 => {
            Err(image_error(
                path,
                "a 16-bit image; reflow reads 8-bit images (convert it to 8 bits)",
            ))
        }
        other => Err(image_error(
            path,
            format!("{other:?} pixels; reflow reads 8-bit gray or RGB images"),
        )),
    }
}

/// Pillow's `convert("L")` of one RGB pixel (ITU-R 601-2 luma, 16-bit fixed point).
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// `image` as `channels` (1 or 3) planes, as Pillow converts: gray to RGB repeats the
/// value, RGB to gray is [`luma`], alpha is dropped.
fn convert(image: DynamicImage, channels: usize, path: &Path) -> Result<Pixels> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let plane = w * h;
    // Interleaved bytes and their channels (gray or RGB) per pixel, alpha stripped.
    let (bytes, stride, colour): (Vec<u8>, usize, usize) = match image {
        DynamicImage::ImageLuma8(b) => (b.into_raw(), 1, 1),
        DynamicImage::ImageLumaA8(b) => (b.into_raw(), 2, 1),
        DynamicImage::ImageRgb8(b) => (b.into_raw(), 3, 3),
        DynamicImage::ImageRgba8(b) => (b.into_raw(), 4, 3),
        other => {
            check_color(path, other.color())?;
            return Err(image_error(path, format!("{:?} pixels", other.color())));
        }
    };
    let px = |i: usize, c: usize| bytes[i * stride + c];
    let mut data = Vec::with_capacity(channels * plane);
    match (colour, channels) {
        (1, 1) => data.extend((0..plane).map(|i| px(i, 0))),
        (1, 3) => (0..3).for_each(|_| data.extend((0..plane).map(|i| px(i, 0)))),
        (3, 1) => data.extend((0..plane).map(|i| luma(px(i, 0), px(i, 1), px(i, 2)))),
        (3, 3) => (0..3).for_each(|c| data.extend((0..plane).map(|i| px(i, c)))),
        _ => unreachable!("channels checked in ImageFolder::open"),
    }
    Pixels::new([channels, h, w], data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jpeg_is_complete_at_its_end_marker() {
        // SOI, an APP0 segment holding FF D9, SOS, data with a stuffed byte and a
        // restart marker, EOI.
        let full = [
            0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0xFF, 0xD9, 0xFF, 0xDA, 0x00, 0x02, 0x12, 0xFF,
            0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xD9,
        ];
        assert!(jpeg_is_complete(&full));
        for cut in 0..full.len() - 1 {
            assert!(!jpeg_is_complete(&full[..cut]), "cut at {cut}");
        }
    }

    #[test]
    fn luma_is_pillows() {
        // Values from Pillow 13: Image.new("RGB", (1, 1), rgb).convert("L").
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(0, 0, 0), 0);
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(luma(0, 0, 255), 29);
    }
}
