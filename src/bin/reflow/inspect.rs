//! `reflow inspect`: what a checkpoint holds, read the way `reflow prune` reads it.

use crate::protocol::Checkpoint;
use clap::Parser;
use reflow::prelude::*;
use reflow::prune::SparsityReport;
use serde_json::json;
use std::process::ExitCode;

/// Print a checkpoint's inferred architecture, parameter counts and per-layer sparsity.
#[derive(Parser, Debug)]
pub struct Args {
    #[command(flatten)]
    checkpoint: Checkpoint,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs parsed arguments: 0 on success, 1 with one line on stderr otherwise.
pub fn execute(args: &Args) -> ExitCode {
    crate::protocol::exit_with(run(args))
}

fn run(args: &Args) -> reflow::Result<()> {
    let net = args.checkpoint.load()?;
    let report = SparsityReport::measure(&net);
    // Convolution weights (rank 4) by name: those at most 40 % dense are timed on the
    // sparse kernel when the network runs (`reflow bench` shows the choice).
    let mut convolutions = std::collections::HashSet::new();
    net.visit_params(&mut |p| {
        if p.shape.len() == 4 {
            convolutions.insert(p.name.to_string());
        }
    });
    let kernels = |t: &reflow::prune::TensorSparsity| match convolutions.contains(&t.name)
        && 1.0 - t.sparsity() <= reflow::nn::SparsePolicy::MEASURED_DENSITY
    {
        true => "dense or sparse",
        false => "dense",
    };
    let arch = net.arch();
    let shape = net.describe();
    if args.json {
        let layers: Vec<_> = report
            .tensors
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "numel": t.numel,
                    "sparsity": t.sparsity(),
                    "kernels": kernels(t),
                })
            })
            .collect();
        let out = json!({
            "family": arch.family(),
            "arch": arch.to_string(),
            "architecture": shape,
            "in_channels": net.in_channels(),
            "num_classes": net.num_classes(),
            "params": count_parameters(&net),
            "prunable": count_prunable(&net),
            "sparsity": report.prunable_sparsity(),
            "layers": layers,
        });
        say!(
            "{}",
            serde_json::to_string_pretty(&out).expect("JSON values serialise")
        );
        return Ok(());
    }
    say!(
        "{}: {arch}{}",
        args.checkpoint.weights.display(),
        match shape.is_empty() {
            true => String::new(),
            false => format!(", {shape}"),
        }
    );
    say!(
        "{} input channel(s), {} classes; {} parameters, {} prunable, sparsity {:.4}",
        net.in_channels(),
        net.num_classes(),
        count_parameters(&net),
        count_prunable(&net),
        report.prunable_sparsity()
    );
    say!(
        "{:<40} {:>12} {:>9}  kernels (sparse: timed against dense when it runs)",
        "prunable tensor",
        "values",
        "sparsity"
    );
    for t in &report.tensors {
        let k = kernels(t);
        say!("{:<40} {:>12} {:>9.4}  {k}", t.name, t.numel, t.sparsity());
    }
    Ok(())
}
