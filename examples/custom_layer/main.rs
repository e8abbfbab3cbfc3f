//! Plug your own network into reflow: a `Vec<f32>` multilayer perceptron with batch
//! norm (see `mlp.rs`), pruned, measured and recalibrated by the same stages as the
//! bundled ResNets.
//!
//! Run with `cargo run --release --example custom_layer`.

mod mlp;

use mlp::{synthetic_batches, Mlp};
use reflow::prelude::*;

fn main() -> reflow::Result<()> {
    let mut net = Mlp::new(32, 64, 10, 7);
    let calibration = synthetic_batches(8, 64, 32, 1);
    let held_out = synthetic_batches(2, 64, 32, 2);
    println!(
        "MLP 32 → 64 (BatchNorm1d) → 10: {} parameters, {} prunable",
        count_parameters(&net),
        count_prunable(&net)
    );

    // Stand-in for training: a trained network's batch-norm statistics match its data.
    Reflow::cumulative().rescale(&mut net, &calibration)?;

    let pruner = MagnitudePruner::new(0.8).scope(Scope::Layer);
    let report = Pipeline::new(pruner, Reflow::cumulative())
        .measure_on(&held_out)
        .run(&mut net, &calibration)?;

    for t in &report.sparsity.tensors {
        println!(
            "  {:<12} {:>6} weights, {:>5.1} % zero",
            t.name,
            t.numel,
            100.0 * t.sparsity()
        );
    }
    let signal = report.signal.expect("measured");
    for (name, dense) in &signal.dense.layers {
        println!(
            "  {name}: signal {dense:.4} dense, {:.4} pruned, {:.4} after REFLOW",
            signal.pruned.get(name).unwrap_or(f64::NAN),
            signal.rescaled.get(name).unwrap_or(f64::NAN),
        );
    }
    println!(
        "REFLOW: {} batch-norm layer(s), {} batches",
        report.rescale.layers, report.rescale.batches
    );
    Ok(())
}
