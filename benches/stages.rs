//! Benchmarks of the stages: the global magnitude threshold on 88.8 M weights, and a
//! REFLOW calibration batch next to an eval forward of the same batch, both as
//! `forward` runs it (micro-batches) and layer by layer over the whole batch (the
//! schedule calibration must follow: each batch norm needs the whole batch's
//! statistics before the next layer can run). Run with `cargo bench --bench stages`.

use criterion::{criterion_group, criterion_main, Criterion};
use ndarray::Array4;
use reflow::layer::{Layer, Params, Probe, Schedule};
use reflow::models::{ResNet, ResNetConfig};
use reflow::prune::{MagnitudePruner, Pruner};
use reflow::rescale::{Reflow, Rescaler};

/// Deterministic pseudo-random weights in (−0.5, 0.5).
fn fill(net: &mut ResNet) {
    let mut i = 0x2545_f491u32;
    net.visit_params_mut(&mut |p| {
        if p.role.is_prunable() {
            p.data.iter_mut().for_each(|v| {
                i ^= i << 13;
                i ^= i >> 17;
                i ^= i << 5;
                *v = (i >> 8) as f32 / (1 << 24) as f32 - 0.5;
            })
        }
    });
}

fn global_threshold(c: &mut Criterion) {
    let mut net = ResNet::new(ResNetConfig::resnext101_32x8d()).unwrap();
    fill(&mut net);
    let mut group = c.benchmark_group("prune");
    group.sample_size(10);
    group.bench_function("global masks, resnext101_32x8d (88.8M weights)", |b| {
        b.iter(|| MagnitudePruner::new(0.9).masks(&net).unwrap())
    });
    group.finish();
}

fn calibration(c: &mut Criterion) {
    let mut net = ResNet::new(ResNetConfig::cifar_resnet(20).unwrap().with_in_channels(1)).unwrap();
    fill(&mut net);
    let x = Array4::from_shape_fn((128, 1, 28, 28), |(n, _, h, w)| {
        ((n + h * w) % 13) as f32 / 13.0
    });
    let batches = vec![x.clone()];
    let mut group = c.benchmark_group("resnet20 b128");
    group.sample_size(20);
    group.bench_function("eval forward", |b| b.iter(|| net.forward(&x).unwrap()));
    group.bench_function("eval forward, layer by layer", |b| {
        b.iter(|| {
            net.forward_with(&x, &mut Probe::none().with_schedule(Schedule::LayerByLayer))
                .unwrap()
        })
    });
    group.bench_function("REFLOW calibration batch", |b| {
        b.iter(|| Reflow::cumulative().rescale(&mut net, &batches).unwrap())
    });
    group.finish();
}

criterion_group!(benches, global_threshold, calibration);
criterion_main!(benches);
