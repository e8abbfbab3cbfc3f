//! The `reflow` command: `reflow prune` prunes a torchvision-layout checkpoint and
//! recovers it with REFLOW (see `docs/prune-example.md`); `reflow inspect` shows what a
//! checkpoint holds; `reflow bench` times it; `reflow merge` combines a sweep's shards
//! (`docs/scaling.md`). Built with the `cli` feature:
//!
//! ```sh
//! cargo install reflow --features cli
//! reflow prune --weights model.safetensors --test-images ... --json report.json
//! reflow inspect model.safetensors
//! reflow bench model.safetensors --input 3x224x224 --batch 8
//! ```

#[macro_use]
mod protocol;
mod bench;
mod inspect;
mod merge;
mod prune;

use clap::Parser;
use std::process::ExitCode;

/// One-shot pruning of convolutional networks with REFLOW batch-norm recalibration.
#[derive(Parser, Debug)]
#[command(name = "reflow", version, about)]
enum Command {
    /// Prune a checkpoint at several sparsities (or N:M, or channels), evaluate it,
    /// recalibrate it with REFLOW, evaluate again, and report.
    Prune(Box<prune::Args>),
    /// Print a checkpoint's inferred architecture, parameter counts and per-layer
    /// sparsity.
    Inspect(inspect::Args),
    /// Time a checkpoint's eval pass: images per second, and per convolution or linear
    /// layer its kernel (dense or sparse) and time.
    Bench(bench::Args),
    /// Merge the partial reports of a sweep's shards (reflow prune --shard I/N) into
    /// the report one run would have written.
    Merge(merge::Args),
}

fn main() -> ExitCode {
    match Command::try_parse() {
        Ok(Command::Prune(args)) => prune::execute(&args),
        Ok(Command::Inspect(args)) => inspect::execute(&args),
        Ok(Command::Bench(args)) => bench::execute(&args),
        Ok(Command::Merge(args)) => merge::execute(&args),
        Err(e) => protocol::clap_exit(e),
    }
}
