//! Times reflow's forward pass and prints images/s and GFLOP/s; then a REFLOW
//! calibration batch next to the eval pass of the same batch.
//!
//! `cargo run --release --example bench -- [--threads N] [--runs N] [--model resnet20|resnet50|resnet50 channel|mobilenet_v2|efficientnet_b0|regnet_x_400mf|calibration|reflow_regnet_x_32gf] [--level portable|avx2|avx512|neon] [--batch B] [--tsv] [--profile]`
//!
//! `--batch B` times every case at batch `B` instead of its own (the name says which).
//! `--profile` lists, after each case, every convolution's and linear layer's time per
//! pass and kernel (`reflow::nn::Profile`), and their sum against the pass.
//!
//! `--model reflow_regnet_x_32gf [--calib-count N] [--calib-batch N]` times REFLOW
//! (cumulative) on regnet_x_32gf over synthetic 224 × 224 images (default 1,024 in
//! batches of 64); `scripts/bench_reflow.py` times PyTorch on the same protocol.
//!
//! `--level` caps the kernels (as `REFLOW_KERNEL` does). Before the timings it prints
//! the kernel level in use and the machine's peak on that many threads at that level
//! (at the widest level the processor has when the level is `portable`).
//!
//! `scripts/bench_torch.py` times PyTorch on the same shapes and prints the ratio
//! (from `--tsv`, which prints the level, the peak and the forward passes only).

use ndarray::Array4;
use reflow::cpu::{self, Level};
use reflow::layer::{
    ActivationView, Layer, LayerKind, Observer, Params, Probe, Schedule, Site, Tap,
};
use reflow::models::{EfficientNet, EfficientNetConfig, MobileNetV2, MobileNetV2Config, Model};
use reflow::models::{RegNet, RegNetConfig, ResNet, ResNetConfig};
use reflow::nn::Profile;
use reflow::prune::ChannelPruner;
use reflow::rescale::{Reflow, Rescaler};
use std::collections::HashMap;
use std::time::Instant;

/// Deterministic weights, small enough to keep activations in range.
fn fill(net: &mut dyn Params) {
    let mut i = 0u32;
    net.visit_params_mut(&mut |p| {
        if p.role.is_prunable() {
            p.data.iter_mut().for_each(|v| {
                i = i.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *v = ((i >> 9) as f32 / (1 << 23) as f32 - 0.5) * 0.05;
            })
        }
    });
}

/// A REFLOW calibration batch of ResNet-20 at batch 128 next to the eval pass of the
/// same batch, in micro-batches (as `forward` runs it) and layer by layer (the order
/// calibration must follow), timed in turn `runs` times so that all three see the same
/// machine state; prints the medians and the ratios.
fn calibration(runs: usize) {
    let mut net = ResNet::new(ResNetConfig::cifar_resnet(20).unwrap().with_in_channels(1)).unwrap();
    fill(&mut net);
    let x = Array4::from_shape_fn((128, 1, 28, 28), |(n, _, h, w)| {
        ((n + h * w) % 13) as f32 / 13.0
    });
    let batches = vec![x.clone()];
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    let (mut eval, mut layered, mut calib) = (vec![], vec![], vec![]);
    for _ in 0..runs + 1 {
        eval.push(time(&mut || {
            std::hint::black_box(net.forward(&x).unwrap());
        }));
        layered.push(time(&mut || {
            let mut probe = Probe::none().with_schedule(Schedule::LayerByLayer);
            std::hint::black_box(net.forward_with(&x, &mut probe).unwrap());
        }));
        calib.push(time(&mut || {
            Reflow::cumulative().rescale(&mut net, &batches).unwrap();
        }));
    }
    // The first round warms up.
    let (eval, layered, calib) = (
        median(eval[1..].to_vec()),
        median(layered[1..].to_vec()),
        median(calib[1..].to_vec()),
    );
    println!(
        "resnet20@28 b128: eval {:.1} ms, eval layer by layer {:.1} ms, calibration batch {:.1} ms = {:.2}x layer by layer, {:.2}x eval",
        eval * 1e3,
        layered * 1e3,
        calib * 1e3,
        calib / layered,
        calib / eval
    );
}

/// Records each convolution's output spatial size, to count FLOPs.
#[derive(Default)]
struct ConvShapes(HashMap<String, usize>);

impl Observer for ConvShapes {
    fn wants(&self, tap: &Tap<'_>) -> bool {
        tap.kind == LayerKind::Conv && tap.site == Site::Output
    }
    fn observe(&mut self, tap: &Tap<'_>, act: ActivationView<'_>) {
        self.0.insert(tap.layer.to_string(), act.spatial);
    }
}

/// Multiply-adds ×2 of every convolution and linear layer, per image.
fn flops_per_image(net: &Model, x: &Array4<f32>) -> f64 {
    let mut shapes = ConvShapes::default();
    net.forward_with(x, &mut Probe::new(&mut shapes)).unwrap();
    let mut flops = 0.0;
    net.visit_params(&mut |p| {
        if p.role.is_prunable() {
            let layer = p.name.trim_end_matches(".weight");
            let spatial = shapes.0.get(layer).copied().unwrap_or(1);
            flops += 2.0 * p.data.len() as f64 * spatial as f64;
        }
    });
    flops
}

/// `count` synthetic images of `side × side` in batches of `batch`, made as they are
/// walked (a calibration set of ImageNet's size needs not sit in memory).
struct Synthetic {
    count: usize,
    batch: usize,
    side: usize,
}

impl reflow::rescale::CalibrationData<Array4<f32>> for Synthetic {
    fn num_batches(&self) -> usize {
        self.count.div_ceil(self.batch)
    }

    fn try_for_each_batch(
        &self,
        f: &mut dyn FnMut(&Array4<f32>) -> reflow::Result<()>,
    ) -> reflow::Result<()> {
        for b in 0..self.num_batches() {
            let n = self.batch.min(self.count - b * self.batch);
            let x = Array4::from_shape_fn((n, 3, self.side, self.side), |(i, c, h, w)| {
                (((b * 31 + i * 7 + c * 5 + h * 3 + w) % 23) as f32 - 11.0) / 11.0
            });
            f(&x)?;
        }
        Ok(())
    }
}

/// The wall time of REFLOW (cumulative) on regnet_x_32gf: `count` calibration images
/// at 224 × 224 in batches of `batch` (the protocol: 1,024 and 64).
fn reflow_regnet(count: usize, batch: usize) {
    let mut net = RegNet::new(RegNetConfig::regnet_x_32gf()).unwrap();
    fill(&mut net);
    let data = Synthetic {
        count,
        batch,
        side: 224,
    };
    let t = Instant::now();
    let report = Reflow::cumulative().rescale(&mut net, &data).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "reflow regnet_x_32gf\t{}\t{secs:.2}\t{count} images at 224, batch {batch}, {} batch norms",
        rayon::current_num_threads(),
        report.layers
    );
}

/// ResNet-50 with the fraction `s` of every bottleneck's conv1 and conv2 channels
/// removed (`ChannelPruner`, random weights): the compact network.
fn channel_pruned_resnet50(s: f64) -> Model {
    let mut net = ResNet::new(ResNetConfig::resnet50()).unwrap();
    fill(&mut net);
    let (compact, _) = ChannelPruner::new(s).unwrap().prune(&net).unwrap();
    Model::new(compact)
}

/// Each convolution's and linear layer's time per pass over `runs` passes with a
/// profile attached, its kernel, and their sum against `pass` (the median pass):
/// what is left is everything else (reorders, pooling, element-wise passes).
fn print_profile(net: &Model, x: &Array4<f32>, runs: usize, pass: f64) {
    let profile = Profile::new();
    for _ in 0..runs {
        let mut probe = Probe::none().with_profile(&profile);
        std::hint::black_box(net.forward_with(x, &mut probe).unwrap());
    }
    let layers = profile.layers();
    let per_pass = |s: f64| s / runs as f64 * 1e3;
    for layer in &layers {
        println!(
            "  {:<32} {:<10} {:>8.3} ms  {:>5.1} %",
            layer.name,
            layer.kernel,
            per_pass(layer.seconds),
            per_pass(layer.seconds) / (pass * 1e3) * 100.0
        );
    }
    let sum: f64 = layers.iter().map(|l| per_pass(l.seconds)).sum();
    println!(
        "  convolutions and linear layers {sum:.3} ms of the pass's {:.3} ms ({:.1} %)",
        pass * 1e3,
        sum / (pass * 1e3) * 100.0
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a number"))
    };
    let threads = flag("--threads", 0);
    let runs = flag("--runs", 5);
    if threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .expect("thread pool");
    }
    type Build = fn() -> Model;
    let cases: [(&str, Build, _); 7] = [
        (
            "resnet50@224 b8",
            || Model::new(ResNet::new(ResNetConfig::resnet50()).unwrap()),
            (8, 3, 224, 224),
        ),
        (
            "resnet50 channel 0.3@224 b8",
            || channel_pruned_resnet50(0.3),
            (8, 3, 224, 224),
        ),
        (
            "resnet50 channel 0.5@224 b8",
            || channel_pruned_resnet50(0.5),
            (8, 3, 224, 224),
        ),
        (
            "resnet20@28 b256",
            || {
                let cfg = ResNetConfig::cifar_resnet(20).unwrap().with_in_channels(1);
                Model::new(ResNet::new(cfg).unwrap())
            },
            (256, 1, 28, 28),
        ),
        (
            "mobilenet_v2@224 b8",
            || Model::new(MobileNetV2::new(MobileNetV2Config::mobilenet_v2()).unwrap()),
            (8, 3, 224, 224),
        ),
        (
            "efficientnet_b0@224 b8",
            || Model::new(EfficientNet::new(EfficientNetConfig::b(0).unwrap()).unwrap()),
            (8, 3, 224, 224),
        ),
        (
            "regnet_x_400mf@224 b8",
            || Model::new(RegNet::new(RegNetConfig::regnet_x_400mf()).unwrap()),
            (8, 3, 224, 224),
        ),
    ];
    let only = args
        .iter()
        .position(|a| a == "--model")
        .and_then(|i| args.get(i + 1));
    if let Some(level) = args
        .iter()
        .position(|a| a == "--level")
        .and_then(|i| args.get(i + 1))
    {
        cpu::set_max_level(level.parse().unwrap_or_else(|e| panic!("--level: {e}")));
    }
    if only.is_some_and(|m| m == "reflow_regnet_x_32gf") {
        reflow_regnet(flag("--calib-count", 1024), flag("--calib-batch", 64));
        return;
    }
    let level = cpu::level();
    // The peak of the level in use, or of the widest one when the level has no
    // kernels of its own.
    let peak_level = if level == Level::Portable {
        cpu::detected()
    } else {
        level
    };
    let peak: f64 =
        rayon::broadcast(|_| reflow::bench::peak_gflops(peak_level).unwrap_or(f64::NAN))
            .into_iter()
            .sum();
    let threads_used = rayon::current_num_threads();
    if args.iter().any(|a| a == "--tsv") {
        println!("level\t{threads_used}\t{level}\t{peak_level}");
        println!("peak\t{threads_used}\t{peak:.3}\t{peak_level}");
    } else {
        println!(
            "threads: {threads_used}, kernel level {level}, peak {peak:.1} GFLOP/s (multiply-adds at {peak_level})"
        );
    }
    let batch = flag("--batch", 0);
    for (name, build, shape) in cases {
        if only.is_some_and(|m| !name.starts_with(m.as_str())) {
            continue;
        }
        // `--batch B` replaces the case's batch, in its name too.
        let (name, shape) = match batch {
            0 => (name.to_string(), shape),
            b => {
                let stem = name.rsplit_once(" b").map_or(name, |(stem, _)| stem);
                (format!("{stem} b{b}"), (b, shape.1, shape.2, shape.3))
            }
        };
        let mut net = build();
        fill(&mut net);
        let x = Array4::from_shape_fn(shape, |(n, c, h, w)| ((n + c + h * w) % 17) as f32 / 17.0);
        let flops = flops_per_image(&net, &x);
        net.forward(&x).unwrap(); // warm-up
        let times: Vec<f64> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(net.forward(&x).unwrap());
                t.elapsed().as_secs_f64()
            })
            .collect();
        let t = median(times);
        let ips = shape.0 as f64 / t;
        if args.iter().any(|a| a == "--tsv") {
            println!(
                "{name}\t{}\t{ips:.3}\t{:.3}",
                rayon::current_num_threads(),
                ips * flops / 1e9
            );
            continue;
        }
        println!(
            "{name:<28} {:>9.1} images/s  {:>7.1} GFLOP/s  ({:.1} ms per batch, {:.2} GFLOP per image)",
            ips,
            ips * flops / 1e9,
            t * 1e3,
            flops / 1e9
        );
        if args.iter().any(|a| a == "--profile") {
            print_profile(&net, &x, runs, t);
        }
    }
    let tsv = args.iter().any(|a| a == "--tsv");
    if !tsv && only.is_none_or(|m| m == "calibration") {
        calibration(runs.max(10));
    }
}
