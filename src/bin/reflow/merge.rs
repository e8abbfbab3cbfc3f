//! `reflow merge`: the partial reports of a sweep's shards (`reflow prune --shard I/N
//! --json ...`) combined into the report one `reflow prune` would have written
//! (`docs/scaling.md`).

use super::protocol::{exit_with, identity, invalid, writable_folder};
use clap::Parser;
use reflow::prelude::*;
use reflow::protocol::sweep::{merge, PartialReport};
use std::path::PathBuf;
use std::process::ExitCode;

/// Merge the partial reports of a sweep's shards into one report.
#[derive(Parser, Debug)]
pub struct Args {
    /// The partial reports, one per shard, in any order.
    #[arg(value_name = "PARTIAL", required = true)]
    partials: Vec<PathBuf>,
    /// Write the merged report here (never over one of the partials).
    #[arg(long, value_name = "PATH")]
    json: PathBuf,
}

/// Runs parsed arguments.
pub fn execute(args: &Args) -> ExitCode {
    exit_with(run(args))
}

fn run(args: &Args) -> reflow::Result<()> {
    let out = identity(&args.json);
    if args.partials.iter().any(|p| identity(p) == out) {
        return Err(invalid(
            "json",
            format!("{} is one of the partial reports", args.json.display()),
        ));
    }
    writable_folder("json", args.json.parent())?;
    let mut parts = Vec::with_capacity(args.partials.len());
    for path in &args.partials {
        let text = std::fs::read(path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let part: PartialReport = serde_json::from_slice(&text).map_err(|e| {
            Error::Data(format!(
                "{}: not a reflow partial report ({e})",
                path.display()
            ))
        })?;
        parts.push((path.display().to_string(), part));
    }
    let report = merge(&parts)?;
    say!(
        "merged {} shards: {} test images",
        parts.len(),
        report.dense.images
    );
    // A number of the report, NaN when it has none (no labels: no top-1).
    let value = |v: Option<reflow::protocol::Number>| v.map_or(f64::NAN, |n| n.0);
    say!("dense: top-1 {:.4}", value(report.dense.top1));
    say!(
        "{:<12} {:>8} {:>13} {:>14} {:>12} {:>14}",
        "pattern",
        "sparsity",
        "pruned top-1",
        "repaired top-1",
        "agree pruned",
        "agree repaired"
    );
    for run in &report.runs {
        say!(
            "{:<12} {:>8.3} {:>13.4} {:>14.4} {:>12.4} {:>14.4}",
            run.pattern,
            run.sparsity,
            value(run.pruned_top1),
            value(run.reflow_top1),
            value(run.agreement_pruned),
            value(run.agreement_repaired)
        );
    }
    let text = serde_json::to_string_pretty(&report).expect("the report serialises");
    reflow::io::write_atomic(&args.json, text.as_bytes())
}
