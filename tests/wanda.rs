//! Wanda against the PyTorch reference of `scripts/make_wanda_fixtures.py`: the input
//! column norms of a grouped, a strided and dilated, a 1×1 convolution and a linear
//! layer, and the masks they give, unstructured and N:M.

mod common;

use reflow::nn::{Linear, Tensor2, Tensor4};
use reflow::prune::{InputNorms, Pruner, WandaPruner};
use reflow::Error;

#[test]
fn input_norms_and_masks_equal_the_pytorch_reference() {
    let fixture = common::read("wanda_masks.safetensors");
    let net = common::small_network(&fixture);
    let batches = common::small_inputs(&fixture);
    assert_eq!(batches.len(), 2);
    let norms = InputNorms::measure(&net, &batches).unwrap();
    assert_eq!(norms.layers().collect::<Vec<_>>(), ["0", "2", "4", "7"]);
    for layer in ["0", "2", "4", "7"] {
        let want = fixture
            .get(&format!("norms/{layer}"))
            .unwrap()
            .as_f32()
            .unwrap();
        let got = norms.layer(layer).unwrap();
        assert_eq!(got.len(), want.len(), "{layer}");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - f64::from(w)).abs() <= 1e-5 * f64::from(w).abs().max(1.0),
                "{layer} column {i}: {g} against {w}"
            );
        }
    }
    let mut compared = 0;
    let patterns = [
        ("unstructured/0.3/", WandaPruner::new(0.3, norms.clone())),
        ("unstructured/0.5/", WandaPruner::new(0.5, norms.clone())),
        ("unstructured/0.9/", WandaPruner::new(0.9, norms.clone())),
        (
            "nm/2:4/",
            WandaPruner::new(0.0, norms.clone()).nm(2, 4).unwrap(),
        ),
        (
            "nm/1:4/",
            WandaPruner::new(0.0, norms.clone()).nm(1, 4).unwrap(),
        ),
    ];
    for (prefix, pruner) in patterns {
        let masks = pruner.masks(&net).unwrap();
        assert_eq!(masks.len(), 4, "{prefix}");
        for (name, mask) in masks.iter() {
            let want = fixture
                .get(&format!("{prefix}{name}"))
                .unwrap_or_else(|| panic!("no reference mask {prefix}{name}"))
                .as_f32()
                .unwrap();
            assert_eq!(mask.len(), want.len(), "{prefix}{name}");
            for (i, &w) in want.iter().enumerate() {
                assert_eq!(mask.is_pruned(i), w == 1.0, "{prefix}{name} at {i}");
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 20);
}

#[test]
fn a_layer_without_input_statistics_is_an_error_naming_it() {
    let fixture = common::read("wanda_masks.safetensors");
    let net = common::small_network(&fixture);
    // Statistics of a lone linear layer: none of the network's layers but "" match.
    let fc = Linear::new(4, 2, false);
    let x = Tensor2::zeros((1, 4));
    let norms = InputNorms::measure(&fc, &vec![x]).unwrap();
    let err = WandaPruner::new(0.5, norms).masks(&net).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert!(err.to_string().contains("\"0.weight\""), "{err}");
    assert!(err.to_string().contains("no input statistics"), "{err}");
}

#[test]
fn bad_parameters_are_errors_before_any_work() {
    let fixture = common::read("wanda_masks.safetensors");
    let net = common::small_network(&fixture);
    let norms = InputNorms::measure(&net, &common::small_inputs(&fixture)).unwrap();
    assert!(WandaPruner::new(0.0, norms.clone()).nm(4, 4).is_err());
    let err = WandaPruner::new(1.0, norms.clone())
        .masks(&net)
        .unwrap_err();
    assert!(matches!(err, Error::OutOfRange { .. }), "{err}");
    let err = WandaPruner::new(0.5, norms.clone())
        .exclude("fc")
        .masks(&net)
        .unwrap_err();
    assert!(err.to_string().contains("\"fc\""), "{err}");
    let empty: Vec<Tensor4> = Vec::new();
    let err = InputNorms::measure(&net, &empty).unwrap_err();
    assert!(matches!(err, Error::EmptyData { .. }), "{err}");
    // Excluded layers keep every weight.
    let masks = WandaPruner::new(0.5, norms)
        .exclude("7")
        .masks(&net)
        .unwrap();
    assert!(masks.get("7.weight").is_none() && masks.get("0.weight").is_some());
}
