//! Single layers against PyTorch: every case of `tests/fixtures/layers.json`
//! (made by `scripts/make_fixtures.py`).

mod common;

use common::{array, fixture, relative_error, strip_prefix, PARITY};
use ndarray::{Ix2, Ix4};
use reflow::layer::Layer;
use reflow::nn::{BatchNorm2d, Conv2d, Conv2dConfig, Linear, MaxPool2d};
use serde_json::Value;

fn pair(v: &Value, key: &str) -> [usize; 2] {
    let a = v[key].as_array().unwrap_or_else(|| panic!("{key}"));
    [
        a[0].as_u64().unwrap() as usize,
        a[1].as_u64().unwrap() as usize,
    ]
}

fn num(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap_or_else(|| panic!("{key}")) as usize
}

#[test]
fn every_layer_case_matches_pytorch() {
    common::at_every_level(|_| {
        let cases: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(fixture("layers.json")).unwrap())
                .unwrap();
        let tensors = common::read("layers.safetensors");
        let mut kinds = std::collections::BTreeSet::new();
        for case in &cases {
            let name = case["name"].as_str().unwrap();
            let kind = case["kind"].as_str().unwrap();
            kinds.insert(kind.to_string());
            let params = strip_prefix(&tensors, name);
            let input = array(&tensors, &format!("{name}.input"));
            let want = array(&tensors, &format!("{name}.output"));
            let got = match kind {
                "conv2d" => {
                    let cfg = Conv2dConfig {
                        in_channels: num(case, "in_channels"),
                        out_channels: num(case, "out_channels"),
                        kernel: pair(case, "kernel"),
                        stride: pair(case, "stride"),
                        padding: pair(case, "padding"),
                        dilation: pair(case, "dilation"),
                        groups: num(case, "groups"),
                        bias: case["bias"].as_bool().unwrap(),
                    };
                    let mut layer = Conv2d::new(cfg).unwrap();
                    strip_without_io(&params).load_into(&mut layer).unwrap();
                    layer
                        .forward(&input.into_dimensionality::<Ix4>().unwrap())
                        .unwrap()
                        .into_dyn()
                }
                "max_pool2d" => MaxPool2d::with_dilation(
                    pair(case, "kernel"),
                    pair(case, "stride"),
                    pair(case, "padding"),
                    pair(case, "dilation"),
                )
                .unwrap()
                .forward(&input.into_dimensionality::<Ix4>().unwrap())
                .unwrap()
                .into_dyn(),
                "batch_norm2d" => {
                    let eps = case["eps"].as_f64().unwrap() as f32;
                    let mut layer = BatchNorm2d::new(num(case, "num_features"), eps);
                    strip_without_io(&params).load_into(&mut layer).unwrap();
                    layer
                        .forward(&input.into_dimensionality::<Ix4>().unwrap())
                        .unwrap()
                        .into_dyn()
                }
                "linear" => {
                    let mut layer = Linear::new(
                        num(case, "in_features"),
                        num(case, "out_features"),
                        case["bias"].as_bool().unwrap(),
                    );
                    strip_without_io(&params).load_into(&mut layer).unwrap();
                    layer
                        .forward(&input.into_dimensionality::<Ix2>().unwrap())
                        .unwrap()
                        .into_dyn()
                }
                other => panic!("unknown kind {other}"),
            };
            assert_eq!(got.shape(), want.shape(), "{name}: shape");
            let err = relative_error(
                got.as_standard_layout().as_slice().unwrap(),
                want.as_slice().unwrap(),
            );
            assert!(err <= PARITY, "{name}: relative error {err:e}");
            eprintln!("{name}: relative error {err:.2e}");
        }
        let all: Vec<_> = kinds.into_iter().collect();
        assert_eq!(all, ["batch_norm2d", "conv2d", "linear", "max_pool2d"]);
        assert!(cases.len() >= 15);
    });
}

/// A layer case's parameters without its `input`/`output` tensors.
fn strip_without_io(params: &reflow::StateDict) -> reflow::StateDict {
    let mut p = params.clone();
    p.remove("input");
    p.remove("output");
    p
}
