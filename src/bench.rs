//! Timing a network as it will run: images per second, and where the time goes,
//! convolution by convolution (the engine behind `reflow bench`).

use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::layer::{Layer, Network, NormUpdate, Probe};
use crate::nn::{LayerTime, Profile, SparsePolicy, Tensor2, Tensor4};
use std::time::Instant;

/// The multiply-add throughput of one core at `level`, in GFLOP/s (a multiply-add
/// counts two), measured on the calling thread over about a fifth of a second: the
/// peak that the benchmarks' "% of peak" divides by. Independent chains of fused
/// multiply-adds, as many as fill the pipelines, run in the kernels' registers. Call
/// it on several threads at once (e.g. `rayon::broadcast`) and add the results for the
/// peak of several cores.
///
/// `None` for [`Level::Portable`](crate::cpu::Level::Portable), which has no kernels
/// of its own, and for a level the processor does not support.
pub fn peak_gflops(level: crate::cpu::Level) -> Option<f64> {
    use crate::nn::kernels::{peak, Isa};
    match Isa::at_most(level) {
        Isa::Kernels(kernels) if Isa::Kernels(kernels).level() == level => {
            Some(peak::gflops(kernels, 0.2))
        }
        _ => None,
    }
}

/// What [`bench()`] runs: batches of `batch` images of `input` (`[C, H, W]`), `warmup`
/// passes first, then `runs` timed passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchConfig {
    /// `[C, H, W]` of one image.
    pub input: [usize; 3],
    /// Images per pass.
    pub batch: usize,
    /// Untimed passes first: they pack the weights, fill the memory pools and, under
    /// [`SparsePolicy::Measured`], measure each pruned convolution's kernels.
    pub warmup: usize,
    /// Timed passes.
    pub runs: usize,
    /// How the passes compute: kernel cap, threads, sparse policy (the process's
    /// defaults from [`BenchConfig::new`]).
    pub exec: Exec,
}

impl BenchConfig {
    /// Batches of `batch` images of `input`; two warm-up passes and ten timed ones.
    pub fn new(input: [usize; 3], batch: usize) -> Self {
        BenchConfig {
            input,
            batch,
            warmup: 2,
            runs: 10,
            exec: Exec::defaults(),
        }
    }

    fn validate(&self) -> Result<()> {
        if self.input.contains(&0) {
            return Err(Error::invalid(
                "input",
                format!("{:?}: every size must be positive", self.input),
            ));
        }
        for (name, v) in [("batch", self.batch), ("runs", self.runs)] {
            if v == 0 {
                return Err(Error::zero(name));
            }
        }
        Ok(())
    }
}

/// What [`bench()`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// What ran.
    pub config: BenchConfig,
    /// `batch` over the median time of a pass.
    pub images_per_second: f64,
    /// The median time of a pass, in milliseconds.
    pub median_ms: f64,
    /// The threads of the pool the passes ran on.
    pub threads: usize,
    /// The sparse policy in force.
    pub policy: SparsePolicy,
    /// Each convolution on blocked activations and each linear layer, its time per pass (`seconds` is the
    /// mean over the timed passes; micro-batches on several threads add up) and its
    /// kernel, in the order the pass ran them.
    pub layers: Vec<LayerTime>,
}

/// `config`'s batch of pseudo-random images in `[-1, 1)`, as normalised images are,
/// the same every call.
fn images(config: &BenchConfig) -> Tensor4 {
    let [c, h, w] = config.input;
    let len = config.batch * c * h * w;
    let mut state = 0x2545_f491_u32;
    let values = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect();
    Tensor4::from_shape_vec((config.batch, c, h, w), values).expect("the values fill the shape")
}

/// The median of `times` (seconds), and the report of a pass that took it.
fn report(config: &BenchConfig, mut times: Vec<f64>, layers: Vec<LayerTime>) -> BenchReport {
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    BenchReport {
        config: *config,
        images_per_second: config.batch as f64 / median,
        median_ms: median * 1e3,
        threads: config.exec.threads(),
        policy: config.exec.sparse(),
        layers,
    }
}

/// Times `net` on batches of pseudo-random images (the same each pass) as
/// `config` says, under its [`Exec`], on the current rayon pool (run it inside
/// [`rayon::ThreadPool::install`] to choose how many threads `Par::Rayon` has).
///
/// ```
/// use reflow::bench::{bench, BenchConfig};
/// use reflow::models::{ResNet, ResNetConfig};
///
/// let net = ResNet::new(ResNetConfig::cifar_resnet(20)?)?;
/// let config = BenchConfig { runs: 2, ..BenchConfig::new([3, 32, 32], 4) };
/// let report = bench(&net, &config)?;
/// assert!(report.images_per_second > 0.0);
/// println!("{:.1} images/s", report.images_per_second);
/// # Ok::<(), reflow::Error>(())
/// ```
pub fn bench<N>(net: &N, config: &BenchConfig) -> Result<BenchReport>
where
    N: Layer<Input = Tensor4, Output = Tensor2> + ?Sized,
{
    config.validate()?;
    let x = images(config);
    for _ in 0..config.warmup {
        net.forward_with(&x, &mut Probe::none().with_exec(config.exec))?;
    }
    let profile = Profile::new();
    let mut times = Vec::with_capacity(config.runs);
    for _ in 0..config.runs {
        let start = Instant::now();
        let probe = Probe::none().with_exec(config.exec);
        net.forward_with(&x, &mut probe.with_profile(&profile))?;
        times.push(start.elapsed().as_secs_f64());
    }
    let layers = profile
        .layers()
        .into_iter()
        .map(|l| LayerTime {
            seconds: l.seconds / config.runs as f64,
            calls: l.calls / config.runs,
            ..l
        })
        .collect();
    Ok(report(config, times, layers))
}

/// Times REFLOW's calibration pass on `net` as `config` says: each pass one batch
/// of pseudo-random images (the same each pass) through `net` with its batch norms in
/// training mode, their running statistics updated (cumulative average), as
/// [`crate::rescale::Reflow`] runs it batch by batch. The pass runs layer by layer on
/// NCHW activations, so the report has no per-layer times (`layers` is empty).
/// `net`'s running statistics are changed.
///
/// ```
/// use reflow::bench::{bench_calibration, BenchConfig};
/// use reflow::models::{ResNet, ResNetConfig};
///
/// let mut net = ResNet::new(ResNetConfig::cifar_resnet(20)?)?;
/// let config = BenchConfig { runs: 2, ..BenchConfig::new([3, 32, 32], 4) };
/// let report = bench_calibration(&mut net, &config)?;
/// println!("{:.1} calibration images/s", report.images_per_second);
/// # Ok::<(), reflow::Error>(())
/// ```
pub fn bench_calibration(
    net: &mut dyn Network<Tensor4>,
    config: &BenchConfig,
) -> Result<BenchReport> {
    config.validate()?;
    let x = images(config);
    let mut pass = || {
        let probe = Probe::none().with_exec(config.exec);
        net.calibrate(&x, &mut probe.with_update(NormUpdate::Cumulative))
    };
    for _ in 0..config.warmup {
        pass()?;
    }
    let mut times = Vec::with_capacity(config.runs);
    for _ in 0..config.runs {
        let start = Instant::now();
        pass()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(report(config, times, Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{ResNet, ResNetConfig};

    #[test]
    fn bench_times_every_convolution_of_a_network() {
        let net = ResNet::new(ResNetConfig::cifar_resnet(20).unwrap()).unwrap();
        let config = BenchConfig {
            runs: 3,
            ..BenchConfig::new([3, 16, 16], 2)
        };
        let report = bench(&net, &config).unwrap();
        assert!(report.images_per_second > 0.0 && report.median_ms > 0.0);
        if crate::nn::blocked::Pass::available(&Probe::none()) {
            // The stem and two per block, the downsampling shortcuts', the classifier.
            let names: Vec<&str> = report.layers.iter().map(|l| l.name.as_str()).collect();
            assert_eq!(names.len(), 1 + 2 * 9 + 2 + 1, "{names:?}");
            assert_eq!((names[0], names[21]), ("conv1", "fc"));
            // The convolutions once per micro-batch, the classifier once per pass (over
            // the micro-batches' features).
            let calls = report.layers[0].calls;
            assert!(calls >= 1);
            let (fc, convolutions) = report.layers.split_last().expect("layers");
            assert!(convolutions
                .iter()
                .all(|l| l.calls == calls && l.seconds > 0.0));
            assert!(fc.calls >= 1 && calls.is_multiple_of(fc.calls) && fc.seconds > 0.0);
        }
    }

    #[test]
    fn bench_calibration_times_the_train_mode_pass() {
        use crate::layer::Params;
        let mut net = ResNet::new(ResNetConfig::cifar_resnet(20).unwrap()).unwrap();
        // Zero weights: every batch variance is 0, the running ones start at 1.
        let variances = |net: &ResNet| {
            let mut all = vec![];
            net.visit_params(&mut |p| {
                if p.name.ends_with("running_var") {
                    all.extend_from_slice(p.data);
                }
            });
            all
        };
        let before = variances(&net);
        // Refused before any pass: the statistics are untouched.
        let bad = BenchConfig::new([3, 16, 16], 0);
        assert!(bench_calibration(&mut net, &bad).is_err());
        assert_eq!(variances(&net), before);
        let config = BenchConfig {
            warmup: 0,
            runs: 2,
            ..BenchConfig::new([3, 16, 16], 2)
        };
        let report = bench_calibration(&mut net, &config).unwrap();
        assert!(report.images_per_second > 0.0 && report.layers.is_empty());
        // The passes updated the running statistics, as REFLOW's do.
        assert_ne!(variances(&net), before);
    }

    #[test]
    fn bench_refuses_empty_sizes_before_running() {
        let net = ResNet::new(ResNetConfig::cifar_resnet(20).unwrap()).unwrap();
        let err = bench(&net, &BenchConfig::new([3, 0, 16], 2)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
        for config in [
            BenchConfig::new([3, 16, 16], 0),
            BenchConfig {
                runs: 0,
                ..BenchConfig::new([3, 16, 16], 1)
            },
        ] {
            let err = bench(&net, &config).unwrap_err();
            assert!(
                matches!(err, Error::OutOfRange { ref value, .. } if value == "0"),
                "{err}"
            );
        }
        // A wrong channel count is the network's own error.
        let err = bench(&net, &BenchConfig::new([1, 16, 16], 1)).unwrap_err();
        assert!(err.to_string().contains("[_, 3, _, _]"), "{err}");
    }
}
