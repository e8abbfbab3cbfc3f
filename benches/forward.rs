//! Forward-pass benchmarks of the ndarray backend: single convolutions (including
//! ResNet-50's shapes at batch 8), each kernel of the blocked engine on blocks, a whole
//! CIFAR ResNet-20 at batch 256, and a whole ResNet-50 and MobileNetV2 at batch 8. Run
//! with `cargo bench --bench forward`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::Array4;
use reflow::layer::Layer;
use reflow::models::{MobileNetV2, MobileNetV2Config, ResNet, ResNetConfig};
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

/// The blocked engine's kernels on inputs already in blocks (batch 8): the 1×1, the
/// depthwise, the direct (stride 2, and groups of whole blocks) and Winograd's.
fn blocked_kernels(c: &mut Criterion) {
    use reflow::nn::layout_candidates::{blocked_len, to_blocked, BlockedConv};
    let mut group = c.benchmark_group("blocked b8");
    group.sample_size(10);
    let shapes = [
        ("1x1 96-576 @14", Conv2dConfig::new(96, 576, 1), 14),
        (
            "depthwise 3x3 144 @56",
            Conv2dConfig::new(144, 144, 3).padding(1).groups(144),
            56,
        ),
        (
            "direct 3x3/2 64-128 @56",
            Conv2dConfig::new(64, 128, 3).stride(2).padding(1),
            56,
        ),
        (
            "direct grouped-16 3x3 224 @14",
            Conv2dConfig::new(224, 224, 3).padding(1).groups(14),
            14,
        ),
        (
            "winograd 3x3 256-256 @14",
            Conv2dConfig::new(256, 256, 3).padding(1),
            14,
        ),
    ];
    for (name, cfg, hw) in shapes {
        let weight = input((
            cfg.out_channels,
            cfg.in_channels / cfg.groups,
            cfg.kernel[0],
            cfg.kernel[1],
        ));
        let (ones, zeros) = (vec![1.0; cfg.out_channels], vec![0.0; cfg.out_channels]);
        let conv = BlockedConv::new(cfg, weight.as_slice().unwrap(), &ones, &zeros, true).unwrap();
        let x = input((8, cfg.in_channels, hw, hw));
        let mut xb = vec![0.0; blocked_len(8, cfg.in_channels, hw, hw)];
        to_blocked(x.as_slice().unwrap(), [8, cfg.in_channels, hw, hw], &mut xb).unwrap();
        let (ho, wo) = conv.output_size(hw, hw).unwrap();
        let mut y = vec![0.0; blocked_len(8, cfg.out_channels, ho, wo)];
        let taps = cfg.in_channels / cfg.groups * cfg.kernel[0] * cfg.kernel[1];
        let flops = 2 * 8 * cfg.out_channels * taps * ho * wo;
        group.throughput(Throughput::Elements(flops as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                conv.run(&xb, [8, hw, hw], &mut y, rayon::current_num_threads())
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn mobilenet_v2(c: &mut Criterion) {
    let net = MobileNetV2::new(MobileNetV2Config::mobilenet_v2()).unwrap();
    let x = input((8, 3, 224, 224));
    let mut group = c.benchmark_group("mobilenet_v2");
    group.throughput(Throughput::Elements(8));
    group.sample_size(10);
    group.bench_function("forward-b8-224x224", |b| {
        b.iter(|| net.forward(&x).unwrap())
    });
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

criterion_group!(
    benches,
    conv,
    resnet50_convs,
    blocked_kernels,
    resnet20,
    resnet50,
    mobilenet_v2
);
criterion_main!(benches);
