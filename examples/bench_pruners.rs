//! Times a pruner's own work on a checkpoint: the pass over the calibration images
//! that measures its statistics (Wanda's input norms, SparseGPT's input Hessians;
//! none for magnitude pruning), then the pruning itself (layer scope).
//! `scripts/bench_pruners.py` runs it next to PyTorch on the same checkpoint, images
//! and threads, and prints the ratios.
//!
//! ```sh
//! cargo run --release --features npy --example bench_pruners -- \
//!     WEIGHTS.safetensors IMAGES.npy magnitude|wanda|sparsegpt SPARSITY|N:M \
//!     [COUNT] [BATCH] [--exclude NAME]...
//! ```
//!
//! `IMAGES.npy` holds float32 `[N, C, H, W]` images, already normalised; the first
//! `COUNT` (all by default) are the calibration set, in batches of `BATCH` (16).
//! `--exclude` leaves a layer (or every layer under a prefix) dense.

use reflow::data::{ImageBatches, Normalization};
use reflow::io::{ImageSource, NpyImages};
use reflow::models::{Arch, Model, Stem};
use reflow::prune::{Hessians, InputNorms, MagnitudePruner, NmPruner, Pruner};
use reflow::prune::{Scope, SparseGptPruner, WandaPruner};
use std::time::Instant;

fn main() -> reflow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!("usage: bench_pruners WEIGHTS IMAGES.npy magnitude|wanda|sparsegpt SPARSITY|N:M [COUNT] [BATCH] [--exclude NAME]...");
        std::process::exit(2);
    };
    let [weights, images, method, amount, rest @ ..] = args.as_slice() else {
        usage()
    };
    let (mut numbers, mut exclude) = (Vec::new(), Vec::new());
    let mut rest = rest.iter();
    while let Some(arg) = rest.next() {
        match (arg.as_str(), arg.parse::<usize>()) {
            ("--exclude", _) => exclude.push(rest.next().unwrap_or_else(|| usage()).clone()),
            (_, Ok(n)) => numbers.push(n),
            _ => usage(),
        }
    }
    let number = |i: usize, default: usize| numbers.get(i).copied().unwrap_or(default);
    let images = NpyImages::read(images)?;
    let count = number(0, images.len());
    let batch = number(1, 16);
    let norm = match images.image_dims()[0] {
        1 => Normalization::fashion_mnist(),
        _ => Normalization::imagenet(),
    };
    let calibration = ImageBatches::new(&images, count, batch, &norm)?;
    let stem = match images.image_dims()[1] {
        ..=64 => Stem::Cifar,
        _ => Stem::Imagenet,
    };
    let mut net = Model::load(weights, Arch::AUTO, stem)?;
    let nm = amount.split_once(':').map(|(n, m)| (n.parse(), m.parse()));
    let (sparsity, nm) = match nm {
        Some((Ok(n), Ok(m))) => (0.0, Some((n, m))),
        _ => (amount.parse().unwrap_or(f64::NAN), None),
    };

    let started = Instant::now();
    let pruner: Box<dyn Pruner> = match method.as_str() {
        "magnitude" => match nm {
            Some((n, m)) => Box::new(excluding(NmPruner::new(n, m)?, &exclude, NmPruner::exclude)),
            None => {
                let pruner = MagnitudePruner::new(sparsity).scope(Scope::Layer);
                Box::new(excluding(pruner, &exclude, MagnitudePruner::exclude))
            }
        },
        "wanda" => {
            let norms = InputNorms::measure(&net, &calibration)?;
            let pruner = excluding(
                WandaPruner::new(sparsity, norms),
                &exclude,
                WandaPruner::exclude,
            );
            Box::new(match nm {
                Some((n, m)) => pruner.nm(n, m)?,
                None => pruner,
            })
        }
        "sparsegpt" => {
            let hessians = Hessians::measure(&net, &calibration)?;
            let pruner = SparseGptPruner::new(sparsity, hessians);
            let pruner = excluding(pruner, &exclude, SparseGptPruner::exclude);
            Box::new(match nm {
                Some((n, m)) => pruner.nm(n, m)?,
                None => pruner,
            })
        }
        other => {
            eprintln!("unknown method {other:?}: magnitude, wanda or sparsegpt");
            std::process::exit(2);
        }
    };
    let statistics = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let (_, report) = pruner.prune(&mut net)?;
    let prune = started.elapsed().as_secs_f64();
    println!(
        "reflow {method} {amount}: {count} images on {} threads, statistics {statistics:.3} s, prune {prune:.3} s, sparsity {:.4}",
        rayon::current_num_threads(),
        report.prunable_sparsity()
    );
    Ok(())
}

/// `pruner` with every name of `exclude` excluded through `exclude_one`.
fn excluding<P>(pruner: P, exclude: &[String], exclude_one: fn(P, String) -> P) -> P {
    exclude.iter().cloned().fold(pruner, exclude_one)
}
