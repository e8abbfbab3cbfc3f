//! `reflow prune` (and the `prune` example): prune a torchvision-layout checkpoint
//! (ResNet, RegNet, MobileNetV2/V3, EfficientNet or VGG-BN) at several sparsities,
//! evaluate it, recalibrate it with REFLOW, evaluate again, and report.
//!
//! The flags and the JSON report are specified in `docs/prune-example.md`.

use crate::protocol::Protocol;
use crate::protocol::{self, identity, invalid, last_ratio, progress_bar, writable_folder};
use clap::Parser;
use reflow::io::{read_cifar, CifarSplit, EvalTransform, ImageSource, SaveFormat};
use reflow::models::{Arch, Model};
use reflow::prelude::*;
use reflow::protocol::{
    CalibrationReport, DenseReport, Layers, ModelReport, Number, Report, RunReport,
};
use reflow::prune::{ChannelReport, PrunePlan};
use reflow::trust::{Fidelity, Repair, MIN_AUTO_IMAGES};
use std::path::PathBuf;
use std::process::ExitCode;

/// Prune a torchvision-layout checkpoint one-shot, then recover it with REFLOW.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Args {
    /// safetensors state dict in torchvision layout, dense or with pruned weights in
    /// compressed-tensors' bitmask layout (--save-format compressed).
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
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present_any = ["cifar_dir", "test_npy", "test_dir"],
        conflicts_with_all = ["cifar_dir", "test_npy", "test_dir"]
    )]
    test_images: Option<PathBuf>,
    /// Test labels, IDX (.gz ok). Without labels the report has no accuracy, only the
    /// fidelity to the dense network (top-1 agreement, KL).
    #[arg(long, value_name = "PATH", requires = "test_images")]
    test_labels: Option<PathBuf>,
    /// Test images, .npy: uint8 [N,H,W] or [N,C,H,W] (normalised with --mean/--std), or
    /// float32 [N,C,H,W] normalised already.
    #[arg(
        long,
        value_name = "X.npy",
        conflicts_with_all = ["cifar_dir", "test_dir"]
    )]
    test_npy: Option<PathBuf>,
    /// Test labels, .npy: int64, int32 or uint8 [N] (optional, as --test-labels).
    #[arg(long, value_name = "Y.npy", requires = "test_npy")]
    test_labels_npy: Option<PathBuf>,
    /// Test images, a folder of JPEG/PNG images in torchvision's ImageFolder layout
    /// (one sub-folder per class, classes sorted by name), or with the images directly
    /// in it (no labels: fidelity only); see --resize, --crop.
    #[arg(long, value_name = "DIR", conflicts_with = "cifar_dir")]
    test_dir: Option<PathBuf>,
    /// Calibration images, IDX (.gz ok); taken in file order (see --calib-seed).
    /// With --cifar-dir, the CIFAR training images when not given.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present_any = ["cifar_dir", "calib_npy", "calib_dir"],
        conflicts_with_all = ["calib_npy", "calib_dir"]
    )]
    calib_images: Option<PathBuf>,
    /// Calibration images, .npy (the dtypes and shapes of --test-npy).
    #[arg(long, value_name = "X.npy", conflicts_with = "calib_dir")]
    calib_npy: Option<PathBuf>,
    /// Calibration images, a folder in ImageFolder layout (one sub-folder or several;
    /// the labels are not used) or with the images directly in it.
    #[arg(long, value_name = "DIR")]
    calib_dir: Option<PathBuf>,
    /// A folder of CIFAR-10 or CIFAR-100 binary files: the test images from its test
    /// split, the calibration images from its training split (unless --calib-images).
    #[arg(long, value_name = "DIR")]
    cifar_dir: Option<PathBuf>,
    /// Draw the --calib-count calibration images by a shuffle of the whole calibration
    /// set seeded with S (default: the first ones, in order).
    #[arg(long, value_name = "S", allow_hyphen_values = true)]
    calib_seed: Option<u64>,
    /// Number of calibration images.
    #[arg(
        long,
        default_value_t = 1024,
        value_name = "N",
        allow_hyphen_values = true
    )]
    calib_count: usize,
    /// Calibration batch size.
    #[arg(
        long,
        default_value_t = 128,
        value_name = "N",
        allow_hyphen_values = true
    )]
    calib_batch: usize,
    /// Resize the shorter side of folder images to N (torchvision's Resize(N):
    /// bilinear, antialiased).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    resize: Option<usize>,
    /// Centre-crop folder images to N x N (torchvision's CenterCrop(N)).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    crop: Option<usize>,
    /// Preprocessing preset: imagenet (--resize 256 --crop 224, mean
    /// 0.485,0.456,0.406, std 0.229,0.224,0.225). Flags given explicitly win.
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// Per-channel means, comma-separated.
    #[arg(
        long,
        value_name = "LIST",
        allow_hyphen_values = true,
        required_unless_present = "preset"
    )]
    mean: Option<String>,
    /// Per-channel standard deviations, comma-separated.
    #[arg(
        long,
        value_name = "LIST",
        allow_hyphen_values = true,
        required_unless_present = "preset"
    )]
    std: Option<String>,
    /// Sparsities, comma-separated, each in [0, 1).
    #[arg(
        long,
        default_value = "0.5,0.7,0.8,0.9",
        value_name = "LIST",
        allow_hyphen_values = true
    )]
    sparsity: String,
    /// Pruning scope: global or layer (unstructured pattern).
    #[arg(long, default_value = "global")]
    scope: String,
    /// Sparsity pattern: unstructured, N:M (e.g. 2:4; one run, --sparsity ignored) or
    /// channel (--sparsity is the fraction of channels removed; a compact network).
    #[arg(long, default_value = "unstructured")]
    pattern: String,
    /// Parameter names or prefixes never pruned, comma-separated.
    #[arg(long, default_value = "", value_name = "LIST")]
    exclude: String,
    /// REFLOW statistic mode: cumulative, ema or exact.
    #[arg(long, default_value = "cumulative")]
    mode: String,
    /// The repair after pruning: reflow (REFLOW with --mode), none (keep the pruned
    /// network), or auto (whichever of the two stays closer to the dense network on
    /// the calibration images, each repair judged on images it was not estimated
    /// from; needs at least 4 calibration images).
    #[arg(long, default_value = "reflow")]
    repair: String,
    /// Momentum for --mode ema (default 0.1).
    #[arg(long, value_name = "M", allow_hyphen_values = true)]
    momentum: Option<f64>,
    /// First N test images used for the per-BN signal metric.
    #[arg(
        long,
        default_value_t = 1000,
        value_name = "N",
        allow_hyphen_values = true
    )]
    signal_images: usize,
    /// Write the JSON report here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Write each run's network, pruned and recalibrated, to <DIR>: s<sparsity>,
    /// nm<N>-<M> or channel-s<sparsity> .safetensors.
    #[arg(long, value_name = "DIR")]
    save_dir: Option<PathBuf>,
    /// How --save-dir writes: dense (every tensor as it is) or compressed (pruned
    /// weights in compressed-tensors' bitmask layout, "sparse-bitmask": smaller files
    /// that reflow reads back and compressed-tensors decompresses).
    #[arg(
        long,
        default_value = "dense",
        value_name = "FORMAT",
        requires = "save_dir"
    )]
    save_format: String,
}

/// Parses the command line (`args` with the program name first) and runs: exit code 0
/// on success, 2 on a malformed command line, 1 on any other error, each a line on
/// stderr. The `prune` example's entry point (`reflow` parses its subcommands itself).
#[allow(dead_code)]
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    match Args::try_parse_from(args) {
        Ok(args) => execute(&args),
        Err(e) => protocol::clap_exit(e),
    }
}

/// Runs parsed arguments.
pub fn execute(args: &Args) -> ExitCode {
    crate::protocol::exit_with(run(args))
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

/// The `--pattern` of the runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pattern {
    /// Magnitude pruning at each `--sparsity`, `--scope`.
    Unstructured,
    /// N:M pruning, one run.
    Nm(usize, usize),
    /// Channel pruning at each `--sparsity`: a compact network.
    Channel,
}

impl Pattern {
    fn parse(text: &str) -> reflow::Result<Pattern> {
        let bad = |why: String| invalid("pattern", format!("\"{text}\": {why}"));
        match text {
            "unstructured" => Ok(Pattern::Unstructured),
            "channel" => Ok(Pattern::Channel),
            _ => {
                let Some((n, m)) = text.split_once(':') else {
                    return Err(bad(
                        "expected unstructured, channel or N:M (e.g. 2:4)".into()
                    ));
                };
                let (Ok(n), Ok(m)) = (n.trim().parse::<usize>(), m.trim().parse::<usize>()) else {
                    return Err(bad("N and M must be whole numbers (e.g. 2:4)".into()));
                };
                NmPruner::new(n, m).map_err(|_| bad("N must be at least 1 and below M".into()))?;
                Ok(Pattern::Nm(n, m))
            }
        }
    }

    /// The JSON `"pattern"` and the table's name of it.
    fn name(self) -> String {
        match self {
            Pattern::Unstructured => "unstructured".into(),
            Pattern::Nm(n, m) => format!("{n}:{m}"),
            Pattern::Channel => "channel".into(),
        }
    }

    /// The file `--save-dir` gets for a run at `s`.
    fn saved_name(self, s: f64) -> String {
        match self {
            Pattern::Unstructured => format!("s{s}.safetensors"),
            Pattern::Nm(n, m) => format!("nm{n}-{m}.safetensors"),
            Pattern::Channel => format!("channel-s{s}.safetensors"),
        }
    }
}

/// Every flag checked before any file is read.
struct Plan {
    arch: Arch,
    stem: Stem,
    scope: Scope,
    pattern: Pattern,
    /// One per run: the `--sparsity` list, or N:M's 1 − N/M.
    sparsities: Vec<f64>,
    exclude: Vec<String>,
    reflow: Reflow,
    norm: Normalization,
    /// The preprocessing of folder images.
    transform: EvalTransform,
    /// How `--save-dir` writes.
    save_format: SaveFormat,
    /// `--repair`.
    repair: RepairKind,
}

/// The `--repair` of the runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RepairKind {
    Reflow,
    None,
    Auto,
}

impl RepairKind {
    fn parse(text: &str) -> reflow::Result<RepairKind> {
        match text {
            "reflow" => Ok(RepairKind::Reflow),
            "none" => Ok(RepairKind::None),
            "auto" => Ok(RepairKind::Auto),
            other => Err(invalid(
                "repair",
                format!("\"{other}\" (expected reflow, none or auto)"),
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            RepairKind::Reflow => "reflow",
            RepairKind::None => "none",
            RepairKind::Auto => "auto",
        }
    }

    /// The repair with REFLOW in `reflow`'s mode.
    fn repair(self, reflow: Reflow) -> Repair {
        match self {
            RepairKind::Reflow => Repair::reflow(reflow),
            RepairKind::None => Repair::None,
            RepairKind::Auto => Repair::auto(reflow),
        }
    }
}

fn plan(args: &Args) -> reflow::Result<Plan> {
    let pattern = Pattern::parse(&args.pattern)?;
    let sparsities: Vec<f64> = match pattern {
        Pattern::Nm(n, m) => vec![1.0 - n as f64 / m as f64],
        _ => parse_list("sparsity", &args.sparsity)?,
    };
    if sparsities.is_empty() {
        return Err(invalid("sparsity", "no value given"));
    }
    for &s in &sparsities {
        PrunePlan::new(s)
            .validate()
            .map_err(|_| invalid("sparsity", format!("{s} is outside [0, 1)")))?;
    }
    if args.momentum.is_some() && args.mode != "ema" {
        return Err(invalid(
            "momentum",
            format!("applies to --mode ema; --mode {} takes none", args.mode),
        ));
    }
    let reflow = match args.mode.as_str() {
        "cumulative" => Reflow::cumulative(),
        "ema" => Reflow::ema(args.momentum.unwrap_or(0.1)),
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
    let repair = RepairKind::parse(&args.repair)?;
    if repair == RepairKind::Auto && args.calib_count < MIN_AUTO_IMAGES {
        return Err(invalid(
            "calib-count",
            format!(
                "{}: --repair auto needs at least {MIN_AUTO_IMAGES} calibration images (each half repairs and judges the other)",
                args.calib_count
            ),
        ));
    }
    if args.calib_batch == 0 {
        return Err(invalid("calib-batch", "must be positive"));
    }
    if args.signal_images == 0 {
        return Err(invalid("signal-images", "must be positive"));
    }
    let preset = match args.preset.as_deref() {
        None => None,
        Some("imagenet") => Some((EvalTransform::imagenet(), Normalization::imagenet())),
        Some(other) => {
            return Err(invalid(
                "preset",
                format!("\"{other}\" (expected imagenet)"),
            ))
        }
    };
    let from_preset = |f: fn(&Normalization) -> &[f32]| {
        preset
            .as_ref()
            .map(|(_, n)| f(n).to_vec())
            .unwrap_or_default()
    };
    let mean = match &args.mean {
        Some(text) => parse_list("mean", text)?,
        None => from_preset(Normalization::mean),
    };
    let std = match &args.std {
        Some(text) => parse_list("std", text)?,
        None => from_preset(Normalization::std),
    };
    let norm = Normalization::new(mean, std)?;
    let transform = EvalTransform {
        resize: args.resize.or(preset.as_ref().and_then(|(t, _)| t.resize)),
        crop: args.crop.or(preset.as_ref().and_then(|(t, _)| t.crop)),
    };
    for (flag, size) in [("resize", args.resize), ("crop", args.crop)] {
        if size == Some(0) {
            return Err(invalid(flag, "the size must be positive"));
        }
        if let Some(size) = size {
            reflow::io::check_image_pixels(flag, size, size).map_err(|e| match e {
                Error::InvalidArgument { reason, .. } => invalid(flag, reason),
                other => other,
            })?;
        }
        if size.is_some() && args.test_dir.is_none() && args.calib_dir.is_none() {
            return Err(invalid(
                flag,
                "applies to image folders (--test-dir, --calib-dir); no folder is given",
            ));
        }
    }
    Ok(Plan {
        arch: args.arch.parse()?,
        stem: args.stem.parse()?,
        scope: args.scope.parse()?,
        pattern,
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
        transform,
        save_format: args.save_format.parse()?,
        repair,
    })
}

/// What a run pruned, beyond the zeros in [`protocol::Run::report`].
enum Pruned {
    Unstructured,
    /// The tensors N:M left dense.
    Nm(Vec<String>),
    /// The channels removed.
    Channel(ChannelReport),
}

impl Pruned {
    /// The fraction pruned: of the prunable weights, or of the channels in scope.
    fn actual(&self, run: &protocol::Run) -> f64 {
        match self {
            Pruned::Channel(r) => r.channel_fraction(),
            _ => run.report.prunable_sparsity(),
        }
    }
}

fn run_report(run: &protocol::Run, pruned: &Pruned, plan: &Plan) -> RunReport {
    let scope = match plan.pattern {
        Pattern::Unstructured => plan.scope,
        _ => Scope::Layer,
    };
    let layers = match pruned {
        Pruned::Channel(report) => Layers::channels(report),
        _ => Layers::tensors(&run.report),
    };
    let mut entry = RunReport::of(
        run,
        &plan.pattern.name(),
        &scope.to_string(),
        pruned.actual(run),
        layers,
    );
    match pruned {
        Pruned::Unstructured => {}
        Pruned::Nm(skipped) => entry.skipped = Some(skipped.clone()),
        Pruned::Channel(report) => {
            entry.skipped = Some(report.skipped.iter().map(|s| s.conv.clone()).collect());
            entry.params = Some(report.params.1);
        }
    }
    entry
}

fn run(args: &Args) -> reflow::Result<()> {
    let plan = plan(args)?;
    let saved: Vec<String> = plan
        .sparsities
        .iter()
        .map(|&s| plan.pattern.saved_name(s))
        .collect();
    check_paths(args, &saved)?;

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
    let runs_ahead = Runs::check(&plan, &net)?;
    let (test, labels, calib_images) = read_data(args, in_channels, num_classes, plan.transform)?;
    let test_flag = match (&args.cifar_dir, &args.test_npy, &args.test_dir) {
        (Some(_), _, _) => "cifar-dir",
        (None, Some(_), _) => "test-npy",
        (None, None, Some(_)) => "test-dir",
        (None, None, None) => "test-images",
    };
    let calib_flag = match (&args.calib_images, &args.calib_npy, &args.calib_dir) {
        (Some(_), _, _) => "calib-images",
        (None, Some(_), _) => "calib-npy",
        (None, None, Some(_)) => "calib-dir",
        (None, None, None) => "cifar-dir",
    };
    let channels = |flag: &str, images: &dyn ImageSource| {
        let c = images.image_dims()[0];
        if c == in_channels {
            return Ok(());
        }
        Err(invalid(
            flag,
            format!("{c}-channel images; the model takes {in_channels} input channel(s)"),
        ))
    };
    if test.is_empty() {
        return Err(invalid(test_flag, "0 test images"));
    }
    channels(test_flag, test.as_ref())?;
    let labels = labels.as_ref().map(|l| l.as_slice());
    let out_of_range = labels.and_then(|l| l.iter().position(|&c| c as usize >= num_classes));
    if let (Some(i), Some(labels)) = (out_of_range, labels) {
        return Err(invalid(
            match test_flag {
                "test-images" => "test-labels",
                "test-npy" => "test-labels-npy",
                other => other,
            },
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
    let given = |flag: &str| -> String {
        let path = match flag {
            "calib-images" => &args.calib_images,
            "calib-npy" => &args.calib_npy,
            "calib-dir" => &args.calib_dir,
            "test-images" => &args.test_images,
            "test-npy" => &args.test_npy,
            "test-dir" => &args.test_dir,
            _ => &args.cifar_dir,
        };
        path.as_ref()
            .map_or(String::new(), |p| format!("{}: ", p.display()))
    };
    if calib_images.is_empty() {
        return Err(invalid(
            calib_flag,
            format!(
                "{}0 images; calibration needs at least one",
                given(calib_flag)
            ),
        ));
    }
    channels(calib_flag, calib_images.as_ref())?;
    enough_values(args, &plan, &net, calib_images.as_ref())?;
    let calibration = ImageBatches::new(
        calib_images.as_ref(),
        args.calib_count,
        args.calib_batch,
        &plan.norm,
    )
    .map_err(|e| match e {
        Error::Data(m) => Error::Data(format!("--{calib_flag}: {m}")),
        other => other,
    })?;
    let calibration = match args.calib_seed {
        Some(seed) => calibration.shuffled(seed),
        None => calibration,
    };
    // The images drawn, before any work (a folder reads their headers).
    calib_images.check(calibration.indices())?;
    let save = |name: String, net: &Model| -> reflow::Result<()> {
        let Some(dir) = &args.save_dir else {
            return Ok(());
        };
        // `check_paths` made the folder and made sure the file is no input.
        StateDict::from_layer(net).write_safetensors_as(dir.join(name), plan.save_format)
    };

    let protocol = Protocol {
        test: test.as_ref(),
        labels,
        norm: &plan.norm,
        calibration: &calibration,
        signal_images: args.signal_images,
        repair: plan.repair.repair(plan.reflow),
    };
    let progress = progress_bar(1 + 2 * plan.sparsities.len() as u64);
    progress.set_message("dense model");
    let dense_state = StateDict::from_layer(&net);
    let dense = protocol.dense(&net)?;
    progress.inc(1);

    let mut runs = Vec::new();
    let label = |s: f64| match plan.pattern {
        Pattern::Nm(..) => plan.pattern.name(),
        _ => format!("{} {s}", plan.pattern.name()),
    };
    match runs_ahead {
        Runs::Unstructured(pruners) => {
            for (&s, pruner) in plan.sparsities.iter().zip(pruners) {
                progress.set_message(label(s));
                let run = protocol.run(&mut net, &dense_state, &dense, s, pruner, &mut || {
                    progress.inc(1)
                })?;
                save(plan.pattern.saved_name(s), &net)?;
                runs.push((run, Pruned::Unstructured));
            }
        }
        Runs::Nm(pruner, skipped) => {
            let s = plan.sparsities[0];
            progress.set_message(label(s));
            let run = protocol.run(&mut net, &dense_state, &dense, s, pruner, &mut || {
                progress.inc(1)
            })?;
            save(plan.pattern.saved_name(s), &net)?;
            runs.push((run, Pruned::Nm(skipped)));
        }
        Runs::Channel(pruners) => {
            for (&s, pruner) in plan.sparsities.iter().zip(pruners) {
                progress.set_message(label(s));
                let started = std::time::Instant::now();
                let (mut compact, report) = pruner.prune(&net)?;
                let run = protocol
                    .run_pruned(&mut compact, &dense, s, started, &mut || progress.inc(1))?;
                save(plan.pattern.saved_name(s), &compact)?;
                runs.push((run, Pruned::Channel(report)));
            }
        }
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
    say!(
        "model: {},{described} {} parameters ({} prunable)",
        arch.family(),
        count_parameters(&net),
        count_prunable(&net)
    );
    let dense_signal = &dense.evaluation.signal;
    say!(
        "dense: {}, last BN signal {:.4}",
        match dense.evaluation.accuracy {
            Some(a) => format!("top-1 {:.4} ({}/{})", a.top1(), a.correct, a.total),
            None => format!("{} test images without labels (fidelity only)", test.len()),
        },
        dense_signal.last().map_or(f64::NAN, |(_, v)| v)
    );
    let (repaired, signal_repaired) = match plan.repair {
        RepairKind::Reflow => ("REFLOW top-1", "signal REFLOW/d"),
        _ => ("repaired top-1", "signal repair/d"),
    };
    say!(
        "{:<7} {:>8} {:>7} {:>13} {:>14} {:>16} {:>16} {:>6}",
        "pruning",
        "sparsity",
        "actual",
        "pruned top-1",
        repaired,
        "signal pruned/d",
        signal_repaired,
        "secs"
    );
    let kind = match plan.pattern {
        Pattern::Unstructured => plan.scope.to_string(),
        other => other.name(),
    };
    for (run, pruned) in &runs {
        say!(
            "{:<7} {:>8.3} {:>7.4} {:>13.4} {:>13.4} {:>16.4} {:>16.4} {:>6.1}",
            kind,
            run.sparsity,
            pruned.actual(run),
            run.pruned.top1(),
            run.repaired.top1(),
            last_ratio(&run.pruned.signal, dense_signal),
            last_ratio(&run.repaired.signal, dense_signal),
            run.secs
        );
    }
    say!(
        "(signal: last batch-norm layer, relative to the dense network, on {} test images)",
        args.signal_images
    );
    say!(
        "fidelity to the dense network on {} test images (top-1 agreement, mean KL), and the repair ({}):",
        test.len(),
        plan.repair.name()
    );
    say!(
        "{:<7} {:>8} {:>12} {:>14} {:>10} {:>12} {:>7}  {}",
        "pruning",
        "sparsity",
        "agree pruned",
        "agree repaired",
        "KL pruned",
        "KL repaired",
        "repair",
        "calibration check (halves' agreement, KL)"
    );
    for (run, _) in &runs {
        let field = |e: &protocol::Evaluation, f: fn(&Fidelity) -> f64| {
            e.fidelity.as_ref().map_or(f64::NAN, f)
        };
        say!(
            "{:<7} {:>8.3} {:>12.4} {:>14.4} {:>10.4} {:>12.4} {:>7}  {}",
            kind,
            run.sparsity,
            field(&run.pruned, |f| f.agreement),
            field(&run.repaired, |f| f.agreement),
            field(&run.pruned, |f| f.kl),
            field(&run.repaired, |f| f.kl),
            run.repair.chosen,
            match &run.repair.check {
                None => "-".to_string(),
                Some(c) => format!(
                    "{:.4}, {:.4}: {}",
                    c.agreement_between_halves,
                    c.kl_between_halves,
                    match (&c.warning, c.images_needed) {
                        (Some(_), Some(n)) => format!("too few, about {n} look needed"),
                        (Some(_), None) => "failed".to_string(),
                        (None, _) => "enough".to_string(),
                    }
                ),
            }
        );
    }
    // The worst check (the largest predicted noise) speaks for the calibration set.
    let worst = CalibrationReport::worst(runs.iter().map(|(run, _)| run));
    if let Some(warning) = worst.and_then(|c| c.warning.as_ref()) {
        say!("calibration: {warning}");
        eprintln!("warning: {warning}");
    }
    if plan.repair == RepairKind::Auto {
        for (run, _) in &runs {
            say!(
                "repair at {}: {} ({})",
                run.sparsity,
                run.repair.chosen,
                run.repair.reason
            );
        }
    }
    for (run, pruned) in &runs {
        match pruned {
            Pruned::Channel(r) => say!(
                "channel {}: {} of {} channels removed in {} convolutions; {} -> {} parameters{}",
                run.sparsity,
                r.removals.iter().map(|c| c.removed.len()).sum::<usize>(),
                r.removals.iter().map(|c| c.channels).sum::<usize>(),
                r.removals.len(),
                r.params.0,
                r.params.1,
                match r.skipped.len() {
                    0 => String::new(),
                    k => format!(" ({k} convolutions skipped: {})", r.skipped[0].reason),
                }
            ),
            Pruned::Nm(skipped) if !skipped.is_empty() => say!(
                "{}: {} tensor(s) left dense (grouped axis not a multiple of M): {}",
                plan.pattern.name(),
                skipped.len(),
                skipped.join(", ")
            ),
            _ => {}
        }
    }

    if let Some(path) = &args.json {
        let source = match (&args.calib_images, &args.calib_npy, &args.calib_dir) {
            (Some(path), _, _) | (None, Some(path), _) | (None, None, Some(path)) => {
                path.display().to_string()
            }
            (None, None, None) => match &args.cifar_dir {
                Some(dir) => format!("{} (training split)", dir.display()),
                None => String::new(),
            },
        };
        let report = Report {
            model: ModelReport::of(&net),
            calibration: CalibrationReport {
                source,
                count: calibration.len(),
                batch: args.calib_batch,
                seed: args.calib_seed,
                agreement_between_halves: worst.map(|c| Number(c.agreement_between_halves)),
                kl_between_halves: worst.map(|c| Number(c.kl_between_halves)),
                images_needed: worst.and_then(|c| c.images_needed),
                warning: worst.and_then(|c| c.warning.clone()),
                indices: args.calib_seed.map(|_| calibration.indices().to_vec()),
            },
            repair: plan.repair.name().to_string(),
            dense: DenseReport::of(&dense.evaluation, test.len()),
            runs: runs
                .iter()
                .map(|(run, pruned)| run_report(run, pruned, &plan))
                .collect(),
        };
        let text = serde_json::to_string_pretty(&report).expect("the report serialises");
        reflow::io::write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}

/// A pruner's error about one of its parameters, as the error of the flag that set it.
fn as_flag(e: Error) -> Error {
    match e {
        Error::InvalidArgument { name, reason } => {
            let flag = match name.as_str() {
                "exclusion" | "exclude" => "exclude",
                "N:M pruning" => "pattern",
                _ => return Error::InvalidArgument { name, reason },
            };
            invalid(flag, reason)
        }
        other => other,
    }
}

/// The runs' pruners, each checked against the network before any data is read.
enum Runs {
    Unstructured(Vec<MagnitudePruner>),
    /// The pruner and the tensors it leaves dense.
    Nm(NmPruner, Vec<String>),
    Channel(Vec<ChannelPruner>),
}

impl Runs {
    fn check(plan: &Plan, net: &Model) -> reflow::Result<Runs> {
        /// `p` with every `--exclude` entry.
        fn excluding<P>(p: P, exclude: &[String], add: fn(P, String) -> P) -> P {
            exclude.iter().cloned().fold(p, add)
        }
        let exclude = &plan.exclude;
        match plan.pattern {
            Pattern::Unstructured => plan
                .sparsities
                .iter()
                .map(|&s| {
                    let p = excluding(
                        MagnitudePruner::new(s).scope(plan.scope),
                        exclude,
                        MagnitudePruner::exclude,
                    );
                    p.plan().check(net).map(|_| p).map_err(as_flag)
                })
                .collect::<reflow::Result<_>>()
                .map(Runs::Unstructured),
            Pattern::Nm(n, m) => {
                let pruner = excluding(NmPruner::new(n, m)?, exclude, NmPruner::exclude);
                let skipped = pruner.skipped(net)?;
                pruner.masks(net).map_err(as_flag)?;
                Ok(Runs::Nm(pruner, skipped))
            }
            Pattern::Channel => {
                if !matches!(net, Model::ResNet(_) | Model::Vgg(_)) {
                    return Err(invalid(
                        "pattern",
                        format!(
                            "channel: channel pruning supports ResNets (each block's conv1, and conv2 in an ungrouped bottleneck) and VGG (every convolution); this network is a {}",
                            net.arch().family()
                        ),
                    ));
                }
                let state = StateDict::from_layer(net);
                let scope = net.channel_scope();
                plan.sparsities
                    .iter()
                    .map(|&s| {
                        let p = excluding(ChannelPruner::new(s)?, exclude, ChannelPruner::exclude);
                        p.select(&state, &scope).map(|_| p).map_err(as_flag)
                    })
                    .collect::<reflow::Result<_>>()
                    .map(Runs::Channel)
            }
        }
    }
}

/// Images of any source, chosen at run time.
type Source = Box<dyn ImageSource>;

/// `.npy` files, when the build has the `npy` feature (the `reflow` command always has).
mod npy {
    use super::Source;
    use std::path::Path;

    /// Float images whose values pass this are taken for unnormalised pixels.
    #[cfg(feature = "npy")]
    const NORMALISED_LIMIT: f32 = 50.0;

    #[cfg(feature = "npy")]
    pub fn images(flag: &str, path: &Path) -> reflow::Result<Source> {
        let images = reflow::io::NpyImages::read(path)?;
        if let reflow::io::NpyImages::Normalized(floats) = &images {
            let max = floats.max_abs();
            if max > NORMALISED_LIMIT {
                return Err(super::invalid(
                    flag,
                    format!(
                        "{}: float32 values up to {max} look like pixels, but float32 images are taken as normalised already (--mean/--std apply to uint8 images): normalise them, or save them as uint8",
                        path.display()
                    ),
                ));
            }
        }
        Ok(Box::new(images))
    }

    #[cfg(feature = "npy")]
    pub fn labels(path: &Path) -> reflow::Result<reflow::io::IdxLabels> {
        reflow::io::read_npy_labels(path)
    }

    #[cfg(not(feature = "npy"))]
    pub fn images(flag: &str, _: &Path) -> reflow::Result<Source> {
        Err(super::invalid(
            flag,
            "this build reads no .npy files: build with --features npy (the reflow command has it)",
        ))
    }

    #[cfg(not(feature = "npy"))]
    pub fn labels(_: &Path) -> reflow::Result<reflow::io::IdxLabels> {
        Err(super::invalid(
            "test-labels-npy",
            "this build reads no .npy files: build with --features npy",
        ))
    }
}

/// Image folders, when the build has the `image` feature (the `reflow` command
/// always has).
mod folder {
    use super::Source;
    use reflow::io::{EvalTransform, IdxLabels};
    use std::path::Path;

    /// The folder's images, and their labels when it has class sub-folders: a test
    /// folder (`classes`, the model's) with its class count checked and every header
    /// read; a calibration folder (`None`: of which a run draws a few) only listed, the
    /// run checks what it draws.
    #[cfg(feature = "image")]
    pub fn images(
        flag: &str,
        dir: &Path,
        channels: usize,
        transform: EvalTransform,
        classes: Option<usize>,
    ) -> reflow::Result<(Source, Option<IdxLabels>)> {
        use reflow::io::ImageFolder;
        if !dir.is_dir() {
            return Err(super::invalid(
                flag,
                format!("{} is not a folder", dir.display()),
            ));
        }
        // Listing a large folder and reading its headers takes a while.
        let spinner = indicatif::ProgressBar::new_spinner();
        spinner.set_message(format!("--{flag}: reading {}", dir.display()));
        spinner.enable_steady_tick(std::time::Duration::from_millis(120));
        let images = ImageFolder::scan_unlabelled(dir, channels, transform).and_then(|images| {
            if let Some(classes) = classes.filter(|_| images.is_labelled()) {
                let found = images.classes();
                if found.len() > classes {
                    return Err(super::invalid(
                        flag,
                        format!(
                            "{} class folders, but the model has {classes} classes (the first without one: \"{}\")",
                            found.len(),
                            found[classes]
                        ),
                    ));
                }
            }
            if classes.is_some() {
                let large = images.check(&(0..images.paths().len()).collect::<Vec<_>>())?;
                if let Some(first) = large.first() {
                    eprintln!(
                        "warning: --{flag}: {} image(s) above {} pixels (Pillow warns of a possible decompression bomb), the first {}",
                        large.len(),
                        reflow::io::MAX_IMAGE_PIXELS,
                        first.display()
                    );
                }
            }
            Ok(images)
        });
        spinner.finish_and_clear();
        let images = images?;
        let labels = images.is_labelled().then(|| images.labels());
        Ok((Box::new(images), labels))
    }

    #[cfg(not(feature = "image"))]
    pub fn images(
        flag: &str,
        _: &Path,
        _: usize,
        _: EvalTransform,
        _: Option<usize>,
    ) -> reflow::Result<(Source, Option<IdxLabels>)> {
        Err(super::invalid(
            flag,
            "this build reads no image folders: build with --features image (the reflow command has it)",
        ))
    }
}

/// The test images, their labels when given, and the calibration images: IDX files,
/// `.npy` arrays, a CIFAR folder or image folders (read as `channels`, a labelled test
/// folder of at most `classes` classes, preprocessed by `transform`), any test source
/// with any calibration source.
fn read_data(
    args: &Args,
    channels: usize,
    classes: usize,
    transform: EvalTransform,
) -> reflow::Result<(Source, Option<IdxLabels>, Source)> {
    let boxed = |images: IdxImages| -> Source { Box::new(images) };
    /// Images with their labels, the counts checked.
    fn labelled(images: Source, labels: IdxLabels) -> reflow::Result<(Source, Option<IdxLabels>)> {
        let (images, labels) = Dataset::new(images, labels)?.into_parts();
        Ok((images, Some(labels)))
    }
    let (test, labels) = match (&args.cifar_dir, &args.test_images, &args.test_npy) {
        _ if args.test_dir.is_some() => {
            let dir = args.test_dir.as_ref().expect("matched");
            let (images, labels) = folder::images("test-dir", dir, channels, transform, Some(classes))?;
            match labels {
                Some(labels) => labelled(images, labels)?,
                None => (images, None),
            }
        }
        (Some(dir), _, _) => {
            let (images, labels) = read_cifar(dir, CifarSplit::Test)?.1.into_parts();
            labelled(boxed(images), labels)?
        }
        (None, Some(images), _) => {
            let images = boxed(IdxImages::read(images)?);
            match &args.test_labels {
                Some(labels) => labelled(images, IdxLabels::read(labels)?)?,
                None => (images, None),
            }
        }
        (None, None, Some(images)) => {
            let images = npy::images("test-npy", images)?;
            match &args.test_labels_npy {
                Some(labels) => labelled(images, npy::labels(labels)?)?,
                None => (images, None),
            }
        }
        _ => {
            return Err(invalid(
                "test-images",
                "give --test-images (and --test-labels), --test-npy (and --test-labels-npy), --test-dir or --cifar-dir",
            ))
        }
    };
    let calib: Source = match (&args.calib_images, &args.calib_npy, &args.cifar_dir) {
        _ if args.calib_dir.is_some() => {
            let dir = args.calib_dir.as_ref().expect("matched");
            folder::images("calib-dir", dir, channels, transform, None)?.0
        }
        (Some(path), _, _) => boxed(IdxImages::read(path)?),
        (None, Some(path), _) => npy::images("calib-npy", path)?,
        (None, None, Some(dir)) => boxed(read_cifar(dir, CifarSplit::Train)?.1.into_parts().0),
        (None, None, None) => return Err(invalid("calib-images", "not given")),
    };
    Ok((test, labels, calib))
}

/// Before any forward pass over the data: every batch norm gets at least two values
/// per channel to compute a variance from — in each calibration batch for the
/// running modes, in the whole calibration set for `exact`. How many values a batch
/// norm sees per image is measured on one blank image.
fn enough_values(
    args: &Args,
    plan: &Plan,
    net: &Model,
    images: &dyn ImageSource,
) -> reflow::Result<()> {
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
    let [c, h, w] = images.image_dims();
    // The probe is one image of the calibration set's size: bounded like any image.
    reflow::io::check_image_pixels("calibration images", h, w)?;
    let mut smallest = Smallest(usize::MAX);
    let blank = reflow::nn::Tensor4::zeros((1, c, h, w));
    net.forward_with(&blank, &mut Probe::new(&mut smallest))?;
    let per_image = smallest.0;
    let count = args.calib_count.min(images.len());
    // `--repair auto` also repairs from each half of the images.
    let mut sets = vec![(count, String::new())];
    if plan.repair == RepairKind::Auto {
        sets.push((
            count.div_ceil(2),
            " (half of them, for --repair auto)".into(),
        ));
        sets.push((count / 2, " (half of them, for --repair auto)".into()));
    }
    for (count, which) in sets {
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
                    "{images_at_once} image(s){which} of {h}x{w} give the smallest batch norms {} value(s) per channel; a variance needs two",
                    images_at_once.saturating_mul(per_image)
                ),
            ));
        }
    }
    Ok(())
}

/// Before any work: every input a regular file; every output's folder there and
/// writable; no output the same file as an input or as another output (so that
/// nothing given is ever overwritten). Makes `--save-dir` when it does not exist.
fn check_paths(args: &Args, saved: &[String]) -> reflow::Result<()> {
    let mut inputs = vec![("weights", args.weights.clone())];
    let given = [
        ("test-images", &args.test_images),
        ("test-labels", &args.test_labels),
        ("test-npy", &args.test_npy),
        ("test-labels-npy", &args.test_labels_npy),
        ("calib-images", &args.calib_images),
        ("calib-npy", &args.calib_npy),
    ];
    inputs.extend(given.iter().filter_map(|(f, p)| Some((*f, (*p).clone()?))));
    if let Some(dir) = &args.cifar_dir {
        if !dir.is_dir() {
            return Err(invalid(
                "cifar-dir",
                format!("{} is not a folder", dir.display()),
            ));
        }
        let files = std::fs::read_dir(dir)
            .map_err(|e| invalid("cifar-dir", format!("{}: {e}", dir.display())))?;
        inputs.extend(
            files
                .filter_map(|f| Some(f.ok()?.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "bin"))
                .map(|p| ("cifar-dir", p)),
        );
    }
    for (flag, path) in &inputs {
        let (flag, path) = (*flag, path);
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
        outputs.extend(saved.iter().map(|name| ("save-dir", dir.join(name))));
    }
    // After --save-dir is made: the report may go into it.
    if let Some(json) = &args.json {
        if json.is_dir() {
            return Err(invalid(
                "json",
                format!("{} is a folder; give a file name", json.display()),
            ));
        }
        writable_folder("json", json.parent())?;
        outputs.push(("json", json.clone()));
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
