//! Pruning masks and REFLOW against PyTorch (`torch.nn.utils.prune` and train-mode
//! `BatchNorm2d`), on the fixtures of `scripts/make_prune_fixtures.py`.

mod common;

use common::{array, read, relative_error, PARITY};
use ndarray::{Array4, Ix4, Ix5};
use reflow::layer::Layer;
use reflow::models::ResNet;
use reflow::prune::{MagnitudePruner, Masks, Pruner, Scope, TensorMask};
use reflow::rescale::{Reflow, Rescaler};
use reflow::StateDict;
use safetensors::SafeTensors;

fn dense() -> ResNet {
    ResNet::from_state_dict(&read("resnet20_cifar.safetensors")).unwrap()
}

/// PyTorch's masks for `scope` at `sparsity`, stored as u8 (1 = kept).
fn torch_masks(scope: &str, sparsity: &str) -> Masks {
    let bytes = std::fs::read(common::fixture("prune_masks.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let prefix = format!("{scope}/{sparsity}/");
    let mut masks = Masks::new();
    for (key, view) in file.iter() {
        if let Some(name) = key.strip_prefix(&prefix) {
            let pruned = view.data().iter().map(|&keep| keep == 0);
            masks.insert(name, TensorMask::from_pruned(view.shape(), pruned).unwrap());
        }
    }
    assert_eq!(masks.len(), 22, "{prefix}: 21 convolutions and fc");
    masks
}

#[test]
fn masks_equal_torch_prune_in_both_scopes() {
    let net = dense();
    for (scope, name) in [(Scope::Global, "global"), (Scope::Layer, "layer")] {
        for (s, key) in [(0.5, "0.5"), (0.9, "0.9")] {
            let ours = MagnitudePruner::new(s).scope(scope).masks(&net).unwrap();
            let theirs = torch_masks(name, key);
            for (tensor, mask) in theirs.iter() {
                assert_eq!(ours.get(tensor), Some(mask), "{name} {key} {tensor}");
            }
            assert_eq!(ours, theirs, "{name} {key}");
        }
    }
}

/// Prunes globally at 0.9 and recalibrates with `reflow` on the fixture's batches.
fn recalibrated(reflow: Reflow) -> (ResNet, StateDict) {
    let fx = read("reflow_resnet20.safetensors");
    let mut net = dense();
    MagnitudePruner::new(0.9).prune(&mut net).unwrap();
    let pruned_logits = net.forward(&input()).unwrap();
    let want = array(&fx, "pruned_logits");
    let err = relative_error(pruned_logits.as_slice().unwrap(), want.as_slice().unwrap());
    assert!(err <= PARITY, "pruned logits: {err:e}");

    let calib = array(&fx, "calib").into_dimensionality::<Ix5>().unwrap();
    let batches: Vec<Array4<f32>> = calib.outer_iter().map(|b| b.to_owned()).collect();
    let report = reflow.rescale(&mut net, &batches).unwrap();
    assert_eq!((report.layers, report.batches), (21, 3));
    (net, fx)
}

fn input() -> Array4<f32> {
    array(&read("resnet20_cifar.io.safetensors"), "input")
        .into_dimensionality::<Ix4>()
        .unwrap()
}

fn check_against_torch(mode: &str, reflow: Reflow) {
    let (net, fx) = recalibrated(reflow);
    let state = StateDict::from_layer(&net);
    let mut layers = 0;
    for (key, t) in state.iter() {
        let Some(stat) = ["running_mean", "running_var"]
            .into_iter()
            .find(|s| key.ends_with(s))
        else {
            continue;
        };
        let want = array(&fx, &format!("{mode}/{key}"));
        let err = relative_error(t.as_f32().unwrap(), want.as_slice().unwrap());
        assert!(err <= 1e-5, "{mode} {key}: relative error {err:e}");
        layers += (stat == "running_var") as usize;
        let bn = key.trim_end_matches(stat);
        let count = fx.get(&format!("{mode}/{bn}num_batches_tracked")).unwrap();
        assert_eq!(
            state.get(&format!("{bn}num_batches_tracked")).unwrap().data,
            count.data
        );
    }
    assert_eq!(layers, 21);
    let logits = net.forward(&input()).unwrap();
    let want = array(&fx, &format!("{mode}/logits"));
    let err = relative_error(logits.as_slice().unwrap(), want.as_slice().unwrap());
    assert!(err <= PARITY, "{mode} logits: relative error {err:e}");
    eprintln!("{mode}: logits within {err:.1e}");
}

#[test]
fn cumulative_reflow_equals_pytorch_momentum_none() {
    common::at_every_level(|_| {
        check_against_torch("cumulative", Reflow::cumulative());
    });
}

#[test]
fn ema_reflow_equals_pytorch_momentum_0_1() {
    common::at_every_level(|_| {
        check_against_torch("ema", Reflow::ema(0.1));
    });
}
