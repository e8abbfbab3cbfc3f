//! Forward-pass benchmarks of the ndarray backend: single convolutions (including
//! ResNet-50's shapes at batch 8), a whole CIFAR ResNet-20 at batch 256 and a whole
//! ResNet-50 at batch 8. Run with `cargo bench --bench forward`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::Array4;
use reflow::layer::Layer;
use reflow::models::{ResNet, ResNetConfig};
use reflow::nn::{Conv2d, Conv2dConfig};

fn input(shape: (usize, usize, usize, usize)) -> Array4<f32> {
    let mut i = 0u32;
    Array4::from_shape_simple_fn(shape, || {
        i = i.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (i >> 8) as f32 / (1 << 24) as f32 - 0.5
    })
}

fn conv(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv3x3");
    for (name, cfg, hw) in [
        ("64x56x56", Conv2dConfig::new(64, 64, 3).padding(1), 56),
        ("256x14x14", Conv2dConfig::new(256, 256, 3).padding(1), 14),
        (
            "grouped-32",
            Conv2dConfig::new(256, 256, 3).padding(1).groups(32),
            14,
        ),
    ] {
        let layer = Conv2d::new(cfg).unwrap();
        let x = input((8, cfg.in_channels, hw, hw));
        let flops = 2 * 8 * cfg.out_channels * cfg.in_channels / cfg.groups * 9 * hw * hw;
        group.throughput(Throughput::Elements(flops as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| layer.forward(&x).unwrap())
        });
    }
    group.finish();
}

/// The convolutions of ResNet-50 at batch 8, one of each shape class.
fn resnet50_convs(c: &mut Criterion) {
    let mut group = c.benchmark_group("resnet50 conv b8");
    group.sample_size(10);
    let shapes = [
        (
            "stem 7x7/2 3-64 @224",
            Conv2dConfig::new(3, 64, 7).stride(2).padding(3),
            224,
        ),
        ("1x1 64-64 @56", Conv2dConfig::new(64, 64, 1), 56),
        ("3x3 64-64 @56", Conv2dConfig::new(64, 64, 3).padding(1), 56),
        ("1x1 64-256 @56", Conv2dConfig::new(64, 256, 1), 56),
        (
            "3x3 128-128 @28",
            Conv2dConfig::new(128, 128, 3).padding(1),
            28,
        ),
        (
            "3x3 256-256 @14",
            Conv2dConfig::new(256, 256, 3).padding(1),
            14,
        ),
        (
            "3x3 512-512 @7",
            Conv2dConfig::new(512, 512, 3).padding(1),
            7,
        ),
        (
            "1x1/2 1024-2048 @14",
            Conv2dConfig::new(1024, 2048, 1).stride(2),
            14,
        ),
    ];
    for (name, cfg, hw) in shapes {
        let layer = Conv2d::new(cfg).unwrap();
        let x = input((8, cfg.in_channels, hw, hw));
        let (ho, wo) = layer.output_size(hw, hw).unwrap();
        let flops =
            2 * 8 * cfg.out_channels * cfg.in_channels * cfg.kernel[0] * cfg.kernel[1] * ho * wo;
        group.throughput(Throughput::Elements(flops as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| layer.forward(&x).unwrap())
        });
    }
    group.finish();
}

fn resnet50(c: &mut Criterion) {
    let net = ResNet::new(ResNetConfig::resnet50()).unwrap();
    let x = input((8, 3, 224, 224));
    let mut group = c.benchmark_group("resnet50");
    group.throughput(Throughput::Elements(8));
    group.sample_size(10);
    group.bench_function("forward-b8-224x224", |b| {
        b.iter(|| net.forward(&x).unwrap())
    });
    group.finish();
}

fn resnet20(c: &mut Criterion) {
    let net = ResNet::new(ResNetConfig::cifar_resnet(20).unwrap().with_in_channels(1)).unwrap();
    let x = input((256, 1, 28, 28));
    let mut group = c.benchmark_group("resnet20");
    group.throughput(Throughput::Elements(256));
    group.sample_size(10);
    group.bench_function("forward-b256-28x28", |b| {
        b.iter(|| net.forward(&x).unwrap())
    });
    group.finish();
}

criterion_group!(benches, conv, resnet50_convs, resnet20, resnet50);
criterion_main!(benches);
