//! The stages on a ResNet: validation before any work, masks as data, REFLOW's modes
//! and its behaviour on failure, calibration batches.

mod common;

use ndarray::Array4;
use reflow::io::{IdxImages, Normalization};
use reflow::layer::{LayerKind, Probe, Schedule, Site};
use reflow::prelude::*;
use reflow::prune::TensorMask;
use reflow::stats::{Recorder, TapSelector};

fn net() -> ResNet {
    ResNet::from_state_dict(&common::read("resnet20_cifar.safetensors")).unwrap()
}

fn batches(n: usize, seed: usize) -> Vec<Array4<f32>> {
    (0..n)
        .map(|b| {
            Array4::from_shape_fn((6, 3, 8, 8), |(i, c, h, w)| {
                let k = seed * 131 + b * 71 + i * 29 + c * 13 + h * 7 + w;
                ((k * 2_654_435_761) % 1000) as f32 / 400.0 - 0.5 + c as f32 * 0.3
            })
        })
        .collect()
}

#[test]
fn bad_pruning_parameters_are_rejected_before_any_work() {
    let mut model = net();
    let before = StateDict::from_layer(&model);
    let cases: Vec<(MagnitudePruner, &str)> = vec![
        (MagnitudePruner::new(1.2), "sparsity"),
        (MagnitudePruner::new(1.0), "sparsity"),
        (MagnitudePruner::new(-0.1), "sparsity"),
        (MagnitudePruner::new(f64::NAN), "sparsity"),
        (MagnitudePruner::new(0.5).exclude("layer9"), "layer9"),
        (MagnitudePruner::new(0.5).exclude("conv"), "conv"), // a prefix only at a dot
        (
            MagnitudePruner::new(0.5).with_override("fc.bias", 0.1),
            "fc.bias",
        ),
        (
            MagnitudePruner::new(0.5).with_override("conv1", 2.0),
            "conv1",
        ),
        (
            MagnitudePruner::new(0.5)
                .exclude("fc")
                .with_override("fc", 0.5),
            "fc.weight",
        ),
    ];
    for (pruner, needle) in cases {
        let err = pruner.prune(&mut model).unwrap_err();
        // A number outside its range is typed as such; the rest are invalid arguments.
        assert!(
            matches!(
                err,
                Error::InvalidArgument { .. } | Error::OutOfRange { .. }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
    let err = Pipeline::new(MagnitudePruner::new(0.5), Reflow::ema(0.0))
        .run(&mut model, &batches(1, 0))
        .unwrap_err();
    assert!(err.to_string().contains("momentum"), "{err}");
    let empty: Vec<Array4<f32>> = Vec::new();
    let err = Pipeline::new(MagnitudePruner::new(0.5), Reflow::cumulative())
        .run(&mut model, &empty)
        .unwrap_err();
    assert!(err.to_string().contains("empty calibration set"), "{err}");
    assert_eq!(StateDict::from_layer(&model), before, "nothing changed");
}

#[test]
fn nan_weights_cannot_be_ranked() {
    let mut model = net();
    model.visit_params_mut(&mut |p| {
        if p.name == "layer2.1.conv1.weight" {
            p.data[5] = f32::NAN;
        }
    });
    let err = MagnitudePruner::new(0.5).masks(&model).unwrap_err();
    assert!(err.to_string().contains("layer2.1.conv1.weight"), "{err}");
}

#[test]
fn exclusions_and_overrides_shape_the_masks() {
    let model = net();
    let masks = MagnitudePruner::new(0.9)
        .exclude("conv1")
        .exclude("layer1.0")
        .with_override("fc", 0.5)
        .masks(&model)
        .unwrap();
    assert!(masks.get("conv1.weight").is_none());
    assert!(masks.get("layer1.0.conv2.weight").is_none());
    assert!(masks.get("layer1.1.conv1.weight").is_some());
    assert_eq!(masks.get("fc.weight").unwrap().pruned_count(), 320); // 0.5 · 640
    let mut pool = 0;
    model.visit_params(&mut |p| {
        if p.role.is_prunable()
            && !p.name.starts_with("conv1")
            && !p.name.starts_with("layer1.0.")
            && p.name != "fc.weight"
        {
            pool += p.data.len();
        }
    });
    assert_eq!(
        masks.pruned_count(),
        320 + reflow::prune::removal_count(0.9, pool)
    );
}

#[test]
fn masks_save_load_and_reapply() {
    let mut model = net();
    let (masks, report) = MagnitudePruner::new(0.7)
        .scope(Scope::Layer)
        .prune(&mut model)
        .unwrap();
    for t in &report.tensors {
        assert_eq!(
            t.zeros,
            reflow::prune::removal_count(0.7, t.numel),
            "{}",
            t.name
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("masks.safetensors");
    masks.to_state_dict().write_safetensors(&path).unwrap();
    let state = StateDict::read_safetensors(&path).unwrap();
    assert!(state.contains("layer1.0.conv1.weight_mask"));
    let back = Masks::from_state_dict(&state).unwrap();
    assert_eq!(back, masks);

    let mut other = net();
    back.apply(&mut other).unwrap();
    assert_eq!(StateDict::from_layer(&other), StateDict::from_layer(&model));

    // Masks that do not fit a model are refused whole.
    let mut wrong = Masks::new();
    wrong.insert("fc.weight", TensorMask::keep_all(&[3, 3]));
    wrong.insert("nope.weight", TensorMask::keep_all(&[1]));
    let err = wrong.apply(&mut other).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("fc.weight") && text.contains("nope.weight"),
        "{text}"
    );
}

#[test]
fn exact_reflow_matches_population_statistics_layer_by_layer() {
    common::at_every_level(|_| {
        let mut model = net();
        MagnitudePruner::new(0.8).prune(&mut model).unwrap();
        let data = batches(3, 1);
        let report = Reflow::exact().rescale(&mut model, &data).unwrap();
        assert_eq!((report.layers, report.passes), (21, 21));
        // With every layer recalibrated, one eval pass sees at each BN input exactly the
        // statistics the layer now holds.
        let mut rec = Recorder::new(TapSelector {
            kind: Some(LayerKind::BatchNorm),
            site: Site::Input,
            layers: None,
        });
        for x in &data {
            model.forward_with(x, &mut Probe::new(&mut rec)).unwrap();
        }
        let stats = rec.finish().unwrap();
        assert_eq!(stats.len(), 21);
        let state = StateDict::from_layer(&model);
        for (layer, m) in stats.iter() {
            let var = state
                .get(&format!("{layer}.running_var"))
                .unwrap()
                .as_f32()
                .unwrap();
            let mean = state
                .get(&format!("{layer}.running_mean"))
                .unwrap()
                .as_f32()
                .unwrap();
            let err_v = common::relative_error(
                var,
                &m.unbiased_variance()
                    .iter()
                    .map(|&v| v as f32)
                    .collect::<Vec<_>>(),
            );
            let err_m = common::relative_error(
                mean,
                &m.mean().iter().map(|&v| v as f32).collect::<Vec<_>>(),
            );
            assert!(err_v < 1e-5 && err_m < 1e-5, "{layer}: {err_v:e} {err_m:e}");
        }
    });
}

#[test]
fn a_failed_recalibration_restores_the_statistics() {
    let mut model = net();
    let before = StateDict::from_layer(&model);
    let mut data = batches(3, 2);
    data[2] = Array4::zeros((6, 1, 8, 8)); // wrong channel count in the last batch
    for reflow in [Reflow::cumulative(), Reflow::exact()] {
        let err = reflow.rescale(&mut model, &data).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        assert_eq!(StateDict::from_layer(&model), before);
    }
}

#[test]
fn calibration_batches_come_in_file_order_or_seeded_shuffle() {
    let pixels: Vec<u8> = (0..20u8).flat_map(|i| [i; 4]).collect();
    let images = IdxImages::from_pixels([20, 1, 2, 2], pixels).unwrap();
    let norm = Normalization::new(vec![0.0], vec![1.0 / 255.0]).unwrap();
    let first = |b: &ImageBatches| {
        let mut v = Vec::new();
        b.try_for_each_batch(&mut |x| {
            v.extend(x.outer_iter().map(|img| img[[0, 0, 0]].round() as usize));
            Ok(())
        })
        .unwrap();
        v
    };
    let ordered = ImageBatches::new(&images, 7, 3, &norm).unwrap();
    assert_eq!(first(&ordered), [0, 1, 2, 3, 4, 5, 6]);
    let a = ImageBatches::new(&images, 7, 3, &norm).unwrap().shuffled(5);
    let b = ImageBatches::new(&images, 7, 3, &norm).unwrap().shuffled(5);
    let c = ImageBatches::new(&images, 7, 3, &norm).unwrap().shuffled(6);
    assert_eq!(first(&a), first(&b));
    assert_eq!(first(&a), a.indices());
    assert_ne!(first(&a), first(&c));
    assert_ne!(first(&a), first(&ordered));
    let mut sorted = first(&a);
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 7, "no image twice");
}

#[test]
fn layer_statistics_serialise_and_merge() {
    let model = net();
    let data = batches(2, 3);
    let record = |xs: &[Array4<f32>]| {
        let mut rec = Recorder::new(TapSelector::batch_norm_outputs());
        for x in xs {
            model.forward_with(x, &mut Probe::new(&mut rec)).unwrap();
        }
        rec.finish().unwrap()
    };
    let whole = record(&data);
    let json = serde_json::to_string(&record(&data[..1])).unwrap();
    let mut merged: reflow::stats::LayerStats = serde_json::from_str(&json).unwrap();
    merged.merge(&record(&data[1..])).unwrap();
    for ((name, a), (_, b)) in merged.iter().zip(whole.iter()) {
        for (x, y) in a.variance().iter().zip(b.variance()) {
            assert!((x - y).abs() <= 1e-12 * y.abs().max(1.0), "{name}");
        }
    }
    let signal = Signal::from_stats(&whole);
    assert_eq!(signal.layers.len(), 21);
    assert_eq!(signal.layers[0].0, "bn1");
    assert_eq!(signal.last().unwrap().0, "layer3.2.bn2");
    let ratio = signal.ratio_to(&signal);
    assert!(ratio.layers.iter().all(|(_, r)| (r - 1.0).abs() < 1e-12));
}

#[test]
fn a_known_dense_signal_is_not_measured_again() {
    let data = batches(1, 4);
    let mut model = net();
    let measured = measure_signal(&model, &data).unwrap();
    let known = Signal {
        layers: vec![("bn1".to_string(), 42.0)],
    };
    let report = Pipeline::new(MagnitudePruner::new(0.5), Reflow::cumulative())
        .measure_on(&data)
        .dense_signal(known.clone())
        .run(&mut model, &data)
        .unwrap();
    let signal = report.signal.unwrap();
    assert_eq!(signal.dense, known, "taken as given");
    assert_ne!(signal.dense, measured);
    assert_eq!(signal.pruned.layers.len(), 21, "the others are measured");
    assert_eq!(signal.pruned_ratio().layers.len(), 1);
}

#[test]
fn a_fused_calibration_pass_equals_the_layer_by_layer_pass() {
    common::at_every_level(|_| {
        // Fused, each batch norm is applied where its output is next read (the next
        // convolution's input, the residual add); layer by layer, each runs as its own
        // pass. The two compute the same values, to the bit, at every kernel level.
        let (mut fused, mut separate) = (net(), net());
        for x in batches(3, 5) {
            let a = fused.forward_train(&x, &mut Probe::none());
            let mut probe = Probe::none().with_schedule(Schedule::LayerByLayer);
            let b = separate.forward_train(&x, &mut probe);
            assert_eq!(a.unwrap(), b.unwrap());
        }
        let stats = |net: &ResNet| {
            let mut all = Vec::new();
            net.visit_norms(&mut |name, s| {
                all.push((
                    name.to_string(),
                    s.running_mean.to_vec(),
                    s.running_var.to_vec(),
                ))
            });
            all
        };
        assert_eq!(stats(&fused), stats(&separate));
        assert_eq!(stats(&fused).len(), 21);
    });
}
