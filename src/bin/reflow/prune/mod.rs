//! `reflow prune`: prune a torchvision-layout checkpoint (any family of
//! `reflow::models::FAMILIES`) at several sparsities,
//! evaluate it, repair it (REFLOW, nothing, or the automatic choice), evaluate again, and report.
//!
//! The flags and the JSON report are specified in `docs/prune-example.md`.
//!
//! The command in files: the flags and their plan (`plan.rs`), the data (`data.rs`),
//! the paths checked before work (`paths.rs`), and the tables and the JSON report
//! (`report.rs`); this file runs them in order.

mod data;
mod paths;
mod plan;
mod report;

use super::protocol::Protocol;
use super::protocol::{invalid, progress_bar};
use clap::Parser;
use data::read_data;
use paths::check_paths;
use plan::{as_flag, plan};
use reflow::data::FirstImages;
use reflow::io::ImageSource;
use reflow::models::Model;
use reflow::prelude::*;
use reflow::protocol::Progress as Step;
use reflow::protocol::Shard;
use report::finish;
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
    /// How the weights to remove are chosen (unstructured and N:M patterns): magnitude
    /// (the smallest |w|), wanda (the smallest |w|·‖x‖ of each output row) or sparsegpt
    /// (SparseGPT's choice from the inverse Hessian of each layer's inputs, with its
    /// update of the weights kept); wanda and sparsegpt measure their statistics on the
    /// dense network over the calibration images, and prune every layer alike
    /// (--scope does not apply).
    #[arg(long, default_value = "magnitude")]
    method: String,
    /// Which network wanda and sparsegpt measure each layer's inputs on: dense (the
    /// dense network, once before the runs) or sequential (layer by layer, each
    /// layer's inputs from the network with the layers before it already pruned; one
    /// pass over the calibration images per layer and run).
    #[arg(long, default_value = "dense")]
    inputs: String,
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
    /// Evaluate the first N test images only (default: all of them).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    test_count: Option<usize>,
    /// First N test images used for the per-BN signal metric (default 1000, or every
    /// test image when there are fewer).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    signal_images: Option<usize>,
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
    /// Evaluate one shard of a sweep: I/N, I counting from 0. The N shards split the
    /// test images between them (each computes the prunings and the repairs whole),
    /// and --json gets a partial report; `reflow merge` combines the N into the report
    /// one process would have written (docs/scaling.md). Only shard 0 writes
    /// --save-dir.
    #[arg(long, value_name = "I/N", requires = "json")]
    shard: Option<String>,
}

/// Runs parsed arguments.
pub fn execute(args: &Args) -> ExitCode {
    crate::protocol::exit_with(run(args))
}

fn run(args: &Args) -> reflow::Result<()> {
    let plan = plan(args)?;
    check_paths(args, &plan.study.saved_names())?;

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
    let runs = plan.study.pruners(&net).map_err(as_flag)?;
    let (test, labels, calib_images, calib_flag) =
        read_data(args, in_channels, num_classes, plan.transform)?;
    let test: reflow::protocol::Source = match args.test_count {
        None => test,
        Some(n) => Box::new(FirstImages::new(test, n).map_err(|e| match e {
            Error::InvalidArgument { reason, .. } => invalid("test-count", reason),
            other => other,
        })?),
    };
    let labels = labels.as_ref().map(|l| &l.as_slice()[..test.len()]);
    let signal_images =
        reflow::protocol::signal_images(args.signal_images, test.len()).map_err(as_flag)?;
    let counts = (args.calib_count, args.calib_batch);
    let calibration = plan
        .study
        .calibration(
            &net,
            calib_images.as_ref(),
            counts,
            args.calib_seed,
            &plan.norm,
        )
        .map_err(|e| match e {
            Error::Data(m) => Error::Data(format!("--{calib_flag}: {m}")),
            other => as_flag(other),
        })?;
    let protocol = Protocol {
        test: test.as_ref(),
        labels,
        norm: &plan.norm,
        calibration: &calibration,
        signal_images,
        repair: plan.study.repair.repair(plan.study.reflow),
        shard: plan.shard,
    };
    // A shard's part of the test images, checked before any pass.
    let blocks = protocol.blocks().map_err(as_flag)?;
    let images = match (blocks.first(), blocks.last()) {
        (Some(first), Some(last)) => first.start..last.end,
        _ => 0..0,
    };
    if plan.shard != Shard::WHOLE {
        say!(
            "shard {}: test images {}..{} of {}{}",
            plan.shard,
            images.start,
            images.end,
            test.len(),
            match (&args.save_dir, plan.shard.index()) {
                (Some(_), 1..) => " (shard 0 writes --save-dir)",
                _ => "",
            }
        );
    }
    let progress = progress_bar(1 + 2 * plan.study.sparsities.len() as u64);
    progress.set_message("dense model");
    let dense = protocol.dense(&net)?;
    progress.inc(1);

    let mut save = |name: &str, net: &Model| -> reflow::Result<()> {
        let Some(dir) = args.save_dir.as_ref().filter(|_| plan.shard.index() == 0) else {
            return Ok(());
        };
        // `check_paths` made the folder and made sure the file is no input.
        StateDict::from_layer(net).write_safetensors_as(dir.join(name), plan.save_format)
    };
    let mut show = |step: Step<'_>| match step {
        Step::Run(label) => progress.set_message(label.to_string()),
        Step::Pass => progress.inc(1),
    };
    let runs = protocol.study(&mut net, &plan.study, runs, &dense, &mut save, &mut show)?;
    progress.finish_and_clear();
    finish(args, &plan, &net, &dense, &runs, (&protocol, images))
}
