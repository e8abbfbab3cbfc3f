//! Prune a torchvision-layout checkpoint (ResNet, RegNet, MobileNetV2/V3, EfficientNet
//! or VGG-BN) at several sparsities, evaluate it, recalibrate it with REFLOW, evaluate
//! again, and report.
//!
//! ```sh
//! cargo run --release --example prune -- \
//!     --weights assets/fashion-mnist/resnet20_fmnist.safetensors --stem cifar \
//!     --test-images assets/fashion-mnist/t10k-images-idx3-ubyte.gz \
//!     --test-labels assets/fashion-mnist/t10k-labels-idx1-ubyte.gz \
//!     --calib-images assets/fashion-mnist/calib-images-idx3-ubyte.gz \
//!     --mean 0.2860 --std 0.3530 --json report.json
//! ```
//!
//! The flags and the JSON report are specified in `docs/prune-example.md`.

#[path = "shared/protocol.rs"]
mod protocol;

use clap::Parser;
use protocol::{last_ratio, progress_bar, Protocol};
use reflow::models::{Arch, Model};
use reflow::prelude::*;
use reflow::prune::{PrunePlan, SparsityReport};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Prune a torchvision-layout checkpoint one-shot, then recover it with REFLOW.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// safetensors state dict in torchvision layout.
    #[arg(long, value_name = "PATH")]
    weights: PathBuf,
    /// Network family or torchvision preset; auto detects it from the keys.
    #[arg(long, default_value = "auto")]
    arch: String,
    /// ResNet stem kind: cifar (3x3, no max pool) or imagenet (7x7 stride 2 + max
    /// pool). Other families ignore it.
    #[arg(long, default_value = "imagenet")]
    stem: String,
    /// Test images, IDX (.gz ok).
    #[arg(long, value_name = "PATH")]
    test_images: PathBuf,
    /// Test labels, IDX (.gz ok).
    #[arg(long, value_name = "PATH")]
    test_labels: PathBuf,
    /// Calibration images, IDX (.gz ok); taken in file order.
    #[arg(long, value_name = "PATH")]
    calib_images: PathBuf,
    /// Number of calibration images.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    calib_count: usize,
    /// Calibration batch size.
    #[arg(long, default_value_t = 128, value_name = "N")]
    calib_batch: usize,
    /// Per-channel means, comma-separated.
    #[arg(long, value_name = "LIST", allow_hyphen_values = true)]
    mean: String,
    /// Per-channel standard deviations, comma-separated.
    #[arg(long, value_name = "LIST", allow_hyphen_values = true)]
    std: String,
    /// Sparsities, comma-separated, each in [0, 1).
    #[arg(
        long,
        default_value = "0.5,0.7,0.8,0.9",
        value_name = "LIST",
        allow_hyphen_values = true
    )]
    sparsity: String,
    /// Pruning scope: global or layer.
    #[arg(long, default_value = "global")]
    scope: String,
    /// Parameter names or prefixes never pruned, comma-separated.
    #[arg(long, default_value = "", value_name = "LIST")]
    exclude: String,
    /// REFLOW statistic mode: cumulative, ema or exact.
    #[arg(long, default_value = "cumulative")]
    mode: String,
    /// Momentum for --mode ema.
    #[arg(long, default_value_t = 0.1, value_name = "M")]
    momentum: f64,
    /// First N test images used for the per-BN signal metric.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    signal_images: usize,
    /// Write the JSON report here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Write <DIR>/s<sparsity>.safetensors, pruned and recalibrated.
    #[arg(long, value_name = "DIR")]
    save_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message, on one line: everything before the usage text.
            let text = e.to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("{}", message.join(" "));
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_list<T: std::str::FromStr>(flag: &str, text: &str) -> reflow::Result<Vec<T>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse().map_err(|_| Error::InvalidArgument {
                name: format!("--{flag}"),
                reason: format!("\"{s}\" is not a number"),
            })
        })
        .collect()
}

fn invalid(flag: &str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        name: format!("--{flag}"),
        reason: reason.into(),
    }
}

/// Every flag checked before any file is read.
struct Plan {
    arch: Arch,
    stem: Stem,
    scope: Scope,
    sparsities: Vec<f64>,
    exclude: Vec<String>,
    reflow: Reflow,
    norm: Normalization,
}

fn plan(args: &Args) -> reflow::Result<Plan> {
    let sparsities: Vec<f64> = parse_list("sparsity", &args.sparsity)?;
    if sparsities.is_empty() {
        return Err(invalid("sparsity", "no value given"));
    }
    for &s in &sparsities {
        PrunePlan::new(s)
            .validate()
            .map_err(|_| invalid("sparsity", format!("{s} is outside [0, 1)")))?;
    }
    let reflow = match args.mode.as_str() {
        "cumulative" => Reflow::cumulative(),
        "ema" => Reflow::ema(args.momentum),
        "exact" => Reflow::exact(),
        other => {
            return Err(invalid(
                "mode",
                format!("\"{other}\" (expected cumulative, ema or exact)"),
            ))
        }
    };
    reflow.validate()?;
    if args.calib_count == 0 {
        return Err(invalid("calib-count", "empty calibration set (0 images)"));
    }
    if args.calib_batch == 0 {
        return Err(invalid("calib-batch", "must be positive"));
    }
    if args.signal_images == 0 {
        return Err(invalid("signal-images", "must be positive"));
    }
    let mean = parse_list("mean", &args.mean)?;
    let std = parse_list("std", &args.std)?;
    let norm = Normalization::new(mean, std)?;
    Ok(Plan {
        arch: args.arch.parse()?,
        stem: args.stem.parse()?,
        scope: args.scope.parse()?,
        sparsities,
        exclude: args
            .exclude
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        reflow,
        norm,
    })
}

/// `v` as a JSON number, or, when it is NaN or infinite (which JSON numbers cannot
/// be, and serde_json would write as `null`), as the string `"NaN"`, `"inf"` or
/// `"-inf"`: a value that went wrong stays visible in the report.
fn number(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        json!(v.to_string())
    }
}

fn signal_json(signal: &Signal) -> Value {
    Value::Object(
        signal
            .layers
            .iter()
            .map(|(name, v)| (name.clone(), number(*v)))
            .collect::<Map<_, _>>(),
    )
}

fn run_json(run: &protocol::Run, scope: Scope) -> Value {
    json!({
        "scope": scope.to_string(),
        "sparsity": run.sparsity,
        "actual_sparsity": number(run.report.sparsity.prunable_sparsity()),
        "pruned_top1": number(run.pruned.accuracy.top1()),
        "pruned_correct": run.pruned.accuracy.correct,
        "reflow_top1": number(run.reflow.accuracy.top1()),
        "reflow_correct": run.reflow.accuracy.correct,
        "bn_signal_pruned": signal_json(&run.pruned.signal),
        "bn_signal_reflow": signal_json(&run.reflow.signal),
        "layers": layers_json(&run.report.sparsity),
        "secs": run.secs,
    })
}

fn layers_json(report: &SparsityReport) -> Value {
    report
        .tensors
        .iter()
        .map(|t| json!({"name": t.name, "numel": t.numel, "sparsity": number(t.sparsity())}))
        .collect()
}

fn run(args: &Args) -> reflow::Result<()> {
    let plan = plan(args)?;
    check_paths(args, &plan.sparsities)?;

    let mut net = Model::load(&args.weights, plan.arch, plan.stem)?;
    let (in_channels, num_classes) = (net.in_channels(), net.num_classes());
    if plan.norm.channels() != in_channels {
        return Err(invalid(
            "mean/--std",
            format!(
                "{} values given; the model takes {} input channel(s)",
                plan.norm.channels(),
                in_channels
            ),
        ));
    }
    let test = Dataset::new(
        IdxImages::read(&args.test_images)?,
        IdxLabels::read(&args.test_labels)?,
    )?;
    let channels = |flag: &str, images: &IdxImages| {
        let c = images.dims()[1];
        if c == in_channels {
            return Ok(());
        }
        Err(invalid(
            flag,
            format!("{c}-channel images; the model takes {in_channels} input channel(s)"),
        ))
    };
    channels("test-images", test.images())?;
    let labels = test.labels().as_slice();
    if let Some(i) = labels.iter().position(|&l| l as usize >= num_classes) {
        return Err(invalid(
            "test-labels",
            format!(
                "label {} of sample {i}, but the model has {num_classes} classes",
                labels[i]
            ),
        ));
    }
    if args.signal_images > test.len() {
        return Err(invalid(
            "signal-images",
            format!(
                "{} asked for, the test set has {}",
                args.signal_images,
                test.len()
            ),
        ));
    }
    let calib_images = IdxImages::read(&args.calib_images)?;
    channels("calib-images", &calib_images)?;
    enough_values(args, &plan, &net, &calib_images)?;
    let calibration = ImageBatches::new(
        &calib_images,
        args.calib_count,
        args.calib_batch,
        &plan.norm,
    )
    .map_err(|e| match e {
        Error::Data(m) => Error::Data(format!("--calib-images: {m}")),
        other => other,
    })?;
    let pruners: Vec<MagnitudePruner> = plan
        .sparsities
        .iter()
        .map(|&s| {
            let p = plan
                .exclude
                .iter()
                .fold(MagnitudePruner::new(s).scope(plan.scope), |p, e| {
                    p.exclude(e.clone())
                });
            p.plan().check(&net).map(|_| p)
        })
        .collect::<reflow::Result<_>>()?;
    let save = |s: f64, net: &Model| -> reflow::Result<()> {
        let Some(dir) = &args.save_dir else {
            return Ok(());
        };
        // `check_paths` made the folder and made sure the file is no input.
        StateDict::from_layer(net).write_safetensors(dir.join(saved_name(s)))
    };

    let protocol = Protocol {
        test: &test,
        norm: &plan.norm,
        calibration: &calibration,
        signal_images: args.signal_images,
        reflow: plan.reflow,
    };
    let progress = progress_bar(1 + 2 * plan.sparsities.len() as u64);
    progress.set_message("dense model");
    let dense_state = StateDict::from_layer(&net);
    let dense = protocol.evaluate(&net)?;
    progress.inc(1);

    let mut runs = Vec::new();
    for (&s, pruner) in plan.sparsities.iter().zip(pruners) {
        let run = protocol.run(&mut net, &dense_state, s, pruner, &progress)?;
        save(s, &net)?;
        runs.push(run);
    }
    progress.finish_and_clear();

    let arch = net.arch();
    let described = match &net {
        Model::ResNet(r) => {
            let cfg = r.config();
            format!(
                "{} stem, stages {:?}, {} blocks, groups {}",
                cfg.stem, cfg.layers, cfg.block, cfg.groups
            )
        }
        _ => arch.to_string(),
    };
    let described = match described == arch.family() {
        true => String::new(),
        false => format!(" {described},"),
    };
    println!(
        "model: {},{described} {} parameters ({} prunable)",
        arch.family(),
        count_parameters(&net),
        count_prunable(&net)
    );
    println!(
        "dense: top-1 {:.4} ({}/{}), last BN signal {:.4}",
        dense.accuracy.top1(),
        dense.accuracy.correct,
        dense.accuracy.total,
        dense.signal.last().map_or(f64::NAN, |(_, v)| v)
    );
    println!(
        "{:<7} {:>8} {:>7} {:>13} {:>13} {:>16} {:>16} {:>6}",
        "scope",
        "sparsity",
        "actual",
        "pruned top-1",
        "REFLOW top-1",
        "signal pruned/d",
        "signal REFLOW/d",
        "secs"
    );
    for run in &runs {
        println!(
            "{:<7} {:>8.3} {:>7.4} {:>13.4} {:>13.4} {:>16.4} {:>16.4} {:>6.1}",
            plan.scope.to_string(),
            run.sparsity,
            run.report.sparsity.prunable_sparsity(),
            run.pruned.accuracy.top1(),
            run.reflow.accuracy.top1(),
            last_ratio(&run.pruned.signal, &dense.signal),
            last_ratio(&run.reflow.signal, &dense.signal),
            run.secs
        );
    }
    println!(
        "(signal: last batch-norm layer, relative to the dense network, on {} test images)",
        args.signal_images
    );

    if let Some(path) = &args.json {
        let mut model = json!({
            "family": arch.family(),
            "arch": arch.to_string(),
            "params": count_parameters(&net),
            "prunable": count_prunable(&net),
        });
        if let Model::ResNet(r) = &net {
            let cfg = r.config();
            model["stem"] = json!(cfg.stem.to_string());
            model["stages"] = json!(cfg.layers);
            model["block"] = json!(cfg.block.to_string());
            model["groups"] = json!(cfg.groups);
        }
        let report = json!({
            "model": model,
            "dense": {
                "top1": number(dense.accuracy.top1()),
                "correct": dense.accuracy.correct,
                "bn_signal": signal_json(&dense.signal),
            },
            "runs": runs.iter().map(|run| run_json(run, plan.scope)).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&report).expect("JSON values serialise");
        reflow::io::write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}

/// Before any forward pass over the data: every batch norm gets at least two values
/// per channel to compute a variance from — in each calibration batch for the
/// running modes, in the whole calibration set for `exact`. How many values a batch
/// norm sees per image is measured on one blank image.
fn enough_values(args: &Args, plan: &Plan, net: &Model, images: &IdxImages) -> reflow::Result<()> {
    /// The smallest plane a batch norm sees.
    struct Smallest(usize);
    impl reflow::layer::Observer for Smallest {
        fn wants(&self, tap: &reflow::layer::Tap<'_>) -> bool {
            tap.kind == reflow::layer::LayerKind::BatchNorm
                && tap.site == reflow::layer::Site::Output
        }
        fn observe(&mut self, _: &reflow::layer::Tap<'_>, a: reflow::layer::ActivationView<'_>) {
            self.0 = self.0.min(a.spatial);
        }
    }
    let [_, c, h, w] = images.dims();
    let mut smallest = Smallest(usize::MAX);
    let blank = reflow::nn::Tensor4::zeros((1, c, h, w));
    net.forward_with(&blank, &mut Probe::new(&mut smallest))?;
    let per_image = smallest.0;
    let count = args.calib_count.min(images.len());
    let (images_at_once, flag) = match plan.reflow.mode() {
        ReflowMode::Exact => (count, "calib-count"),
        _ => match count % args.calib_batch {
            0 => (args.calib_batch.min(count), "calib-batch"),
            last => (last, "calib-batch"),
        },
    };
    if images_at_once.saturating_mul(per_image) < 2 {
        return Err(invalid(
            flag,
            format!(
                "{images_at_once} image(s) of {h}x{w} give the smallest batch norms {} value(s) per channel; a variance needs two",
                images_at_once.saturating_mul(per_image)
            ),
        ));
    }
    Ok(())
}

/// The file `--save-dir` gets for sparsity `s`.
fn saved_name(s: f64) -> String {
    format!("s{s}.safetensors")
}

/// Where `path` is, whether or not it exists yet: its canonical form, or its folder's
/// with its name.
fn identity(path: &Path) -> Option<PathBuf> {
    path.canonicalize().ok().or_else(|| {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        Some(dir.canonicalize().ok()?.join(path.file_name()?))
    })
}

/// Before any work: every input a regular file; every output's folder there and
/// writable; no output the same file as an input or as another output (so that
/// nothing given is ever overwritten). Makes `--save-dir` when it does not exist.
fn check_paths(args: &Args, sparsities: &[f64]) -> reflow::Result<()> {
    let inputs = [
        ("weights", &args.weights),
        ("test-images", &args.test_images),
        ("test-labels", &args.test_labels),
        ("calib-images", &args.calib_images),
    ];
    for (flag, path) in inputs {
        let meta = std::fs::metadata(path)
            .map_err(|e| invalid(flag, format!("{}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(invalid(
                flag,
                format!("{} is not a regular file", path.display()),
            ));
        }
    }
    let mut outputs: Vec<(&str, PathBuf)> = Vec::new();
    if let Some(json) = &args.json {
        writable_folder("json", json.parent())?;
        outputs.push(("json", json.clone()));
    }
    if let Some(dir) = &args.save_dir {
        if dir.exists() && !dir.is_dir() {
            return Err(invalid(
                "save-dir",
                format!("{} is not a folder", dir.display()),
            ));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| invalid("save-dir", format!("{}: {e}", dir.display())))?;
        writable_folder("save-dir", Some(dir))?;
        outputs.extend(
            sparsities
                .iter()
                .map(|&s| ("save-dir", dir.join(saved_name(s)))),
        );
    }
    let mut taken: Vec<(String, PathBuf)> = inputs
        .iter()
        .filter_map(|(flag, p)| Some((format!("the --{flag} file"), identity(p)?)))
        .collect();
    for (flag, path) in outputs {
        let Some(id) = identity(&path) else {
            continue;
        };
        if let Some((what, _)) = taken.iter().find(|(_, other)| *other == id) {
            return Err(invalid(
                flag,
                format!("{} is {what}: it would be overwritten", path.display()),
            ));
        }
        taken.push((format!("the --{flag} output"), id));
    }
    Ok(())
}

/// `dir` (the current folder when empty or absent) exists, is a folder, and takes a
/// new file.
fn writable_folder(flag: &str, dir: Option<&Path>) -> reflow::Result<()> {
    let dir = match dir {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(invalid(
            flag,
            format!("folder {} does not exist", dir.display()),
        ));
    }
    let probe = dir.join(format!(".reflow-write-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| invalid(flag, format!("cannot write in {}: {e}", dir.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
