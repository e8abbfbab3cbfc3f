//! `.npy` images and labels, built from fields the fuzzer chooses — format version,
//! dtype, memory order, shape (any sizes, the product of which may overflow or claim
//! far more than the file holds), stray header text — and data bytes, read from a file
//! as a user gives it: any of them gives data or an error, never an allocation the
//! file does not back.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use reflow::io::{read_npy_labels, NpyImages};

#[derive(Arbitrary, Debug)]
struct Npy {
    version: u8,
    descr: u8,
    fortran: bool,
    shape: Vec<u64>,
    /// Replaces the header text when given.
    raw_header: Option<String>,
    data: Vec<u8>,
}

const DESCRS: [&str; 9] = ["|u1", "<f4", "<i8", "<i4", ">f4", "<f8", "|b1", "<u2", "|O"];

fuzz_target!(|npy: Npy| {
    let shape: Vec<String> = npy.shape.iter().take(6).map(|d| d.to_string()).collect();
    let shape = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.join(", ")),
    };
    let header = npy.raw_header.clone().unwrap_or_else(|| {
        format!(
            "{{'descr': '{}', 'fortran_order': {}, 'shape': {shape}, }}",
            DESCRS[npy.descr as usize % DESCRS.len()],
            if npy.fortran { "True" } else { "False" }
        )
    });
    let mut bytes = b"\x93NUMPY".to_vec();
    match npy.version % 4 {
        1 => {
            bytes.extend([1, 0]);
            bytes.extend((header.len().min(u16::MAX as usize) as u16).to_le_bytes());
        }
        v => {
            bytes.extend([v, 0]);
            bytes.extend((header.len() as u32).to_le_bytes());
        }
    }
    bytes.extend(header.as_bytes());
    bytes.extend(&npy.data);
    let path = std::env::temp_dir().join(format!("reflow-fuzz-npy-{}.npy", std::process::id()));
    if std::fs::write(&path, &bytes).is_ok() {
        let _ = NpyImages::read(&path);
        let _ = read_npy_labels(&path);
    }
});
