//! Whole networks against PyTorch/torchvision: logits and every batch-norm output, by
//! name, for the fixtures made by `scripts/make_fixtures.py`.

mod common;

use common::{array, read, relative_error, BnOutputs, PARITY};
use ndarray::Ix4;
use reflow::layer::{Layer, Probe, Schedule};
use reflow::models::{BlockKind, EfficientNet, MobileNetV2, MobileNetV2Config, MobileNetV3};
use reflow::models::{MobileNetV3Config, MobileNetV3Variant, RegNet, ResNet, ResNetConfig, Stem};
use reflow::models::{ShuffleNetV2, Vgg, VggLayer};
use reflow::nn::{Tensor2, Tensor4};
use reflow::StateDict;

/// How far the blocked engine's logits may be from the NCHW engine's: both sum the
/// same products in different orders.
const ENGINES: f64 = 1e-5;

/// Loads `<name>.safetensors` with `load`, runs `<name>.io.safetensors`'s input, and
/// compares the logits and every `bn/<layer>` output.
fn check_with<N>(name: &str, load: impl Fn(&StateDict) -> reflow::Result<N>) -> N
where
    N: Layer<Input = Tensor4, Output = Tensor2>,
{
    let net = load(&read(&format!("{name}.safetensors"))).unwrap();
    let io = read(&format!("{name}.io.safetensors"));
    let input = array(&io, "input").into_dimensionality::<Ix4>().unwrap();

    let mut bn = BnOutputs::default();
    let logits = net.forward_with(&input, &mut Probe::new(&mut bn)).unwrap();
    let want = array(&io, "logits");
    assert_eq!(logits.shape(), want.shape());
    let err = relative_error(logits.as_slice().unwrap(), want.as_slice().unwrap());
    assert!(err <= PARITY, "{name} logits: relative error {err:e}");
    eprintln!("{name} logits: {err:.2e}");

    let expected: Vec<String> = io
        .keys()
        .filter_map(|k| k.strip_prefix("bn/").map(str::to_string))
        .collect();
    let seen: Vec<String> = bn.0.keys().cloned().collect();
    assert_eq!(seen, expected, "{name}: the set of batch-norm layers");
    for (layer, (_, got)) in &bn.0 {
        let want = array(&io, &format!("bn/{layer}"));
        let err = relative_error(got, want.as_slice().unwrap());
        assert!(err <= PARITY, "{name} {layer}: relative error {err:e}");
    }
    // The plain pass runs on the blocked engine, the observed one on NCHW tensors:
    // both match PyTorch, and each other to rounding.
    let plain = net.forward(&input).unwrap();
    let err = relative_error(plain.as_slice().unwrap(), want.as_slice().unwrap());
    assert!(
        err <= PARITY,
        "{name} logits, blocked: relative error {err:e}"
    );
    let engines = relative_error(plain.as_slice().unwrap(), logits.as_slice().unwrap());
    eprintln!("{name} logits, blocked: {err:.2e}; against the NCHW engine {engines:.2e}");
    assert!(
        engines <= ENGINES,
        "{name}: blocked against NCHW: {engines:e}"
    );
    // A large unobserved batch runs in micro-batches: copies of the inputs get the
    // same logits, wherever they fall.
    let copies = 20;
    let views = vec![input.view(); copies];
    let batch = ndarray::concatenate(ndarray::Axis(0), &views).unwrap();
    let tiled = net.forward(&batch).unwrap();
    for (k, part) in tiled
        .axis_chunks_iter(ndarray::Axis(0), input.dim().0)
        .enumerate()
    {
        let err = relative_error(part.as_slice().unwrap(), want.as_slice().unwrap());
        assert!(
            err <= PARITY,
            "{name} copy {k} of {copies}: relative error {err:e}"
        );
    }
    // Distinct images come back in their order, as from one pass over the batch (the
    // layer-by-layer schedule makes every layer see the whole batch).
    let mut batch = batch;
    for (k, mut image) in batch.outer_iter_mut().enumerate() {
        image.mapv_inplace(|v| v * (1.0 + 0.01 * k as f32));
    }
    let whole = net
        .forward_with(
            &batch,
            &mut Probe::none().with_schedule(Schedule::LayerByLayer),
        )
        .unwrap();
    let micro = net.forward(&batch).unwrap();
    let err = relative_error(micro.as_slice().unwrap(), whole.as_slice().unwrap());
    assert!(
        err <= ENGINES,
        "{name}: micro-batches against one pass: {err:e}"
    );
    net
}

/// [`check_with`] for a ResNet checkpoint.
fn check(name: &str, stem: Stem) -> ResNetConfig {
    let net = check_with(name, ResNet::from_state_dict);
    assert_eq!(
        net.config().stem,
        stem,
        "{name}: the stem read off the kernel"
    );
    net.config().clone()
}

#[test]
fn cifar_resnet20_matches_pytorch() {
    common::at_every_level(|_| {
        let cfg = check("resnet20_cifar", Stem::Cifar);
        assert_eq!(cfg, ResNetConfig::cifar_resnet(20).unwrap());
    });
}

#[test]
fn grouped_bottleneck_resnext_matches_pytorch() {
    common::at_every_level(|_| {
        let cfg = check("resnext_small", Stem::Imagenet);
        assert_eq!(cfg.block, BlockKind::Bottleneck);
        assert_eq!(cfg.groups, 4);
        assert_eq!(cfg.layers, [2, 2, 2, 1]);
        assert_eq!(cfg.planes, [16, 32, 64, 128]);
        assert_eq!(
            (cfg.stem_width, cfg.in_channels, cfg.num_classes),
            (16, 3, 7)
        );
    });
}

#[test]
fn vgg_with_batch_norm_matches_pytorch() {
    common::at_every_level(|_| {
        let net = check_with("vgg_small", Vgg::from_state_dict);
        let c = |w| VggLayer::Conv(w);
        let p = VggLayer::Pool;
        assert_eq!(net.config().features, [c(8), p, c(16), p, c(16), c(16), p]);
        assert_eq!((net.config().pool, net.config().hidden), (7, 32));
    });
}

#[test]
fn regnet_x_and_y_match_pytorch() {
    common::at_every_level(|_| {
        let x = check_with("regnet_x_small", RegNet::from_state_dict);
        assert_eq!(x.config().se_ratio, None);
        let y = check_with("regnet_y_small", RegNet::from_state_dict);
        assert_eq!(y.config().se_ratio, Some(0.25));
        let groups: Vec<usize> = y.config().stages.iter().map(|s| s.groups).collect();
        assert_eq!(groups, [2, 4, 6]);
    });
}

#[test]
fn mobilenet_v2_matches_pytorch() {
    common::at_every_level(|_| {
        let net = check_with("mobilenet_v2_small", MobileNetV2::from_state_dict);
        assert_eq!(
            net.config(),
            &MobileNetV2Config::with_width(0.25).with_num_classes(10)
        );
    });
}

#[test]
fn mobilenet_v3_matches_pytorch() {
    common::at_every_level(|_| {
        let net = check_with("mobilenet_v3_small", MobileNetV3::from_state_dict);
        let want = MobileNetV3Config::with_width(MobileNetV3Variant::Small, 0.25);
        assert_eq!(net.config(), &want.with_num_classes(10));
    });
}

#[test]
fn efficientnet_matches_pytorch() {
    common::at_every_level(|_| {
        let net = check_with("efficientnet_small", EfficientNet::from_state_dict);
        let depths: Vec<usize> = net.config().stages.iter().map(Vec::len).collect();
        assert_eq!(depths, [1, 1, 1, 2, 2, 2, 1]);
        assert_eq!(net.config().bn_eps, 1e-5);
    });
}

#[test]
fn shufflenet_v2_matches_pytorch() {
    common::at_every_level(|_| {
        let net = check_with("shufflenet_v2_small", ShuffleNetV2::from_state_dict);
        let cfg = net.config();
        assert_eq!(cfg.stages_repeats, [2, 3, 2]);
        assert_eq!(cfg.stages_out_channels, [8, 16, 32, 64, 96]);
        assert_eq!((cfg.in_channels, cfg.num_classes), (3, 7));
    });
}

/// A fused calibration pass (each batch norm applied where its output is next read:
/// by the depthwise path, the image kernels, a residual add, a squeeze-excitation)
/// updates the running statistics as the layer-by-layer pass does, in every family.
#[test]
fn fused_calibration_equals_layer_by_layer_in_every_family() {
    use reflow::layer::Params;
    use reflow::models::{Arch, Model};
    for name in [
        "resnext_small",
        "vgg_small",
        "regnet_y_small",
        "mobilenet_v2_small",
        "mobilenet_v3_small",
        "efficientnet_small",
        "shufflenet_v2_small",
    ] {
        let state = read(&format!("{name}.safetensors"));
        let load = || Model::from_state_dict(&state, Arch::AUTO, Stem::Imagenet).unwrap();
        let (mut fused, mut layered) = (load(), load());
        let io = read(&format!("{name}.io.safetensors"));
        let x = array(&io, "input").into_dimensionality::<Ix4>().unwrap();
        let by_layer = || Probe::none().with_schedule(Schedule::LayerByLayer);
        for _ in 0..2 {
            fused.forward_train(&x, &mut Probe::none()).unwrap();
            layered.forward_train(&x, &mut by_layer()).unwrap();
        }
        let stats = |m: &Model| {
            let mut all = Vec::new();
            m.visit_norms(&mut |_, s| {
                all.extend_from_slice(s.running_mean);
                all.extend_from_slice(s.running_var);
            });
            all
        };
        let err = relative_error(&stats(&fused), &stats(&layered));
        assert!(err <= 1e-5, "{name}: running statistics differ by {err:e}");
        let (a, b) = (fused.forward(&x).unwrap(), layered.forward(&x).unwrap());
        let err = relative_error(a.as_slice().unwrap(), b.as_slice().unwrap());
        assert!(
            err <= 1e-5,
            "{name}: logits after calibration differ by {err:e}"
        );
    }
}
