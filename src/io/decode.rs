//! Decoding one JPEG (zune-jpeg) or PNG (png) file to [`Pixels`] of the network's
//! channels, as Pillow converts (feature `image`).

use super::{Pixels, REFUSED_IMAGE_PIXELS};
use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

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
/// Fails, naming the file, when it cannot be read, is no JPEG or PNG, is corrupt or
/// truncated, or has 16-bit samples; and when `channels` is neither 1 nor 3.
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
    let decoded = match format(path, &bytes)? {
        Format::Jpeg => {
            // The decoder fills a JPEG cut short with gray; Pillow refuses it, and so
            // do we.
            if !jpeg_is_complete(&bytes) {
                return Err(truncated(path));
            }
            decode_jpeg(path, &bytes)?
        }
        Format::Png => decode_png(path, &bytes)?,
    };
    convert(decoded, channels, path)
}

/// `[H, W]` of the image at `path`, from its header (the first 64 KiB of the file, or
/// all of it when the header runs longer); fails as [`read_image`] would for a file
/// that is no 8-bit JPEG or PNG, is more than [`REFUSED_IMAGE_PIXELS`], or is a JPEG
/// cut short (its last two bytes are not the end-of-image marker, and reading it
/// whole finds none: one seek for a complete file).
pub(super) fn header(path: &Path) -> Result<[usize; 2]> {
    const HEAD: u64 = 64 * 1024;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(HEAD)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    let parse = |bytes: &[u8]| -> Result<[usize; 2]> {
        match format(path, bytes)? {
            Format::Jpeg => jpeg_decoder(path, bytes).map(|(_, dims)| dims),
            Format::Png => png_reader(path, bytes).map(|r| {
                let info = r.info();
                [info.height as usize, info.width as usize]
            }),
        }
    };
    let dims = match parse(&bytes) {
        Err(_) if bytes.len() as u64 == HEAD => {
            parse(&std::fs::read(path).map_err(|e| Error::io(path, e))?)
        }
        result => result,
    }?;
    if format(path, &bytes)? == Format::Jpeg && !ends_with_eoi(path)? {
        let whole = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        if !jpeg_is_complete(&whole) {
            return Err(truncated(path));
        }
    }
    Ok(dims)
}

/// True when the file's last two bytes are a JPEG end-of-image marker.
fn ends_with_eoi(path: &Path) -> Result<bool> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut last = [0u8; 2];
    match file.seek(SeekFrom::End(-2)) {
        Ok(_) => file.read_exact(&mut last).map_err(|e| Error::io(path, e))?,
        Err(_) => return Ok(false),
    }
    Ok(last == [0xFF, 0xD9])
}

fn truncated(path: &Path) -> Error {
    image_error(
        path,
        "truncated JPEG: the data ends before the end-of-image marker",
    )
}

/// Fails, naming the file, when an image of `[h, w]` is more than
/// [`REFUSED_IMAGE_PIXELS`]: checked from the header, before decoding allocates it.
fn check_pixels(path: &Path, [h, w]: [usize; 2]) -> Result<()> {
    match h.checked_mul(w) {
        Some(p) if p <= REFUSED_IMAGE_PIXELS => Ok(()),
        _ => Err(image_error(
            path,
            format!(
                "{h}x{w} pixels, more than {REFUSED_IMAGE_PIXELS} (Pillow refuses it too: a possible decompression bomb)"
            ),
        )),
    }
}

/// The formats read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Jpeg,
    Png,
}

/// The format of `bytes`, by its signature; other image formats are named.
fn format(path: &Path, bytes: &[u8]) -> Result<Format> {
    let other = |name: &str| {
        Err(image_error(
            path,
            format!("a {name} image; reflow reads JPEG and PNG"),
        ))
    };
    match bytes {
        [0xFF, 0xD8, 0xFF, ..] => Ok(Format::Jpeg),
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Ok(Format::Png),
        [b'G', b'I', b'F', b'8', ..] => other("GIF"),
        [b'B', b'M', ..] => other("BMP"),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => other("WebP"),
        [b'I', b'I', 0x2A, 0x00, ..] | [b'M', b'M', 0x00, 0x2A, ..] => other("TIFF"),
        [b'P', b'1'..=b'7', ..] => other("PNM"),
        _ => Err(image_error(path, "not a JPEG or PNG image")),
    }
}

/// Decoded interleaved 8-bit pixels: gray or RGB, with or without alpha.
struct Decoded {
    height: usize,
    width: usize,
    /// Bytes per pixel: 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA).
    stride: usize,
    bytes: Vec<u8>,
}

fn undecodable(path: &Path, e: impl std::fmt::Display) -> Error {
    image_error(path, format!("cannot decode: {e}"))
}

/// A JPEG decoder reading from a byte slice.
type JpegDecoder<'a> = zune_jpeg::JpegDecoder<ZCursor<&'a [u8]>>;

/// A JPEG decoder past the headers of `bytes`, set to give gray for a gray JPEG and
/// RGB for any other (YCbCr, CMYK, YCCK), and `[H, W]`.
fn jpeg_decoder<'a>(path: &Path, bytes: &'a [u8]) -> Result<(JpegDecoder<'a>, [usize; 2])> {
    let options = DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder
        .decode_headers()
        .map_err(|e| undecodable(path, format!("{e:?}")))?;
    let (w, h) = decoder.dimensions().expect("headers decoded");
    check_pixels(path, [h, w])?;
    let gray = decoder.input_colorspace() == Some(ColorSpace::Luma);
    let out = if gray {
        ColorSpace::Luma
    } else {
        ColorSpace::RGB
    };
    decoder.set_options(decoder.options().jpeg_set_out_colorspace(out));
    Ok((decoder, [h, w]))
}

fn decode_jpeg(path: &Path, bytes: &[u8]) -> Result<Decoded> {
    let (mut decoder, [height, width]) = jpeg_decoder(path, bytes)?;
    let pixels = decoder
        .decode()
        .map_err(|e| undecodable(path, format!("{e:?}")))?;
    let stride = pixels.len() / (height * width).max(1);
    Ok(Decoded {
        height,
        width,
        stride,
        bytes: pixels,
    })
}

/// A PNG reader past the header of `bytes`, expanding palettes, low bit depths and
/// transparency to 8-bit gray or RGB with alpha; 16-bit images are refused.
fn png_reader<'a>(path: &Path, bytes: &'a [u8]) -> Result<png::Reader<std::io::Cursor<&'a [u8]>>> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let reader = decoder.read_info().map_err(|e| undecodable(path, e))?;
    let info = reader.info();
    check_pixels(path, [info.height as usize, info.width as usize])?;
    if reader.info().bit_depth == png::BitDepth::Sixteen {
        return Err(image_error(
            path,
            "a 16-bit image; reflow reads 8-bit images (convert it to 8 bits)",
        ));
    }
    Ok(reader)
}

fn decode_png(path: &Path, bytes: &[u8]) -> Result<Decoded> {
    let mut reader = png_reader(path, bytes)?;
    let (colour, depth) = reader.output_color_type();
    if depth != png::BitDepth::Eight {
        return Err(image_error(
            path,
            format!("{depth:?}-bit samples after expansion"),
        ));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| image_error(path, "too large to decode"))?;
    let mut pixels = vec![0; size];
    let frame = reader
        .next_frame(&mut pixels)
        .map_err(|e| undecodable(path, e))?;
    pixels.truncate(frame.buffer_size());
    Ok(Decoded {
        height: frame.height as usize,
        width: frame.width as usize,
        stride: colour.samples(),
        bytes: pixels,
    })
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

pub(super) fn check_channels(channels: usize) -> Result<()> {
    if channels == 1 || channels == 3 {
        return Ok(());
    }
    Err(Error::invalid(
        "channels",
        format!("{channels}: images are read as 1-channel (gray) or 3-channel (RGB)"),
    ))
}

/// Pillow's `convert("L")` of one RGB pixel (ITU-R 601-2 luma, 16-bit fixed point).
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// `image` as `channels` (1 or 3) planes, as Pillow converts: gray to RGB repeats the
/// value, RGB to gray is [`luma`], alpha is dropped.
fn convert(image: Decoded, channels: usize, path: &Path) -> Result<Pixels> {
    let Decoded {
        height,
        width,
        stride,
        bytes,
    } = image;
    let plane = height * width;
    let colour = if stride <= 2 { 1 } else { 3 };
    if !(1..=4).contains(&stride) || bytes.len() < plane * stride {
        return Err(image_error(
            path,
            format!(
                "the decoder gave {} bytes for {width}x{height} pixels",
                bytes.len()
            ),
        ));
    }
    let pixels = || bytes[..plane * stride].chunks_exact(stride);
    let mut data = Vec::with_capacity(channels * plane);
    match (colour, channels) {
        (1, 1) => data.extend(pixels().map(|p| p[0])),
        (1, 3) => (0..3).for_each(|_| data.extend(pixels().map(|p| p[0]))),
        (3, 1) => data.extend(pixels().map(|p| luma(p[0], p[1], p[2]))),
        (3, 3) => (0..3).for_each(|c| data.extend(pixels().map(|p| p[c]))),
        _ => unreachable!("channels checked by check_channels"),
    }
    Pixels::new([channels, height, width], data)
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
