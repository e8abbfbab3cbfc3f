//! safetensors checkpoints: dtypes, strict loading, round trips, architecture
//! inference, and the errors bad files produce.

mod common;

use common::{fixture, read};
use reflow::layer::{Layer, ParamRole, Params};
use reflow::models::{Model, ResNet, ResNetConfig, Stem};
use reflow::state_dict::{StoredTensor, TensorData};
use reflow::{Error, StateDict};
use safetensors::tensor::{Dtype, TensorView};

fn small_net() -> ResNet {
    ResNet::from_state_dict(&read("resnet20_cifar.safetensors")).unwrap()
}

#[test]
fn save_then_load_is_bit_exact() {
    let original = read("resnet20_cifar.safetensors");
    let net = ResNet::from_state_dict(&original).unwrap();
    let saved = StateDict::from_layer(&net);
    assert_eq!(
        saved, original,
        "the model's state dict is the checkpoint's"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.safetensors");
    saved.write_safetensors(&path).unwrap();
    assert_eq!(StateDict::read_safetensors(&path).unwrap(), original);
    // Same bytes as the PyTorch-written file: same dtypes, shapes and values.
    let again = ResNet::load(&path).unwrap();
    let x = ndarray::Array4::from_elem((1, 3, 8, 8), 0.5f32);
    assert_eq!(again.forward(&x).unwrap(), net.forward(&x).unwrap());
    // No temporary file is left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn writes_replace_whole_files_and_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("x.safetensors");
    std::fs::write(&existing, b"old content").unwrap();
    let state = read("resnet20_cifar.safetensors");
    state.write_safetensors(&existing).unwrap();
    assert_eq!(StateDict::read_safetensors(&existing).unwrap(), state);

    let path = dir.path().join("missing-folder").join("x.safetensors");
    let err = read("resnet20_cifar.safetensors")
        .write_safetensors(&path)
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

/// Re-encodes every float tensor of `state` with `encode` under `dtype`.
fn reencode(state: &StateDict, dtype: Dtype, size: usize, encode: fn(f32) -> Vec<u8>) -> Vec<u8> {
    let mut buffers = Vec::new();
    for (name, t) in state.iter() {
        let (dt, bytes): (Dtype, Vec<u8>) = match &t.data {
            TensorData::F32(v) => (dtype, v.iter().flat_map(|&x| encode(x)).collect()),
            TensorData::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            _ => unreachable!(),
        };
        assert!(dt != dtype || bytes.len() == t.numel() * size);
        buffers.push((name.to_string(), dt, t.shape.clone(), bytes));
    }
    let views: Vec<(String, TensorView)> = buffers
        .iter()
        .map(|(n, dt, s, b)| (n.clone(), TensorView::new(*dt, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn half_bfloat_and_double_checkpoints_load_as_f32() {
    let original = read("resnet20_cifar.safetensors");
    type Encode = fn(f32) -> Vec<u8>;
    type Round = fn(f32) -> f32;
    let cases: [(Dtype, usize, Encode, Round); 3] = [
        (
            Dtype::F16,
            2,
            |x| half::f16::from_f32(x).to_le_bytes().to_vec(),
            |x| half::f16::from_f32(x).to_f32(),
        ),
        (
            Dtype::BF16,
            2,
            |x| half::bf16::from_f32(x).to_le_bytes().to_vec(),
            |x| half::bf16::from_f32(x).to_f32(),
        ),
        (Dtype::F64, 8, |x| (x as f64).to_le_bytes().to_vec(), |x| x),
    ];
    for (dtype, size, encode, round) in cases {
        let bytes = reencode(&original, dtype, size, encode);
        let loaded = StateDict::from_safetensors_bytes(&bytes).unwrap();
        let net = ResNet::from_state_dict(&loaded).unwrap();
        net.visit_params(&mut |p| {
            let want = original.get(p.name).unwrap().as_f32().unwrap();
            for (&got, &w) in p.data.iter().zip(want) {
                assert_eq!(got, round(w), "{dtype:?} {}", p.name);
            }
        });
    }
}

#[test]
fn num_batches_tracked_is_optional_but_kept_when_present() {
    let mut state = read("resnet20_cifar.safetensors");
    let kept: Vec<String> = state
        .keys()
        .filter(|k| k.ends_with("num_batches_tracked"))
        .map(str::to_string)
        .collect();
    assert_eq!(kept.len(), 21);
    assert_eq!(
        state.get("bn1.num_batches_tracked").unwrap().data,
        TensorData::I64(vec![7])
    );
    for k in &kept {
        state.remove(k);
    }
    let net = ResNet::from_state_dict(&state).unwrap();
    let back = StateDict::from_layer(&net);
    assert_eq!(
        back.get("bn1.num_batches_tracked").unwrap().data,
        TensorData::I64(vec![0])
    );
}

#[test]
fn strict_load_names_missing_unexpected_and_mismatched_keys() {
    let mut state = read("resnet20_cifar.safetensors");
    state.remove("layer2.0.downsample.1.running_var");
    state.insert(
        "layer4.0.conv1.weight",
        StoredTensor::f32(vec![1], vec![0.0]).unwrap(),
    );
    state.insert(
        "layer1.1.bn2.bias",
        StoredTensor::f32(vec![15], vec![0.0; 15]).unwrap(),
    );
    let mut net = ResNet::new(ResNetConfig::cifar_resnet(20).unwrap()).unwrap();
    let before = StateDict::from_layer(&net);
    let err = state.load_into(&mut net).unwrap_err();
    let Error::StateDict(m) = &err else {
        panic!("{err}")
    };
    assert_eq!(m.missing, ["layer2.0.downsample.1.running_var"]);
    assert_eq!(m.unexpected, ["layer4.0.conv1.weight"]);
    assert_eq!(m.shapes.len(), 1);
    assert_eq!(m.shapes[0].key, "layer1.1.bn2.bias");
    let text = err.to_string();
    for needle in [
        "layer2.0.downsample.1.running_var",
        "layer4.0.conv1.weight",
        "layer1.1.bn2.bias",
        "[16]",
        "[15]",
    ] {
        assert!(text.contains(needle), "{needle} not in: {text}");
    }
    assert_eq!(
        StateDict::from_layer(&net),
        before,
        "a failed load changes nothing"
    );

    // Partial loading takes what fits and reports the rest.
    let report = state.load_into_partial(&mut net).unwrap();
    assert_eq!(report, *m);
    let mut loaded = 0;
    net.visit_params(&mut |p| {
        if p.role == ParamRole::Weight && p.name == "layer1.0.conv1.weight" {
            loaded += (p.data == state.get(p.name).unwrap().as_f32().unwrap()) as usize;
        }
    });
    assert_eq!(loaded, 1);
}

#[test]
fn integer_parameters_are_a_dtype_error_naming_the_key() {
    let mut state = read("resnet20_cifar.safetensors");
    state.insert("fc.bias", StoredTensor::i64(vec![10], vec![1; 10]).unwrap());
    let err = ResNet::from_state_dict(&state).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedDtype { key, .. } if key == "fc.bias"),
        "{err}"
    );
}

#[test]
fn non_float_file_dtypes_are_rejected_by_name() {
    let data = [1u8, 2, 3, 4];
    let view = TensorView::new(Dtype::U8, vec![4], &data).unwrap();
    let bytes = safetensors::serialize([("conv1.weight", view)], None).unwrap();
    let err = StateDict::from_safetensors_bytes(&bytes).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedDtype { key, dtype, .. } if key == "conv1.weight" && dtype == "U8"),
        "{err}"
    );
    assert!(err.to_string().contains("conv1.weight"));
}

#[test]
fn truncated_and_corrupt_files_are_safetensors_errors() {
    let bytes = std::fs::read(fixture("resnet20_cifar.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [
        ("truncated", &bytes[..bytes.len() / 2]),
        ("header-only", &bytes[..8]),
        ("empty", &bytes[..0]),
        ("garbage", &b"definitely not a checkpoint at all"[..]),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let err = StateDict::read_safetensors(&path).unwrap_err();
        assert!(matches!(err, Error::Safetensors { .. }), "{name}: {err}");
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
    let err = StateDict::read_safetensors(dir.path().join("absent")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn inference_names_the_first_key_that_does_not_fit() {
    let base = read("resnext_small.safetensors");
    let resnet = "resnet".parse().unwrap();
    let arch_key = |state: &StateDict, stem| match Model::from_state_dict(state, resnet, stem) {
        Err(Error::Architecture { key, .. }) => key,
        other => panic!("expected an architecture error, got {other:?}"),
    };
    // Wrong stem for a 7x7 stem convolution.
    assert_eq!(arch_key(&base, Stem::Cifar), "conv1.weight");
    // No stem at all.
    let mut s = base.clone();
    s.remove("conv1.weight");
    assert_eq!(arch_key(&s, Stem::Imagenet), "conv1.weight");
    // No stage.
    let s = StateDict::from_layer(&reflow::nn::Linear::new(3, 2, true));
    assert_eq!(arch_key(&s, Stem::Imagenet), "conv1.weight");
    let mut s = base.clone();
    let stages: Vec<String> = s
        .keys()
        .filter(|k| k.starts_with("layer"))
        .map(str::to_string)
        .collect();
    stages.iter().for_each(|k| {
        s.remove(k);
    });
    assert_eq!(arch_key(&s, Stem::Imagenet), "layer1.0.conv1.weight");
    // A classifier that does not fit the last stage.
    let mut s = base.clone();
    s.insert(
        "fc.weight",
        StoredTensor::f32(vec![7, 100], vec![0.0; 700]).unwrap(),
    );
    assert_eq!(arch_key(&s, Stem::Imagenet), "fc.weight");
    // A rank-2 tensor where a conv weight belongs.
    let mut s = base.clone();
    s.insert(
        "layer2.0.conv1.weight",
        StoredTensor::f32(vec![2, 2], vec![0.0; 4]).unwrap(),
    );
    assert_eq!(arch_key(&s, Stem::Imagenet), "layer2.0.conv1.weight");
    // A missing block tensor is caught by the strict load, by name.
    let mut s = base;
    s.remove("layer3.1.bn2.weight");
    let err = ResNet::from_state_dict(&s).unwrap_err();
    assert!(err.to_string().contains("layer3.1.bn2.weight"), "{err}");
}

#[test]
fn wrong_input_channels_at_forward_are_a_shape_error() {
    let net = small_net();
    let err = net
        .forward(&ndarray::Array4::zeros((2, 1, 16, 16)))
        .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("[2, 1, 16, 16]") && text.contains("[_, 3, _, _]"),
        "{text}"
    );
}

#[test]
fn errors_inside_a_network_name_the_layer_path() {
    use reflow::layer::Probe;
    use reflow::nn::{Conv2d, Conv2dConfig, Sequential};
    let inner = Sequential::new().push("conv", Conv2d::new(Conv2dConfig::new(4, 4, 5)).unwrap());
    let mut outer = Sequential::new().push("inner", inner);
    // Too small for the 5x5 kernel.
    let err = outer
        .forward(&ndarray::Array4::zeros((1, 4, 3, 3)))
        .unwrap_err();
    assert!(err.to_string().starts_with("inner.conv:"), "{err}");
    // Wrong channel count, in the calibration pass.
    let x = ndarray::Array4::zeros((1, 3, 9, 9));
    let err = outer.forward_train(&x, &mut Probe::none()).unwrap_err();
    assert!(err.to_string().starts_with("inner.conv:"), "{err}");
}

/// Writes a checkpoint whose batch-norm statistics reflow itself changed (one
/// calibration pass), with reflow's logits beside it, to
/// `target/tmp/pytorch-check/`. `scripts/check_saved.py` then shows that PyTorch
/// loads it with `strict=True` and computes the same logits:
///
/// ```sh
/// python scripts/check_saved.py --stem imagenet \
///     --weights target/tmp/pytorch-check/resnext_small.safetensors \
///     --io target/tmp/pytorch-check/resnext_small.io.safetensors
/// ```
#[test]
fn saved_checkpoints_carry_reflows_state() {
    use reflow::layer::{NormUpdate, Probe};
    let io = read("resnext_small.io.safetensors");
    let input = common::array(&io, "input")
        .into_dimensionality::<ndarray::Ix4>()
        .unwrap();
    let mut net = ResNet::from_state_dict(&read("resnext_small.safetensors")).unwrap();
    let dense = net.forward(&input).unwrap();
    let ema = Probe::none().with_update(NormUpdate::Ema { momentum: 0.5 });
    net.forward_train(&input, &mut { ema }).unwrap();
    let logits = net.forward(&input).unwrap();
    assert_ne!(logits, dense, "the calibration pass changed the statistics");

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pytorch-check");
    std::fs::create_dir_all(&dir).unwrap();
    let weights = dir.join("resnext_small.safetensors");
    StateDict::from_layer(&net)
        .write_safetensors(&weights)
        .unwrap();
    let mut check = StateDict::new();
    check.insert(
        "input",
        StoredTensor::f32(input.shape().to_vec(), input.iter().copied().collect()).unwrap(),
    );
    check.insert(
        "logits",
        StoredTensor::f32(logits.shape().to_vec(), logits.iter().copied().collect()).unwrap(),
    );
    check
        .write_safetensors(dir.join("resnext_small.io.safetensors"))
        .unwrap();

    let back = ResNet::load(&weights).unwrap();
    assert_eq!(back.forward(&input).unwrap(), logits);
    assert_eq!(
        StateDict::from_layer(&back)
            .get("bn1.num_batches_tracked")
            .unwrap()
            .data,
        TensorData::I64(vec![8])
    );
}
