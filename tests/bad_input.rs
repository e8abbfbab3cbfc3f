//! Regression tests for bad input that once broke reflow: each case by name (issue 13
//! lists them). Cases that depend on the kernels run at every kernel level.

mod common;

use ndarray::Array4;
use reflow::layer::{Layer, NormUpdate, Params, Probe};
use reflow::models::{Architecture, Model, ResNet, ResNetConfig, Stem};
use reflow::nn::{Activation, AnyTensor};
use reflow::rescale::{Reflow, Rescaler};
use reflow::stats::measure_signal;

/// The ResNet-20 fixture (random weights), three input channels.
fn net() -> ResNet {
    ResNet::from_state_dict(&common::read("resnet20_cifar.safetensors")).unwrap()
}

#[test]
fn nan_propagates_through_every_activation_as_in_pytorch() {
    let x = Array4::from_shape_vec((1, 1, 1, 3), vec![f32::NAN, -1.0, 2.0]).unwrap();
    for f in Activation::ALL {
        let y = f.forward(&AnyTensor::from(x.clone())).unwrap();
        let y = y.into_nchw().unwrap();
        assert!(y[[0, 0, 0, 0]].is_nan(), "{f}");
        assert_eq!(y[[0, 0, 0, 2]], f.apply(2.0), "{f}");
    }
    let y = Activation::Relu
        .forward(&AnyTensor::from(x))
        .unwrap()
        .into_nchw()
        .unwrap();
    assert_eq!((y[[0, 0, 0, 1]], y[[0, 0, 0, 2]]), (0.0, 2.0));
}

#[test]
fn nan_in_an_image_reaches_the_logits_at_every_kernel_level() {
    // Before, every fused ReLU turned NaN into 0 and the logits came out finite.
    let net = net();
    common::at_every_level(|level| {
        let mut x = Array4::from_shape_fn((12, 3, 16, 16), |(n, c, h, w)| {
            ((n + 2 * c + h * w) % 7) as f32 / 7.0 - 0.5
        });
        x[[5, 1, 8, 8]] = f32::NAN;
        for y in [
            net.forward(&x).unwrap(),
            net.forward_with(
                &x,
                &mut Probe::none().with_schedule(reflow::layer::Schedule::LayerByLayer),
            )
            .unwrap(),
        ] {
            assert!(
                y.row(5).iter().all(|v| v.is_nan()),
                "{level}: {:?}",
                y.row(5)
            );
            assert!(
                y.row(4).iter().all(|v| v.is_finite()),
                "{level}: other images are finite"
            );
        }
    });
}

#[test]
fn a_batch_of_no_images() {
    // Before, every pass panicked in the activation pool.
    let mut net = ResNet::new(ResNetConfig::cifar_resnet(20).unwrap()).unwrap();
    let empty = Array4::<f32>::zeros((0, 3, 16, 16));
    // An eval pass of no images has no logits.
    assert_eq!(net.forward(&empty).unwrap().dim(), (0, 10));
    // Calibration needs values: an error naming the first batch norm.
    let err = net.forward_train(&empty, &mut Probe::none()).unwrap_err();
    assert!(err.to_string().contains("bn1"), "{err}");
    let before = net.forward(&Array4::ones((2, 3, 16, 16))).unwrap();
    let err = Reflow::cumulative()
        .rescale(&mut net, &vec![empty.clone()])
        .unwrap_err();
    assert!(err.to_string().contains("batch statistics"), "{err}");
    assert_eq!(
        net.forward(&Array4::ones((2, 3, 16, 16))).unwrap(),
        before,
        "restored"
    );
    // The signal of no images is an error, not a signal of zeros.
    let err = measure_signal(&net, &vec![empty]).unwrap_err();
    assert!(err.to_string().contains("no images"), "{err}");
    let none: Vec<Array4<f32>> = vec![];
    assert!(measure_signal(&net, &none).is_err());
}

/// `state` with `key` replaced by a float tensor of `shape` (filled with 0.01).
fn with_tensor(mut state: reflow::StateDict, key: &str, shape: Vec<usize>) -> reflow::StateDict {
    let n = shape.iter().product();
    state.insert(
        key,
        reflow::state_dict::StoredTensor::f32(shape, vec![0.01; n]).unwrap(),
    );
    state
}

/// Loading `state` fails, fast, with an architecture error whose text has `needle`.
fn refused(state: &reflow::StateDict, stem: Stem, needle: &str) {
    let t = std::time::Instant::now();
    let err = Model::from_state_dict(state, "resnet".parse().unwrap(), stem).unwrap_err();
    assert!(matches!(err, reflow::Error::Architecture { .. }), "{err}");
    assert!(err.to_string().contains(needle), "{err}");
    assert!(
        t.elapsed().as_secs_f64() < 1.0,
        "refused before any allocation"
    );
}

#[test]
fn a_zero_sized_width_tensor_is_refused_before_anything_is_allocated() {
    // [100000, 0, 3, 3] holds no value but once made a 360 GB network (an abort).
    let state = common::read("resnet20_cifar.safetensors");
    let state = with_tensor(state, "layer1.0.conv1.weight", vec![100_000, 0, 3, 3]);
    refused(&state, Stem::Cifar, "zero-sized");
}

#[test]
fn a_width_larger_than_the_file_can_hold_is_refused_before_anything_is_allocated() {
    let state = common::read("resnet20_cifar.safetensors");
    let state = with_tensor(state, "layer1.0.conv1.weight", vec![100_000, 1, 1, 1]);
    refused(&state, Stem::Cifar, "the file holds only");
}

#[test]
fn thousands_of_block_keys_are_refused_before_any_block_is_built() {
    // 40,000 empty `layerN.i.conv1.weight` keys once built 40,000 blocks (894 MB).
    // Each block's widths are read off its own keys: the first empty one is named.
    let mut state = common::read("resnet20_cifar.safetensors");
    for i in 3..40_000 {
        let empty = reflow::state_dict::StoredTensor::f32(vec![0], vec![]).unwrap();
        state.insert(format!("layer1.{i}.conv1.weight"), empty);
    }
    refused(
        &state,
        Stem::Cifar,
        "\"layer1.3.conv1.weight\": expected a rank-4",
    );
}

#[test]
fn a_bottleneck_with_a_zero_sized_conv3_is_an_error_not_a_panic() {
    // Once a division by zero in the architecture inference.
    let state = common::read("resnext_small.safetensors");
    let state = with_tensor(state, "layer1.0.conv3.weight", vec![0, 16, 1, 1]);
    refused(&state, Stem::Imagenet, "zero-sized");
}

#[test]
fn corrupt_numbers_in_a_checkpoint_are_refused_naming_the_key() {
    // Once loaded silently: NaN in a running variance, γ or fc.bias, a negative
    // running variance, an infinite weight.
    let cases = [
        ("bn1.running_var", f32::NAN, "NaN"),
        ("layer2.1.bn2.weight", f32::NAN, "NaN"),
        ("fc.bias", f32::NAN, "NaN"),
        ("layer3.0.bn1.running_var", -0.5, "negative"),
        ("layer1.2.conv2.weight", f32::INFINITY, "inf"),
    ];
    for (key, value, needle) in cases {
        let mut state = common::read("resnet20_cifar.safetensors");
        let t = state.get(key).unwrap().clone();
        let mut data = t.as_f32().unwrap().to_vec();
        data[3] = value;
        state.insert(
            key,
            reflow::state_dict::StoredTensor::f32(t.shape.clone(), data).unwrap(),
        );
        let err = ResNet::from_state_dict(&state).unwrap_err();
        assert!(
            matches!(err, reflow::Error::BadValue { .. }),
            "{key}: {err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(key) && text.contains(needle) && text.contains("index 3"),
            "{text}"
        );
        // Loaded on purpose, the value is there.
        let mut net = ResNet::new(ResNetConfig::infer(&state).unwrap()).unwrap();
        state.load_into_as_stored(&mut net).unwrap();
        let mut seen = None;
        net.visit_params(&mut |p| {
            if p.name == key {
                seen = Some(p.data[3]);
            }
        });
        let seen = seen.unwrap();
        assert!(seen.to_bits() == value.to_bits(), "{key}: {seen}");
    }
}

#[test]
fn a_pipeline_that_fails_leaves_the_model_as_it_was() {
    // Once: calibration data with the wrong channel count failed after the pruning,
    // and the model stayed pruned.
    use reflow::pipeline::Pipeline;
    use reflow::prune::MagnitudePruner;
    let mut net = net();
    let before = reflow::StateDict::from_layer(&net);
    let wrong = vec![Array4::<f32>::ones((4, 1, 16, 16))];
    let err = Pipeline::new(MagnitudePruner::new(0.8), Reflow::cumulative())
        .run(&mut net, &wrong)
        .unwrap_err();
    assert!(matches!(err, reflow::Error::Shape { .. }), "{err}");
    let after = reflow::StateDict::from_layer(&net);
    for (key, t) in before.iter() {
        assert_eq!(after.get(key), Some(t), "{key} changed");
    }
}

#[test]
fn labels_past_the_last_class_are_an_error_not_wrong_answers() {
    use reflow::io::{Dataset, IdxImages, IdxLabels, Normalization};
    let net = ResNet::new(ResNetConfig::cifar_resnet(20).unwrap().with_in_channels(1)).unwrap();
    let data = Dataset::new(
        IdxImages::from_pixels([6, 1, 8, 8], vec![100; 384]).unwrap(),
        IdxLabels::from_vec(vec![0, 1, 2, 3, 10, 4]),
    )
    .unwrap();
    let norm = Normalization::fashion_mnist();
    let err = reflow::metrics::accuracy(&net, &data.labelled(2, &norm).unwrap()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("label 10 of sample 4") && text.contains("10 classes"),
        "{text}"
    );
}

#[test]
fn a_vanishing_std_is_refused() {
    use reflow::io::Normalization;
    for std in [1e-40, 0.0, -1.0, f32::NAN, f32::INFINITY] {
        let err = Normalization::new(vec![0.5], vec![std]).unwrap_err();
        assert!(err.to_string().contains("std"), "{std}: {err}");
    }
    assert!(Normalization::new(vec![0.5], vec![1e-6]).is_ok());
}

#[test]
fn exact_reflow_refuses_a_single_value_per_channel_as_the_running_modes_do() {
    // Once: `exact` wrote running_var = 0 where `cumulative` refused.
    use reflow::nn::{BatchNorm2d, Conv2d, Conv2dConfig, ConvBn};
    let conv = Conv2d::new(Conv2dConfig::new(2, 4, 1)).unwrap();
    let mut unit = ConvBn::new(
        "conv",
        conv,
        "bn",
        BatchNorm2d::new(4, 1e-5),
        Activation::Relu,
    )
    .unwrap();
    let one_value = vec![Array4::<f32>::ones((1, 2, 1, 1))];
    for reflow in [Reflow::exact(), Reflow::cumulative(), Reflow::ema(0.1)] {
        let err = reflow.rescale(&mut unit, &one_value).unwrap_err();
        assert!(err.to_string().contains("bn"), "{err}");
        assert_eq!(unit.bn().running_var(), [1.0; 4], "unchanged");
    }
}

#[cfg(unix)]
#[test]
fn a_fifo_given_as_a_checkpoint_or_data_file_is_refused_without_blocking() {
    // Once: reading a FIFO blocked forever.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("weights.safetensors");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        panic!("mkfifo is needed for this test");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let checkpoint = reflow::StateDict::read_safetensors(&path).map(|_| ());
        let images = reflow::io::IdxImages::read(&path).map(|_| ());
        let _ = tx.send((checkpoint, images));
    });
    let (checkpoint, images) = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("refused at once, not blocked on the FIFO");
    for err in [checkpoint.unwrap_err(), images.unwrap_err()] {
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
    let err = reflow::StateDict::read_safetensors(dir.path()).unwrap_err();
    assert!(err.to_string().contains("directory"), "{err}");
}

#[test]
fn a_gzip_stream_is_inflated_no_further_than_its_header_declares() {
    // Once: the whole stream was inflated before the header was looked at (a gzip
    // bomb took 1.1 GB). The stream below declares 2 images of 4×4 pixels and goes
    // on; its tail is corrupt, so inflating past the declared size would fail on it
    // instead of reporting the size.
    use std::io::Write;
    let mut idx = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 4];
    idx.extend(std::iter::repeat_n(7u8, 32 + 100_000));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&idx).unwrap();
    let mut bytes = gz.finish().unwrap();
    let n = bytes.len();
    bytes[n - 8..].fill(0xff); // the trailer's checksum and length
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("images.gz");
    std::fs::write(&path, &bytes).unwrap();
    let err = reflow::io::IdxImages::read(&path).unwrap_err().to_string();
    assert!(
        err.contains("need 32 data bytes") && !err.contains("gzip"),
        "{err}"
    );
    // The same stream cut to its declared size reads.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&idx[..16 + 32]).unwrap();
    std::fs::write(&path, gz.finish().unwrap()).unwrap();
    assert_eq!(reflow::io::IdxImages::read(&path).unwrap().len(), 2);
}

#[test]
fn a_pipeline_that_fails_after_recalibrating_leaves_the_model_as_it_was() {
    // The running statistics REFLOW changed are restored too, not only the weights.
    use reflow::pipeline::{Pipeline, Stage};
    use reflow::prune::MagnitudePruner;
    let mut net = net();
    let before = reflow::StateDict::from_layer(&net);
    let data = vec![Array4::from_shape_fn((4, 3, 16, 16), |(n, c, h, w)| {
        ((n + c + h * w) % 5) as f32 / 5.0
    })];
    let err = Pipeline::new(MagnitudePruner::new(0.5), Reflow::cumulative())
        .run_inspecting(&mut net, &data, |stage, _| match stage {
            Stage::Rescaled => Err(reflow::Error::Data("stop after REFLOW".into())),
            _ => Ok(()),
        })
        .unwrap_err();
    assert!(err.to_string().contains("stop after REFLOW"), "{err}");
    let after = reflow::StateDict::from_layer(&net);
    for (key, t) in before.iter() {
        assert_eq!(after.get(key), Some(t), "{key} changed");
    }
}

/// Issue 26: sizes are checked before they are trusted, in the library API too.
#[test]
fn sizes_given_to_the_api_are_checked_before_anything_is_allocated() {
    use reflow::io::{EvalTransform, Pixels};
    let p = Pixels::new([1, 2, 2], vec![1, 2, 3, 4]).unwrap();
    let e = p.center_crop(100_000, 100_000).unwrap_err().to_string();
    assert!(e.contains("crop") && e.contains("100000x100000"), "{e}");
    assert!(p.center_crop(0, 3).is_err());
    assert!(p.resize(100_000, 100_000).is_err());
    let crop = EvalTransform {
        resize: None,
        crop: Some(100_000),
    };
    assert!(crop.validate().unwrap_err().to_string().contains("crop"));
    // A 1 × 100,000 image resized by its short side to 2,000 would be 2,000 × 2 × 10⁸.
    let resize = EvalTransform {
        resize: Some(2_000),
        crop: Some(8),
    };
    let e = resize.output_dims(1, 100_000).unwrap_err().to_string();
    assert!(e.contains("resized image"), "{e}");
    assert_eq!(resize.output_dims(300, 400).unwrap(), [8, 8]);
}

#[test]
fn a_mask_from_an_endless_iterator_stops_at_the_tensor() {
    use reflow::prune::TensorMask;
    let e = TensorMask::from_pruned(&[2, 3], std::iter::repeat(true)).unwrap_err();
    assert!(e.to_string().contains("more flags"), "{e}");
    assert!(TensorMask::from_pruned(&[2, 3], [true; 6]).is_ok());
}

#[test]
fn pruners_that_would_prune_nothing_are_errors() {
    use reflow::prelude::*;
    let net = net();
    let e = NmPruner::new(1, usize::MAX)
        .unwrap()
        .masks(&net)
        .unwrap_err();
    assert!(e.to_string().contains("prunes nothing"), "{e}");
    let everything = ["conv1", "layer1", "layer2", "layer3", "fc"];
    let magnitude = everything
        .iter()
        .fold(MagnitudePruner::new(0.5), |p, e| p.exclude(*e));
    let e = magnitude.masks(&net).unwrap_err();
    assert!(e.to_string().contains("nothing is left to prune"), "{e}");
    let state = reflow::StateDict::from_layer(&net);
    let channel = everything
        .iter()
        .fold(ChannelPruner::new(0.5).unwrap(), |p, e| p.exclude(*e));
    let e = channel.select(&state, &net.channel_scope()).unwrap_err();
    assert!(e.to_string().contains("nothing is left to prune"), "{e}");
}

#[test]
fn batches_tracked_saturate() {
    let mut net = net();
    net.visit_norms_mut(&mut |_, s| *s.num_batches_tracked = i64::MAX);
    let x = Array4::from_shape_fn((2, 3, 8, 8), |(n, c, h, w)| (n + c + h * w) as f32);
    net.forward_train(
        &x,
        &mut Probe::none().with_update(NormUpdate::Ema { momentum: 0.1 }),
    )
    .unwrap();
    net.visit_norms(&mut |_, s| assert_eq!(s.num_batches_tracked, i64::MAX));
}

#[test]
fn a_key_twice_in_a_safetensors_header_is_named() {
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend([0; 4]);
    let e = reflow::StateDict::from_safetensors_bytes(&bytes).unwrap_err();
    assert!(e.to_string().contains("names tensor \"a\" twice"), "{e}");
}

/// A squeeze-excitation `fc1.weight` one row wider than its bias and `fc2.weight`
/// is named itself, not the tensors that follow it; a torchvision preset is checked
/// against the shapes.
#[test]
fn the_tensor_that_disagrees_is_the_one_named() {
    use reflow::models::{Arch, Model};
    for (fixture, key) in [
        (
            "efficientnet_small.safetensors",
            "features.1.0.block.1.fc1.weight",
        ),
        (
            "regnet_y_small.safetensors",
            "trunk_output.block1.block1-0.f.se.fc1.weight",
        ),
    ] {
        let state = common::read(fixture);
        let mut shape = state
            .get(key)
            .unwrap_or_else(|| panic!("{fixture}: {key}"))
            .shape
            .clone();
        shape[0] += 1;
        let state = with_tensor(state, key, shape);
        let e = Model::from_state_dict(&state, Arch::AUTO, Stem::Imagenet)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(key) && e.contains("fc1.bias"), "{fixture}: {e}");
    }
    let small = common::read("efficientnet_small.safetensors");
    let e = Model::from_state_dict(&small, "efficientnet_b7".parse().unwrap(), Stem::Imagenet)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not efficientnet_b7's"), "{e}");
}

/// The frequent kinds of bad argument are variants a caller can match on, with the
/// parameter named in a field, and their messages unchanged.
#[test]
fn errors_are_typed_by_kind() {
    use reflow::io::SaveFormat;
    use reflow::nn::SparsePolicy;
    use reflow::prune::{MagnitudePruner, Pruner, Scope};
    use reflow::Error;
    let mut model = net();
    match MagnitudePruner::new(1.2).prune(&mut model).unwrap_err() {
        Error::OutOfRange {
            name,
            value,
            allowed,
        } => assert_eq!(
            (name.as_str(), value.as_str(), allowed.as_str()),
            ("sparsity", "1.2", "[0, 1)")
        ),
        other => panic!("{other}"),
    }
    let e = Reflow::ema(0.0).rescale(&mut model, &Vec::<Array4<f32>>::new());
    assert!(
        matches!(&e, Err(Error::OutOfRange { name, .. }) if name == "momentum"),
        "{e:?}"
    );
    let empty = Reflow::cumulative().rescale(&mut model, &Vec::<Array4<f32>>::new());
    assert!(
        matches!(&empty, Err(Error::EmptyData { name, .. }) if name == "calibration data"),
        "{empty:?}"
    );
    for (e, which) in [
        ("lyer".parse::<Scope>().unwrap_err(), "scope"),
        ("cifar10".parse::<Stem>().unwrap_err(), "stem"),
        ("zip".parse::<SaveFormat>().unwrap_err(), "save format"),
        (
            "sometimes".parse::<SparsePolicy>().unwrap_err(),
            "sparse policy",
        ),
        ("gelu".parse::<Activation>().unwrap_err(), "activation"),
    ] {
        match &e {
            Error::UnknownName { name, given, .. } => {
                assert_eq!(name, which);
                assert!(
                    e.to_string().contains(&format!("\"{given}\" (expected ")),
                    "{e}"
                );
            }
            other => panic!("{which}: {other}"),
        }
    }
    assert_eq!(
        "zip".parse::<SaveFormat>().unwrap_err().to_string(),
        "invalid save format: \"zip\" (expected \"dense\" or \"compressed\")"
    );
}
