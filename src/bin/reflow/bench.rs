//! `reflow bench`: how fast a checkpoint runs here, and where the time goes.

use crate::protocol::{identity, invalid, writable_folder, Checkpoint};
use clap::Parser;
use reflow::bench::{bench, bench_calibration, BenchConfig, BenchReport};
use reflow::models::{Arch, Model, Stem};
use reflow::nn::SparsePolicy;
use reflow::prune::SparsityReport;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

/// Time a checkpoint's eval pass: images per second, and per convolution (and linear
/// layer) its kernel (dense or sparse) and time; or, with `--calibration`, REFLOW's
/// calibration pass.
#[derive(Parser, Debug)]
pub struct Args {
    #[command(flatten)]
    checkpoint: Checkpoint,
    /// One image's size, CxHxW (e.g. 3x224x224).
    #[arg(long)]
    input: String,
    /// Images per pass.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Dense kernels only (else each pruned convolution runs on the faster of its
    /// dense and sparse kernels, measured on the first pass).
    #[arg(long)]
    dense: bool,
    /// Time REFLOW's calibration pass instead (batch norms in training mode, their
    /// statistics re-estimated; layer by layer, so no per-layer times): pruned
    /// convolutions at most 40 % dense on maps up to 28x28 run on the sparse kernel
    /// unless --dense.
    #[arg(long)]
    calibration: bool,
    /// Timed passes (the median counts).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Untimed passes first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs parsed arguments: 0 on success, 1 with one line on stderr otherwise.
pub fn execute(args: &Args) -> ExitCode {
    crate::protocol::exit_with(run(args))
}

/// `CxHxW` as `[C, H, W]`.
fn parse_input(text: &str) -> reflow::Result<[usize; 3]> {
    let parts: Vec<&str> = text.split(['x', 'X']).collect();
    let sizes: Option<Vec<usize>> = parts.iter().map(|p| p.trim().parse().ok()).collect();
    match sizes.as_deref() {
        Some(&[c, h, w]) if c > 0 && h > 0 && w > 0 => Ok([c, h, w]),
        _ => Err(invalid(
            "input",
            format!("{text:?}: expected CxHxW of positive sizes, e.g. 3x224x224"),
        )),
    }
}

/// Checks every argument before any work.
fn check(args: &Args) -> reflow::Result<BenchConfig> {
    args.checkpoint.arch.parse::<Arch>()?;
    args.checkpoint.stem.parse::<Stem>()?;
    let input = parse_input(&args.input)?;
    for (flag, v) in [("batch", args.batch), ("runs", args.runs)] {
        if v == 0 {
            return Err(invalid(flag, "must be positive"));
        }
    }
    if !args.checkpoint.weights.is_file() {
        return Err(invalid(
            "weights",
            format!(
                "{} is not a regular file",
                args.checkpoint.weights.display()
            ),
        ));
    }
    if let Some(json) = &args.json {
        writable_folder("json", json.parent())?;
        if identity(json).is_some() && identity(json) == identity(&args.checkpoint.weights) {
            return Err(invalid(
                "json",
                format!(
                    "{} is the checkpoint: it would be overwritten",
                    json.display()
                ),
            ));
        }
    }
    let config = BenchConfig {
        warmup: args.warmup,
        runs: args.runs,
        ..BenchConfig::new(input, args.batch)
    };
    Ok(config)
}

fn run(args: &Args) -> reflow::Result<()> {
    let config = check(args)?;
    let mut net = args.checkpoint.load()?;
    if net.in_channels() != config.input[0] {
        return Err(invalid(
            "input",
            format!(
                "{} channel(s), but the network takes {}",
                config.input[0],
                net.in_channels()
            ),
        ));
    }
    let mut config = config;
    if args.dense {
        config.exec = config.exec.with_sparse(SparsePolicy::Never);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .map_err(|e| invalid("threads", e.to_string()))?;
    let report = match args.calibration {
        true => pool.install(|| bench_calibration(&mut net, &config))?,
        false => pool.install(|| bench(&net, &config))?,
    };
    let sparsity = SparsityReport::measure(&net);
    let density = |name: &str| {
        let weight = format!("{name}.weight");
        let t = sparsity.tensors.iter().find(|t| t.name == weight)?;
        Some(1.0 - t.sparsity())
    };
    print(args, &net, &report, &density);
    if let Some(path) = &args.json {
        let layers: Vec<_> = report
            .layers
            .iter()
            .map(|l| {
                json!({
                    "name": l.name,
                    "path": l.kernel,
                    "ms": l.seconds * 1e3,
                    "calls": l.calls,
                    "density": density(&l.name),
                })
            })
            .collect();
        let out = json!({
            "checkpoint": args.checkpoint.weights.display().to_string(),
            "arch": net.arch().to_string(),
            "input": config.input,
            "batch": config.batch,
            "threads": report.threads,
            "kernel_level": reflow::cpu::level().to_string(),
            "sparse_policy": report.policy.to_string(),
            "pass": if args.calibration { "calibration" } else { "eval" },
            "runs": config.runs,
            "median_ms": report.median_ms,
            "images_per_second": report.images_per_second,
            "layers": layers,
        });
        let text = serde_json::to_string_pretty(&out).expect("JSON values serialise");
        reflow::io::write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}

fn print(args: &Args, net: &Model, report: &BenchReport, density: &dyn Fn(&str) -> Option<f64>) {
    let c = &report.config;
    say!(
        "{}: {}, batch {} of {}x{}x{}, {} thread(s), kernels {}, sparse {}",
        args.checkpoint.weights.display(),
        net.arch(),
        c.batch,
        c.input[0],
        c.input[1],
        c.input[2],
        report.threads,
        reflow::cpu::level(),
        report.policy
    );
    say!(
        "{:.2} images/s (median of {} {} passes: {:.3} ms)",
        report.images_per_second,
        c.runs,
        if args.calibration {
            "calibration"
        } else {
            "eval"
        },
        report.median_ms
    );
    if args.calibration {
        return;
    }
    if report.layers.is_empty() {
        say!("(nothing ran on blocked activations or vector kernels: no per-layer times)");
        return;
    }
    let total: f64 = report.layers.iter().map(|l| l.seconds).sum();
    say!(
        "{:<36} {:>9} {:>8} {:>9} {:>6}",
        "layer",
        "kernel",
        "density",
        "ms",
        "share"
    );
    for l in &report.layers {
        let d = density(&l.name).map_or("-".to_string(), |d| format!("{d:.3}"));
        say!(
            "{:<36} {:>9} {:>8} {:>9.3} {:>5.1}%",
            l.name,
            l.kernel,
            d,
            l.seconds * 1e3,
            100.0 * l.seconds / total
        );
    }
    let sparse = report
        .layers
        .iter()
        .filter(|l| l.kernel == "sparse")
        .count();
    say!(
        "{} layer(s), {sparse} on the sparse kernel; {:.3} ms in them per pass \
         (micro-batches on several threads add up)",
        report.layers.len(),
        total * 1e3
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_sizes_parse_or_name_the_flag() {
        assert_eq!(parse_input("3x224x224").unwrap(), [3, 224, 224]);
        assert_eq!(parse_input("1X28x28").unwrap(), [1, 28, 28]);
        for bad in ["3x224", "3x0x4", "axbxc", "", "3x4x5x6"] {
            let err = parse_input(bad).unwrap_err().to_string();
            assert!(err.contains("--input"), "{bad}: {err}");
        }
    }
}
