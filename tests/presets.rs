//! Every preset builds, and its parameter count equals torchvision's.

use reflow::layer::{count_parameters, Layer};
use reflow::models::{Architecture, ResNet, ResNetConfig, Stem};
use reflow::StateDict;

type Preset = fn() -> ResNetConfig;

/// torchvision's `sum(p.numel() for p in model.parameters())`.
const TORCHVISION: [(&str, Preset, usize); 10] = [
    ("resnet18", ResNetConfig::resnet18, 11_689_512),
    ("resnet34", ResNetConfig::resnet34, 21_797_672),
    ("resnet50", ResNetConfig::resnet50, 25_557_032),
    ("resnet101", ResNetConfig::resnet101, 44_549_160),
    ("resnet152", ResNetConfig::resnet152, 60_192_808),
    ("resnext50_32x4d", ResNetConfig::resnext50_32x4d, 25_028_904),
    (
        "resnext101_32x8d",
        ResNetConfig::resnext101_32x8d,
        88_791_336,
    ),
    (
        "resnext101_64x4d",
        ResNetConfig::resnext101_64x4d,
        83_455_272,
    ),
    ("wide_resnet50_2", ResNetConfig::wide_resnet50_2, 68_883_240),
    (
        "wide_resnet101_2",
        ResNetConfig::wide_resnet101_2,
        126_886_696,
    ),
];

#[test]
fn imagenet_presets_have_torchvisions_parameter_counts() {
    for (name, preset, want) in TORCHVISION {
        let cfg = preset();
        assert_eq!(cfg.num_parameters(), want, "{name}: from the config");
        let net = ResNet::new(cfg.clone()).unwrap();
        assert_eq!(count_parameters(&net), want, "{name}: from the built model");
        // The built model's keys describe the same configuration.
        let inferred = ResNetConfig::infer(&StateDict::from_layer(&net)).unwrap();
        assert_eq!(inferred, cfg, "{name}: inferred back");
    }
}

#[test]
fn cifar_presets_follow_the_6n_plus_2_rule() {
    // Basic blocks, widths 16/32/64, 1x1-conv shortcuts (torchvision layout), 3 → 10.
    for (depth, want) in [
        (20, 272_474),
        (32, 466_906),
        (44, 661_338),
        (56, 855_770),
        (110, 1_730_714),
    ] {
        let cfg = ResNetConfig::cifar_resnet(depth).unwrap();
        assert_eq!(cfg.layers, vec![(depth - 2) / 6; 3]);
        let net = ResNet::new(cfg.clone()).unwrap();
        assert_eq!(count_parameters(&net), want, "resnet{depth}");
        assert_eq!(cfg.num_parameters(), want, "resnet{depth}");
    }
    assert!(ResNetConfig::cifar_resnet(21).is_err());
    assert!(ResNetConfig::cifar_resnet(2).is_err());
}

#[test]
fn forward_shapes_follow_the_stem() {
    let x = ndarray::Array4::zeros((1, 3, 64, 64));
    let net = ResNet::new(ResNetConfig::resnext50_32x4d().with_num_classes(5)).unwrap();
    assert_eq!(net.forward(&x).unwrap().dim(), (1, 5));
    let net = ResNet::new(
        ResNetConfig::cifar_resnet(20)
            .unwrap()
            .with_stem(Stem::Cifar),
    )
    .unwrap();
    assert_eq!(net.forward(&x).unwrap().dim(), (1, 10));
}

#[test]
fn free_shapes_build() {
    // Two stages, odd widths, grayscale input, a narrow stem.
    let cfg = ResNetConfig {
        layers: vec![1, 3],
        planes: vec![6, 10],
        stem_width: 5,
        in_channels: 1,
        num_classes: 3,
        ..ResNetConfig::cifar_resnet(20).unwrap()
    };
    let net = ResNet::new(cfg.clone()).unwrap();
    assert_eq!(count_parameters(&net), cfg.num_parameters());
    let y = net.forward(&ndarray::Array4::zeros((2, 1, 9, 9))).unwrap();
    assert_eq!(y.dim(), (2, 3));
    let back = ResNetConfig::infer(&StateDict::from_layer(&net)).unwrap();
    assert_eq!(back, cfg);
}

#[test]
fn invalid_configurations_are_rejected() {
    let bad = [
        ResNetConfig::resnet18().with_groups(2, 64),
        ResNetConfig::resnet50().with_num_classes(0),
        ResNetConfig {
            layers: vec![2, 0],
            planes: vec![8, 16],
            ..ResNetConfig::resnet18()
        },
        ResNetConfig {
            layers: vec![2, 2],
            planes: vec![8],
            ..ResNetConfig::resnet18()
        },
    ];
    for cfg in bad {
        let err = ResNet::new(cfg.clone()).unwrap_err();
        assert!(
            matches!(err, reflow::Error::InvalidArgument { .. }),
            "{cfg:?}: {err}"
        );
    }
}
