//! Times the layers that decide the engine's activation layout (`docs/engine.md`), in
//! today's NCHW engine and on the channel-blocked (NCHW16c) candidate kernels.
//!
//! `cargo run --release --example bench_layouts -- [--threads N] [--batch B] [--runs N] [--layer PREFIX] [--tsv] [--sparse-only | --blocked-only] [--cold]`
//!
//! Per layer: the NCHW engine (a `ConvBn` with ReLU: convolution, batch norm folded,
//! ReLU fused), the blocked kernel on an input already blocked (1×1 and depthwise
//! layers only), the sparse blocked kernel with 80 % and 90 % of the weights zeroed by
//! magnitude (1×1 layers only), and the two reorders a lone blocked layer would need (its input to
//! blocks, its output back), each the median of `--runs` after a warm-up.
//! `scripts/bench_layers.py` times ONNX Runtime and OpenVINO on the same layers in the
//! same run. `--sparse-only` and `--blocked-only` time only the sparse or the blocked
//! dense kernel (to tune one); `--cold` fills the caches with other data before each
//! run, as a layer inside a network finds them.

use ndarray::Array4;
use reflow::layer::{Layer, Params};
use reflow::nn::layout_candidates::{
    blocked_len, from_blocked, to_blocked, BlockedConv, SparseBlockedConv,
};
use reflow::nn::{Activation, BatchNorm2d, Conv2d, Conv2dConfig, ConvBn};
use std::time::Instant;

/// (name, in, out, size, kernel, stride, groups)
const LAYERS: [(&str, usize, usize, usize, usize, usize, usize); 29] = [
    ("pw mbv2 160-960 @7", 160, 960, 7, 1, 1, 1),
    ("pw mbv2 960-160 @7", 960, 160, 7, 1, 1, 1),
    ("pw r50 512-2048 @7", 512, 2048, 7, 1, 1, 1),
    ("pw r50 2048-512 @7", 2048, 512, 7, 1, 1, 1),
    ("pw mbv2 96-576 @14", 96, 576, 14, 1, 1, 1),
    ("pw mbv2 576-96 @14", 576, 96, 14, 1, 1, 1),
    ("pw r50 256-1024 @14", 256, 1024, 14, 1, 1, 1),
    ("pw r50 1024-256 @14", 1024, 256, 14, 1, 1, 1),
    ("pw mbv2 24-144 @56", 24, 144, 56, 1, 1, 1),
    ("pw r50 64-256 @56", 64, 256, 56, 1, 1, 1),
    ("dw3 s1 144 @56", 144, 144, 56, 3, 1, 144),
    ("dw3 s2 144 @56", 144, 144, 56, 3, 2, 144),
    ("dw3 s1 576 @14", 576, 576, 14, 3, 1, 576),
    ("dw3 s2 576 @14", 576, 576, 14, 3, 2, 576),
    ("dw3 s1 960 @7", 960, 960, 7, 3, 1, 960),
    ("dw5 s1 672 @14", 672, 672, 14, 5, 1, 672),
    ("dw5 s2 672 @14", 672, 672, 14, 5, 2, 672),
    ("c3 r20 16 @28", 16, 16, 28, 3, 1, 1),
    ("c3 r20 64 @7", 64, 64, 7, 3, 1, 1),
    ("c3 r50 64 @56", 64, 64, 56, 3, 1, 1),
    ("c3 r50 128 @28", 128, 128, 28, 3, 1, 1),
    ("c3 r50 256 @14", 256, 256, 14, 3, 1, 1),
    ("c3 r50 512 @7", 512, 512, 7, 3, 1, 1),
    ("c3s2 r50 128 @56", 128, 128, 56, 3, 2, 1),
    ("pws2 r50 256-512 @56", 256, 512, 56, 1, 2, 1),
    ("pw regnet 400-400 @7", 400, 400, 7, 1, 1, 1),
    ("pw regnet 160-160 @14", 160, 160, 14, 1, 1, 1),
    ("g3 regnet 160/16 @14", 160, 160, 14, 3, 1, 10),
    ("g3 regnet 400/16 @7", 400, 400, 7, 3, 1, 25),
];

fn values(len: usize, seed: u32) -> Vec<f32> {
    let mut i = seed;
    (0..len)
        .map(|_| {
            i = i.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((i >> 9) as f32 / (1 << 23) as f32 - 0.5) * 0.1
        })
        .collect()
}

/// `weight` with the fraction `fraction` of smallest magnitudes set to zero.
fn magnitude_pruned(weight: &[f32], fraction: f64) -> Vec<f32> {
    let mut order: Vec<usize> = (0..weight.len()).collect();
    order.sort_by(|&a, &b| weight[a].abs().total_cmp(&weight[b].abs()));
    let mut pruned = weight.to_vec();
    for &i in &order[..(fraction * weight.len() as f64).round() as usize] {
        pruned[i] = 0.0;
    }
    pruned
}

/// With `--cold`, each run starts with the caches full of other data (64 MiB written),
/// as a layer inside a network finds them: its weights and input come from L3.
static COLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    if runs == 0 {
        return f64::NAN;
    }
    f();
    let cold = COLD.load(std::sync::atomic::Ordering::Relaxed);
    let mut junk = vec![0u8; if cold { 64 << 20 } else { 0 }];
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            for (i, b) in junk.iter_mut().enumerate().step_by(64) {
                *b = b.wrapping_add(i as u8);
            }
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let number =
        |name: &str, default: usize| flag(name).map_or(default, |v| v.parse().expect("a number"));
    let (threads, batch, runs) = (
        number("--threads", 0),
        number("--batch", 8),
        number("--runs", 15),
    );
    let only = flag("--layer");
    let tsv = args.iter().any(|a| a == "--tsv");
    // Only the sparse kernel (to study it): the other columns are left empty.
    let sparse_only = args.iter().any(|a| a == "--sparse-only");
    // Only the blocked dense kernel (to tune it): the other columns are left empty.
    let blocked_only = args.iter().any(|a| a == "--blocked-only");
    COLD.store(
        args.iter().any(|a| a == "--cold"),
        std::sync::atomic::Ordering::Relaxed,
    );
    if threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .expect("thread pool");
    }
    let threads = rayon::current_num_threads();
    if !tsv {
        println!(
            "batch {batch}, {threads} thread(s), kernel level {}; ms per batch (median of {runs})",
            reflow::cpu::level()
        );
        println!(
            "{:<22} {:>8} {:>9} {:>8} {:>9} {:>8} {:>8} {:>8}",
            "layer", "GFLOP", "NCHW ms", "blk ms", "reorder", "NCHW/blk", "sp80 ms", "sp90 ms"
        );
    }
    for (name, c, o, size, k, stride, groups) in LAYERS {
        if only.is_some_and(|p| !name.starts_with(p.as_str())) {
            continue;
        }
        let pad = k / 2;
        let config = Conv2dConfig::new(c, o, k)
            .stride(stride)
            .padding(pad)
            .groups(groups);
        let mut conv = Conv2d::new(config).expect("a valid layer");
        let weight = values(config.weight_shape().iter().product(), 7);
        conv.visit_params_mut(&mut |p| p.data.iter_mut().zip(&weight).for_each(|(d, w)| *d = *w));
        let net = ConvBn::new(
            "conv",
            conv,
            "bn",
            BatchNorm2d::new(o, 1e-5),
            Activation::Relu,
        )
        .expect("matching channels");
        let x = Array4::from_shape_vec((batch, c, size, size), values(batch * c * size * size, 3))
            .expect("shape");
        let nchw = median_ms(if sparse_only || blocked_only { 0 } else { runs }, || {
            std::hint::black_box(net.forward(&x).expect("forward"));
        });
        let ho = (size + 2 * pad - k) / stride + 1;
        let flops = 2.0 * (batch * o * ho * ho * (c / groups) * k * k) as f64 / 1e9;
        let (bn_scale, bn_shift) = net.bn().eval_affine();
        let blocked = BlockedConv::new(config, &weight, &bn_scale, &bn_shift, true).ok();
        let (mut blk, mut reorder) = (f64::NAN, f64::NAN);
        let mut sparse = [f64::NAN; 2];
        if let Some(b) = &blocked {
            let mut xb = vec![0.0; blocked_len(batch, c, size, size)];
            let xs = x.as_slice().expect("standard layout");
            to_blocked(xs, [batch, c, size, size], &mut xb).expect("sizes");
            let mut yb = vec![0.0; blocked_len(batch, o, ho, ho)];
            blk = median_ms(if sparse_only { 0 } else { runs }, || {
                b.run(&xb, [batch, size, size], &mut yb, threads)
                    .expect("run");
            });
            let mut y = vec![0.0; batch * o * ho * ho];
            reorder = median_ms(if sparse_only || blocked_only { 0 } else { runs }, || {
                to_blocked(xs, [batch, c, size, size], &mut xb).expect("sizes");
                from_blocked(&yb, [batch, o, ho, ho], &mut y).expect("sizes");
            });
            // The sparse kernel at 80 % and 90 % of the weights zeroed by magnitude.
            for (t, fraction) in sparse
                .iter_mut()
                .take(if blocked_only { 0 } else { 2 })
                .zip([
                    std::env::var("SP_A").map_or(0.8, |v| v.parse().unwrap()),
                    std::env::var("SP_B").map_or(0.9, |v| v.parse().unwrap()),
                ])
            {
                let Ok(sp) = SparseBlockedConv::new(
                    config,
                    &magnitude_pruned(&weight, fraction),
                    &bn_scale,
                    &bn_shift,
                    true,
                ) else {
                    continue;
                };
                let mut ys = vec![0.0; yb.len()];
                *t = median_ms(runs, || {
                    sp.run(&xb, [batch, size, size], &mut ys, threads)
                        .expect("run");
                });
            }
            // The two agree (a check of the bench itself).
            let want = net.forward(&x).expect("forward");
            let err = want
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs() / (1.0 + a.abs()))
                .fold(0.0f32, f32::max);
            assert!(
                sparse_only || blocked_only || err < 1e-4,
                "{name}: blocked and NCHW differ by {err}"
            );
        }
        if tsv {
            println!(
                "{name}\t{batch}\t{threads}\t{flops:.4}\t{nchw:.4}\t{blk:.4}\t{reorder:.4}\t{:.4}\t{:.4}",
                sparse[0], sparse[1]
            );
        } else {
            println!(
                "{name:<22} {flops:>8.3} {nchw:>9.3} {blk:>8.3} {reorder:>9.3} {:>8.2} {:>8.3} {:>8.3}",
                nchw / blk,
                sparse[0],
                sparse[1]
            );
        }
    }
}
