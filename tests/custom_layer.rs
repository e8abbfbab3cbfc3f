//! A network defined outside the crate, with its own tensor type (`Vec<f32>`
//! matrices, no ndarray), goes through the same stages as the bundled models.

#[path = "../examples/custom_layer/mlp.rs"]
#[allow(dead_code)]
mod mlp;

use mlp::{synthetic_batches, Matrix, Mlp};
use reflow::prelude::*;
use reflow::stats::{Recorder, TapSelector};

fn weights_and_biases(net: &Mlp) -> StateDict {
    let mut state = StateDict::from_layer(net);
    for key in [
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
    ] {
        state.remove(key);
    }
    state
}

#[test]
fn magnitude_pruning_works_through_the_trait() {
    let mut net = Mlp::new(8, 16, 3, 1);
    let (masks, report) = MagnitudePruner::new(0.75).prune(&mut net).unwrap();
    assert_eq!(
        masks.pruned_count(),
        (0.75f64 * (128 + 48) as f64).round() as usize
    );
    assert_eq!(report.prunable_zeros(), masks.pruned_count());
    // The smallest kept magnitude is at least the largest pruned one.
    let before = Mlp::new(8, 16, 3, 1);
    let (mut max_pruned, mut min_kept) = (0f32, f32::INFINITY);
    before.visit_params(&mut |p| {
        if let Some(m) = masks.get(p.name) {
            for (i, w) in p.data.iter().enumerate() {
                if m.is_pruned(i) {
                    max_pruned = max_pruned.max(w.abs());
                } else {
                    min_kept = min_kept.min(w.abs());
                }
            }
        }
    });
    assert!(max_pruned <= min_kept, "{max_pruned} > {min_kept}");
}

#[test]
fn cumulative_reflow_averages_the_batches() {
    let mut net = Mlp::new(6, 5, 2, 3);
    let batches = synthetic_batches(4, 10, 6, 9);
    let untouched = weights_and_biases(&net);
    Reflow::cumulative().rescale(&mut net, &batches).unwrap();
    assert_eq!(
        weights_and_biases(&net),
        untouched,
        "REFLOW touched a weight"
    );

    // Expected: the equal-weight average of the batch means and unbiased variances of
    // the batch-norm input, fc1(x).
    let mut rec = Recorder::new(TapSelector {
        site: reflow::layer::Site::Input,
        ..TapSelector::batch_norm_outputs()
    });
    let mut per_batch = Vec::new();
    for b in &batches {
        let mut r = Recorder::new(TapSelector {
            site: reflow::layer::Site::Input,
            ..TapSelector::batch_norm_outputs()
        });
        net.forward_with(b, &mut Probe::new(&mut r)).unwrap();
        net.forward_with(b, &mut Probe::new(&mut rec)).unwrap();
        per_batch.push(r.finish().unwrap().get("bn1").unwrap().clone());
    }
    let state = StateDict::from_layer(&net);
    let mean = state.get("bn1.running_mean").unwrap().as_f32().unwrap();
    let var = state.get("bn1.running_var").unwrap().as_f32().unwrap();
    for c in 0..5 {
        let m: f64 = per_batch.iter().map(|s| s.mean()[c]).sum::<f64>() / 4.0;
        let v: f64 = per_batch
            .iter()
            .map(|s| s.unbiased_variance()[c])
            .sum::<f64>()
            / 4.0;
        assert!(
            (mean[c] as f64 - m).abs() < 1e-5 * m.abs().max(1.0),
            "mean {c}"
        );
        assert!((var[c] as f64 - v).abs() < 1e-5 * v.max(1.0), "var {c}");
    }
    // With equal batch sizes, the mean of means is the population mean.
    let population = rec.finish().unwrap();
    let pop_mean = population.get("bn1").unwrap().mean();
    for (&got, &m) in mean.iter().zip(pop_mean) {
        assert!((got as f64 - m).abs() < 1e-5 * m.abs().max(1.0));
    }
}

#[test]
fn exact_reflow_sets_population_statistics() {
    let mut net = Mlp::new(6, 5, 2, 4);
    let batches = synthetic_batches(3, 7, 6, 5);
    let report = Reflow::exact().rescale(&mut net, &batches).unwrap();
    assert_eq!((report.layers, report.passes), (1, 1));
    let mut all = Vec::new();
    for b in &batches {
        all.extend_from_slice(&b.data);
    }
    let x = Matrix::new(21, 6, all);
    let mut rec = Recorder::new(TapSelector {
        site: reflow::layer::Site::Input,
        ..TapSelector::batch_norm_outputs()
    });
    net.forward_with(&x, &mut Probe::new(&mut rec)).unwrap();
    let stats = rec.finish().unwrap();
    let want = stats.get("bn1").unwrap();
    let state = StateDict::from_layer(&net);
    let var = state.get("bn1.running_var").unwrap().as_f32().unwrap();
    for (c, (&got, &w)) in var.iter().zip(&want.unbiased_variance()).enumerate() {
        assert!(
            (got as f64 - w).abs() < 1e-6 * w.max(1.0),
            "channel {c}: {got} vs {w}"
        );
    }
}

#[test]
fn the_pipeline_shows_collapse_and_recovery() {
    let mut net = Mlp::new(32, 64, 10, 7);
    let calibration = synthetic_batches(8, 64, 32, 1);
    let held_out = synthetic_batches(2, 64, 32, 2);
    Reflow::cumulative()
        .rescale(&mut net, &calibration)
        .unwrap();
    let report = Pipeline::new(
        MagnitudePruner::new(0.8).scope(Scope::Layer),
        Reflow::cumulative(),
    )
    .measure_on(&held_out)
    .run(&mut net, &calibration)
    .unwrap();
    let signal = report.signal.unwrap();
    let pruned = signal.pruned_ratio().get("bn1").unwrap();
    let rescaled = signal.rescaled_ratio().get("bn1").unwrap();
    assert!(pruned < 0.7, "pruning should shrink the signal: {pruned}");
    assert!(
        (rescaled - 1.0).abs() < 0.1,
        "REFLOW should restore it: {rescaled}"
    );
}
