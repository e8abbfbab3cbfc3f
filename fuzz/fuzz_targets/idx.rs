//! IDX images and labels, raw and gzip-compressed, through a temporary file as a user
//! gives them: any bytes give data or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reflow::io::{IdxImages, IdxLabels};
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let _ = IdxImages::from_bytes(data);
    let _ = IdxLabels::from_bytes(data);
    // The same bytes as a gzip stream, read from a file.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    if gz.write_all(data).is_err() {
        return;
    }
    let Ok(bytes) = gz.finish() else { return };
    let dir = std::env::temp_dir().join(format!("reflow-fuzz-idx-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    for (name, bytes) in [("raw", data), ("gz", &bytes[..])] {
        let path = dir.join(name);
        if std::fs::write(&path, bytes).is_ok() {
            let _ = IdxImages::read(&path);
            let _ = IdxLabels::read(&path);
        }
    }
});
