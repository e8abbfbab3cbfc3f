//! `reflow inspect`: what a checkpoint holds, read the way `reflow prune` reads it.

use clap::Parser;
use reflow::models::{Arch, Model, Stem};
use reflow::prelude::*;
use reflow::prune::SparsityReport;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

/// Print a checkpoint's inferred architecture, parameter counts and per-layer sparsity.
#[derive(Parser, Debug)]
pub struct Args {
    /// safetensors state dict in torchvision layout, dense or with pruned weights in
    /// compressed-tensors' bitmask layout (--save-format compressed).
    #[arg(value_name = "CHECKPOINT")]
    weights: PathBuf,
    /// Network family or torchvision preset; auto detects it from the keys.
    #[arg(long, default_value = "auto")]
    arch: String,
    /// ResNet stem kind: cifar or imagenet (the one thing a ResNet's keys do not say;
    /// the stem kernel is checked against it).
    #[arg(long, default_value = "imagenet")]
    stem: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs parsed arguments: 0 on success, 1 with one line on stderr otherwise.
pub fn execute(args: &Args) -> ExitCode {
    crate::protocol::exit_with(run(args))
}

fn run(args: &Args) -> reflow::Result<()> {
    let arch: Arch = args.arch.parse()?;
    let stem: Stem = args.stem.parse()?;
    let net = Model::load(&args.weights, arch, stem)?;
    let report = SparsityReport::measure(&net);
    let arch = net.arch();
    let shape = match &net {
        Model::ResNet(r) => {
            let c = r.config();
            let widths = match &c.block_widths {
                Some(_) => ", per-block widths (channel-pruned)",
                None => "",
            };
            format!(
                "{} stem, stages {:?} of {} blocks, planes {:?}, groups {}{widths}",
                c.stem, c.layers, c.block, c.planes, c.groups
            )
        }
        _ => String::new(),
    };
    if args.json {
        let layers: Vec<_> = report
            .tensors
            .iter()
            .map(|t| json!({"name": t.name, "numel": t.numel, "sparsity": t.sparsity()}))
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
        args.weights.display(),
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
        "{:<40} {:>12} {:>9}",
        "prunable tensor",
        "values",
        "sparsity"
    );
    for t in &report.tensors {
        say!("{:<40} {:>12} {:>9.4}", t.name, t.numel, t.sparsity());
    }
    Ok(())
}
