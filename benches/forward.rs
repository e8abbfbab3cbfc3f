//! Forward-pass benchmarks of the ndarray backend: one convolution and a whole
//! CIFAR ResNet-20. Run with `cargo bench --bench forward`.

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

criterion_group!(benches, conv, resnet20);
criterion_main!(benches);
