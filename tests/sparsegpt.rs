//! SparseGPT against the PyTorch reference of `scripts/make_sparsegpt_fixtures.py`
//! (IST-DASLab/sparsegpt's `fasterprune`, in float64): the input Hessians of a grouped,
//! a strided and dilated, a 1×1 convolution and a linear layer, and the pruned,
//! updated weights, unstructured and 2:4 (one layer spans two blocks of 128 columns);
//! the sequential mode of SparseGPT and of Wanda.

mod common;

use reflow::layer::Params;
use reflow::prune::{Hessians, InputNorms, Pruner, SparseGptPruner, WandaPruner};
use reflow::Error;

#[test]
fn hessians_and_updated_weights_equal_the_pytorch_reference() {
    let wanda = common::read("wanda_masks.safetensors");
    let fixture = common::read("sparsegpt.safetensors");
    let net = common::small_network(&wanda);
    let hessians = Hessians::measure(&net, &common::small_inputs(&wanda)).unwrap();
    for layer in ["0", "2", "4", "7"] {
        let want = fixture
            .get(&format!("hessians/{layer}"))
            .unwrap()
            .as_f32()
            .unwrap();
        let (got, _) = hessians.layer(layer).unwrap();
        assert_eq!(got.len(), want.len(), "{layer}");
        let scale = want.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - f64::from(w)).abs() <= 1e-6 * scale,
                "{layer} at {i}: {g} {w}"
            );
        }
    }
    let patterns = [
        ("0.5/", SparseGptPruner::new(0.5, hessians.clone())),
        ("0.8/", SparseGptPruner::new(0.8, hessians.clone())),
        (
            "2:4/",
            SparseGptPruner::new(0.0, hessians.clone())
                .nm(2, 4)
                .unwrap(),
        ),
    ];
    for (prefix, pruner) in patterns {
        let mut pruned = common::small_network(&wanda);
        let masks_first = pruner.masks(&pruned).unwrap();
        let (masks, _) = pruner.prune(&mut pruned).unwrap();
        assert_eq!(
            masks, masks_first,
            "{prefix}: masks() says what prune() does"
        );
        assert_eq!(compare_weights(&pruned, &fixture, prefix), 4, "{prefix}");
        assert_masks_are_the_zeros(&pruned, &masks);
    }
}

/// Every tensor `masks` holds is zero exactly where its mask prunes.
fn assert_masks_are_the_zeros(net: &dyn Params, masks: &reflow::prune::Masks) {
    net.visit_params(&mut |p| {
        if let Some(mask) = masks.get(p.name) {
            for (i, &w) in p.data.iter().enumerate() {
                assert_eq!(mask.is_pruned(i), w == 0.0, "{} at {i}", p.name);
            }
        }
    });
}

#[test]
fn a_layer_without_a_hessian_is_an_error_naming_it() {
    let wanda = common::read("wanda_masks.safetensors");
    let net = common::small_network(&wanda);
    let err = SparseGptPruner::new(0.5, Hessians::default())
        .masks(&net)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert!(
        err.to_string().contains("\"0.weight\": no input Hessian"),
        "{err}"
    );
}

#[test]
fn fewer_calibration_positions_than_columns_is_an_error_naming_the_layer() {
    let wanda = common::read("wanda_masks.safetensors");
    let net = common::small_network(&wanda);
    let first = common::small_inputs(&wanda)[0]
        .slice(ndarray::s![0..1, .., .., ..])
        .to_owned();
    // One image: 30 output positions of the strided layer "2", whose rows have 144.
    let hessians = Hessians::measure(&net, &vec![first]).unwrap();
    let err = SparseGptPruner::new(0.5, hessians).masks(&net).unwrap_err();
    assert!(
        err.to_string()
            .contains("\"2.weight\": 30 calibration positions, fewer than its 144 input columns"),
        "{err}"
    );
}

#[test]
fn the_sequential_mode_equals_the_pytorch_reference() {
    let wanda = common::read("wanda_masks.safetensors");
    let fixture = common::read("sparsegpt.safetensors");
    let inputs = common::small_inputs(&wanda);
    for tag in ["0.5", "2:4"] {
        let nm = |p: SparseGptPruner| match tag {
            "2:4" => p.nm(2, 4).unwrap(),
            _ => p,
        };
        let sparsegpt = nm(SparseGptPruner::new(0.5, Hessians::default()));
        let mut net = common::small_network(&wanda);
        let (masks, _) = sparsegpt.prune_sequential(&mut net, &inputs).unwrap();
        let compared = compare_weights(&net, &fixture, &format!("sequential/sparsegpt/{tag}/"));
        assert_eq!(compared, 4, "{tag}");
        assert_masks_are_the_zeros(&net, &masks);
        // Not what the dense mode gives: the last layer's inputs changed.
        let mut dense = common::small_network(&wanda);
        let hessians = Hessians::measure(&dense, &inputs).unwrap();
        nm(SparseGptPruner::new(0.5, hessians))
            .prune(&mut dense)
            .unwrap();
        let last = |n: &dyn Params| {
            let mut w = Vec::new();
            n.visit_params(&mut |p| {
                if p.name == "7.weight" {
                    w = p.data.to_vec();
                }
            });
            w
        };
        assert_ne!(last(&net), last(&dense), "{tag}");

        let wanda_pruner = WandaPruner::new(0.5, InputNorms::default());
        let wanda_pruner = match tag {
            "2:4" => wanda_pruner.nm(2, 4).unwrap(),
            _ => wanda_pruner,
        };
        let mut net = common::small_network(&wanda);
        wanda_pruner.prune_sequential(&mut net, &inputs).unwrap();
        let compared = compare_weights(&net, &fixture, &format!("sequential/wanda/{tag}/"));
        assert_eq!(compared, 4, "{tag}");
    }
}

/// Compares the weights of `net` with the fixture's under `prefix` (within 1e-4 of
/// the largest, zeros at the same places); how many tensors it compared.
fn compare_weights(net: &dyn Params, fixture: &reflow::StateDict, prefix: &str) -> usize {
    let mut compared = 0;
    net.visit_params(&mut |p| {
        let Some(want) = fixture.get(&format!("{prefix}{}", p.name)) else {
            return;
        };
        let want = want.as_f32().unwrap();
        let scale = want.iter().fold(0f32, |m, &v| m.max(v.abs()));
        for (i, (&g, &w)) in p.data.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * scale,
                "{prefix}{} at {i}: {g} against {w}",
                p.name
            );
            assert_eq!(g == 0.0, w == 0.0, "{prefix}{} at {i}: zero", p.name);
        }
        compared += 1;
    });
    compared
}

#[test]
fn infinite_inputs_are_an_error_naming_the_layer() {
    let wanda = common::read("wanda_masks.safetensors");
    let net = common::small_network(&wanda);
    // The convolutions sum their inputs' squares in f64 and stay finite; the
    // activations overflow f32 on the way, and the classifier "7" sees infinities.
    let mut huge = common::small_inputs(&wanda);
    huge[0][[0, 0, 0, 0]] = 3e38;
    let hessians = Hessians::measure(&net, &huge).unwrap();
    let err = SparseGptPruner::new(0.5, hessians).masks(&net).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("\"7.weight\": its input Hessian is not finite"),
        "{err}"
    );
}
