//! PNG and JPEG files built from header fields the fuzzer chooses — dimensions (up to
//! 2³² − 1 a side), bit depth, colour type, interlacing; a JPEG's frame header,
//! components and end marker — and body bytes, in a folder read as a user's image
//! folder: listed, every header checked, decoded and transformed. Any of them gives
//! pixels or an error, never an allocation the header alone asked for.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use reflow::io::{read_image, EvalTransform, ImageFolder, ImageSource, Normalization};
use std::io::Write;

#[derive(Arbitrary, Debug)]
enum Header {
    Png {
        width: u32,
        height: u32,
        depth: u8,
        colour: u8,
        interlace: bool,
        /// Compressed into the IDAT chunk.
        body: Vec<u8>,
    },
    Jpeg {
        width: u16,
        height: u16,
        components: u8,
        progressive: bool,
        /// After the frame header, before the end marker.
        body: Vec<u8>,
        end: bool,
    },
}

#[derive(Arbitrary, Debug)]
struct Case {
    header: Header,
    resize: Option<u16>,
    crop: Option<u16>,
    gray: bool,
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend(kind);
    out.extend(data);
    let crc = crc32fast::hash(&out[start..]);
    out.extend(crc.to_be_bytes());
}

fn file(header: &Header) -> Vec<u8> {
    match header {
        Header::Png { width, height, depth, colour, interlace, body } => {
            let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
            let mut ihdr = Vec::new();
            ihdr.extend(width.to_be_bytes());
            ihdr.extend(height.to_be_bytes());
            ihdr.extend([[1, 2, 4, 8, 16][*depth as usize % 5], [0, 2, 3, 4, 6][*colour as usize % 5], 0, 0, *interlace as u8]);
            chunk(&mut out, b"IHDR", &ihdr);
            if colour % 5 == 2 {
                chunk(&mut out, b"PLTE", &[0, 0, 0, 255, 255, 255]);
            }
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = z.write_all(body);
            chunk(&mut out, b"IDAT", &z.finish().unwrap_or_default());
            chunk(&mut out, b"IEND", &[]);
            out
        }
        Header::Jpeg { width, height, components, progressive, body, end } => {
            let n = [1u8, 3, 4][*components as usize % 3];
            let mut out = vec![0xFF, 0xD8];
            // A quantisation table, then the frame header.
            out.extend([0xFF, 0xDB, 0, 67, 0]);
            out.extend([1u8; 64]);
            out.extend([0xFF, if *progressive { 0xC2 } else { 0xC0 }]);
            out.extend((8 + 3 * n as u16).to_be_bytes());
            out.push(8);
            out.extend(height.to_be_bytes());
            out.extend(width.to_be_bytes());
            out.push(n);
            for c in 0..n {
                out.extend([c + 1, 0x11, 0]);
            }
            out.extend(body);
            if *end {
                out.extend([0xFF, 0xD9]);
            }
            out
        }
    }
}

fuzz_target!(|case: Case| {
    let dir = std::env::temp_dir().join(format!("reflow-fuzz-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let name = match case.header {
        Header::Png { .. } => "a.png",
        Header::Jpeg { .. } => "a.jpg",
    };
    let path = dir.join(name);
    if std::fs::write(&path, file(&case.header)).is_err() {
        return;
    }
    let channels = if case.gray { 1 } else { 3 };
    let _ = read_image(&path, channels);
    let transform = EvalTransform {
        resize: case.resize.map(usize::from),
        crop: case.crop.map(usize::from),
    };
    let Ok(folder) = ImageFolder::scan_unlabelled(&dir, channels, transform) else { return };
    if folder.check(&[0]).is_ok() {
        let norm = Normalization::new(vec![0.5; channels], vec![0.25; channels]).expect("valid");
        let _ = folder.tensor(&[0], &norm);
    }
});
