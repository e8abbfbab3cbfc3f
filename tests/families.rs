//! The model families beyond ResNet: presets with torchvision's parameter counts,
//! architecture inference from keys, errors that name the family and the key.

use reflow::layer::{count_parameters, Params};
use reflow::models::{Architecture, RegNet, RegNetConfig, Vgg, VggConfig};
use reflow::StateDict;

#[test]
fn vgg_presets_have_torchvision_parameter_counts() {
    // torchvision 0.29: sum(p.numel() for p in vgg*_bn().parameters()).
    for (cfg, n) in [
        (VggConfig::vgg11_bn(), 132_868_840),
        (VggConfig::vgg13_bn(), 133_053_736),
        (VggConfig::vgg16_bn(), 138_365_992),
        (VggConfig::vgg19_bn(), 143_678_248),
    ] {
        assert_eq!(cfg.num_parameters(), n);
        let net = Vgg::new(cfg.clone()).unwrap();
        assert_eq!(count_parameters(&net), n);
        assert_eq!(VggConfig::infer(&StateDict::from_layer(&net)).unwrap(), cfg);
    }
}

#[test]
fn regnet_presets_have_torchvision_parameter_counts() {
    // torchvision 0.29: sum(p.numel() for p in regnet_*().parameters()).
    let counts = [
        ("regnet_x_400mf", 5_495_976),
        ("regnet_x_800mf", 7_259_656),
        ("regnet_x_1_6gf", 9_190_136),
        ("regnet_x_3_2gf", 15_296_552),
        ("regnet_x_8gf", 39_572_648),
        ("regnet_x_16gf", 54_278_536),
        ("regnet_x_32gf", 107_811_560),
        ("regnet_y_400mf", 4_344_144),
        ("regnet_y_800mf", 6_432_512),
        ("regnet_y_1_6gf", 11_202_430),
        ("regnet_y_3_2gf", 19_436_338),
        ("regnet_y_8gf", 39_381_472),
        ("regnet_y_16gf", 83_590_140),
        ("regnet_y_32gf", 145_046_770),
        ("regnet_y_128gf", 644_812_894),
    ];
    assert_eq!(RegNetConfig::preset_names().count(), counts.len());
    for (name, n) in counts {
        let cfg = RegNetConfig::preset(name).unwrap();
        assert_eq!(cfg.num_parameters(), n, "{name}");
        if n < 200_000_000 {
            let net = RegNet::new(cfg.clone()).unwrap();
            assert_eq!(count_parameters(&net), n, "{name}");
            let state = StateDict::from_layer(&net);
            assert_eq!(RegNetConfig::infer(&state).unwrap(), cfg, "{name}");
        }
    }
}

#[test]
fn shufflenet_v2_presets_have_torchvision_parameter_counts() {
    use reflow::models::{Model, ShuffleNetV2, ShuffleNetV2Config, Stem};
    // torchvision 0.29: sum(p.numel() for p in shufflenet_v2_*().parameters()).
    for (name, n) in [
        ("shufflenet_v2_x0_5", 1_366_792),
        ("shufflenet_v2_x1_0", 2_278_604),
        ("shufflenet_v2_x1_5", 3_503_624),
        ("shufflenet_v2_x2_0", 7_393_996),
    ] {
        let cfg = ShuffleNetV2Config::preset(name).unwrap();
        assert_eq!(cfg.num_parameters(), n, "{name}");
        let state = StateDict::from_layer(&ShuffleNetV2::new(cfg.clone()).unwrap());
        let net = Model::from_state_dict(&state, arch(name), Stem::Imagenet).unwrap();
        assert_eq!(count_parameters(&net), n, "{name}");
        assert_eq!(net.arch().to_string(), name);
        assert_eq!(ShuffleNetV2Config::infer(&state).unwrap(), cfg, "{name}");
    }
}

#[test]
fn regnet_keys_are_torchvisions() {
    let net = RegNet::new(RegNetConfig::regnet_y_400mf()).unwrap();
    let mut names = Vec::new();
    net.visit_params(&mut |p| names.push(p.name.to_string()));
    for key in [
        "stem.0.weight",
        "stem.1.running_var",
        "trunk_output.block1.block1-0.proj.0.weight",
        "trunk_output.block1.block1-0.proj.1.bias",
        "trunk_output.block1.block1-0.f.a.0.weight",
        "trunk_output.block2.block2-2.f.b.1.weight",
        "trunk_output.block4.block4-5.f.se.fc1.weight",
        "trunk_output.block4.block4-5.f.se.fc2.bias",
        "trunk_output.block4.block4-5.f.c.1.running_mean",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(names.iter().any(|n| n == key), "{key} missing");
    }
    let vgg = Vgg::new(VggConfig::vgg11_bn()).unwrap();
    let mut names = Vec::new();
    vgg.visit_params(&mut |p| names.push(p.name.to_string()));
    for key in [
        "features.0.bias",
        "features.1.running_mean",
        "features.4.weight",
        "features.26.bias",
        "classifier.0.weight",
        "classifier.3.bias",
        "classifier.6.weight",
    ] {
        assert!(names.iter().any(|n| n == key), "{key} missing");
    }
}

#[test]
fn mobile_presets_have_torchvision_parameter_counts() {
    use reflow::models::{EfficientNet, EfficientNetConfig, MobileNetV2, MobileNetV2Config};
    use reflow::models::{MobileNetV3, MobileNetV3Config};
    let v2 = MobileNetV2Config::mobilenet_v2();
    assert_eq!(v2.num_parameters(), 3_504_872);
    let net = MobileNetV2::new(v2.clone()).unwrap();
    assert_eq!(count_parameters(&net), 3_504_872);
    assert_eq!(
        MobileNetV2Config::infer(&StateDict::from_layer(&net)).unwrap(),
        v2
    );
    for (cfg, n) in [
        (MobileNetV3Config::mobilenet_v3_small(), 2_542_856),
        (MobileNetV3Config::mobilenet_v3_large(), 5_483_032),
    ] {
        assert_eq!(cfg.num_parameters(), n);
        let net = MobileNetV3::new(cfg.clone()).unwrap();
        assert_eq!(count_parameters(&net), n);
        assert_eq!(
            MobileNetV3Config::infer(&StateDict::from_layer(&net)).unwrap(),
            cfg
        );
    }
    // torchvision 0.29: efficientnet_b0 … b7.
    let counts = [
        5_288_548, 7_794_184, 9_109_994, 12_233_232, 19_341_616, 30_389_784, 43_040_704, 66_347_960,
    ];
    for (b, n) in counts.into_iter().enumerate() {
        let cfg = EfficientNetConfig::b(b).unwrap();
        assert_eq!(cfg.num_parameters(), n, "b{b}");
        assert_eq!(cfg.bn_eps, if b >= 5 { 1e-3 } else { 1e-5 }, "b{b}");
        let net = EfficientNet::new(cfg.clone()).unwrap();
        assert_eq!(count_parameters(&net), n, "b{b}");
        let inferred = EfficientNetConfig::infer(&StateDict::from_layer(&net)).unwrap();
        assert_eq!(inferred, cfg, "b{b}");
        assert_eq!(inferred.variant(), Some(b));
    }
}

#[test]
fn a_state_dict_that_fits_no_family_names_the_first_key_that_does_not_fit() {
    use reflow::models::{Arch, Model, Stem};
    use reflow::state_dict::StoredTensor;
    let err = |state: &StateDict, arch: Arch| {
        Model::from_state_dict(state, arch, Stem::Imagenet)
            .unwrap_err()
            .to_string()
    };
    let mut foreign = StateDict::new();
    foreign.insert(
        "backbone.conv.weight",
        StoredTensor::f32(vec![2, 1, 3, 3], vec![0.0; 18]).unwrap(),
    );
    let e = err(&foreign, Arch::AUTO);
    assert!(
        e.contains("\"backbone.conv.weight\": fits no supported family"),
        "{e}"
    );

    // A RegNet whose second stage lost its projection: the key is named.
    let net = RegNet::new(RegNetConfig::regnet_x_400mf().with_num_classes(3)).unwrap();
    let mut state = StateDict::from_layer(&net);
    state.remove("trunk_output.block2.block2-0.proj.0.weight");
    let e = err(&state, Arch::AUTO);
    assert!(
        e.contains("not a RegNet state dict") && e.contains("block2-0.proj.0.weight"),
        "{e}"
    );

    // A VGG whose classifier does not take the features' output.
    let cfg = VggConfig::from_widths(&[8, 0, 16, 0]).with_hidden(16);
    let mut state = StateDict::from_layer(&Vgg::new(cfg).unwrap());
    state.insert(
        "classifier.0.weight",
        StoredTensor::f32(vec![16, 50], vec![0.0; 800]).unwrap(),
    );
    let e = err(&state, Arch::AUTO);
    assert!(
        e.contains("not a VGG state dict: key \"classifier.0.weight\""),
        "{e}"
    );
    // Named as another family: that family's error.
    let e = err(&state, arch("regnet"));
    assert!(
        e.contains("not a RegNet state dict: key \"stem.0.weight\": missing"),
        "{e}"
    );
    // A preset checked against the keys.
    let e = err(
        &StateDict::from_layer(&Vgg::new(VggConfig::vgg11_bn()).unwrap()),
        arch("vgg16_bn"),
    );
    assert!(e.contains("not vgg16_bn's"), "{e}");
}

#[test]
fn every_family_is_detected_from_its_keys() {
    use reflow::models::{Arch, EfficientNet, EfficientNetConfig, MobileNetV2, MobileNetV2Config};
    use reflow::models::{MobileNetV3, MobileNetV3Config, Model, ResNet};
    use reflow::models::{ResNetConfig, ShuffleNetV2, ShuffleNetV2Config, Stem};
    let cases: Vec<(StateDict, Arch)> = vec![
        (
            StateDict::from_layer(&ResNet::new(ResNetConfig::cifar_resnet(20).unwrap()).unwrap()),
            arch("resnet"),
        ),
        (
            StateDict::from_layer(&RegNet::new(RegNetConfig::regnet_y_400mf()).unwrap()),
            arch("regnet"),
        ),
        (
            StateDict::from_layer(&MobileNetV2::new(MobileNetV2Config::with_width(0.5)).unwrap()),
            arch("mobilenet_v2"),
        ),
        (
            StateDict::from_layer(
                &MobileNetV3::new(MobileNetV3Config::mobilenet_v3_large()).unwrap(),
            ),
            arch("mobilenet_v3_large"),
        ),
        (
            StateDict::from_layer(&EfficientNet::new(EfficientNetConfig::b(6).unwrap()).unwrap()),
            arch("efficientnet_b6"),
        ),
        (
            StateDict::from_layer(&Vgg::new(VggConfig::vgg13_bn().with_num_classes(4)).unwrap()),
            arch("vgg13_bn"),
        ),
        (
            StateDict::from_layer(
                &ShuffleNetV2::new(ShuffleNetV2Config::preset("shufflenet_v2_x0_5").unwrap())
                    .unwrap(),
            ),
            arch("shufflenet_v2_x0_5"),
        ),
    ];
    for (state, arch) in cases {
        let net = Model::from_state_dict(&state, Arch::AUTO, Stem::Cifar).unwrap();
        assert_eq!(net.arch(), arch);
        assert_eq!(count_parameters(&net), trainable(&state));
    }
}

/// The trainable values of a state dict, as PyTorch counts them.
fn trainable(state: &StateDict) -> usize {
    let buffer = |k: &str| {
        ["running_mean", "running_var", "num_batches_tracked"]
            .iter()
            .any(|b| k.ends_with(b))
    };
    state
        .iter()
        .filter(|(k, _)| !buffer(k))
        .map(|(_, t)| t.numel())
        .sum()
}

/// The architecture of a name `--arch` takes.
fn arch(name: &str) -> reflow::models::Arch {
    name.parse().unwrap()
}
