//! Rewrites a safetensors checkpoint, dense or compressed, in the format asked:
//! `dense` (every tensor as it is, for tools that do not read compressed-tensors'
//! layout) or `compressed` (pruned weights in its bitmask layout, "sparse-bitmask").
//!
//! `cargo run --release --example convert -- IN.safetensors OUT.safetensors dense|compressed`
//!
//! The input may also be a file compressed by compressed-tensors' `BitmaskCompressor`;
//! `scripts/check_compressed.py` uses this example to read one. The output is never
//! the input.

use reflow::io::SaveFormat;
use reflow::StateDict;
use std::path::PathBuf;
use std::process::ExitCode;

fn run(args: &[String]) -> reflow::Result<()> {
    let [input, output, format] = args else {
        return Err(reflow::Error::InvalidArgument {
            name: "arguments".into(),
            reason: "expected IN.safetensors OUT.safetensors dense|compressed".into(),
        });
    };
    let format: SaveFormat = format.parse()?;
    let (input, output) = (PathBuf::from(input), PathBuf::from(output));
    let same = |a: &PathBuf, b: &PathBuf| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(&input, &output) {
        return Err(reflow::Error::InvalidArgument {
            name: "OUT".into(),
            reason: format!("{} is the input: it would be overwritten", output.display()),
        });
    }
    let state = StateDict::read_safetensors(&input)?;
    state.write_safetensors_as(&output, format)?;
    println!(
        "{}: {} tensors, written {format} to {}",
        input.display(),
        state.len(),
        output.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
