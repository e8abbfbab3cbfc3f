//! `reflow prune` as a user runs it: a small successful run with every output, and
//! one clear line on stderr (no panic, no backtrace) for each kind of bad input.
//! `.ci/run` runs it with `--features cli`.
#![cfg(feature = "cli")]

mod common;

use reflow::prelude::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn gz_idx(path: &Path, dims: &[u32], data: &[u8]) {
    common::write_idx(path, dims, data, true);
}

/// 3-channel 16x16 images (the ResNet-20 fixture takes 3 channels): 40 test images,
/// 24 calibration images.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pixels = common::pixels;
        gz_idx(
            &dir.path().join("test-images.gz"),
            &[40, 3, 16, 16],
            &pixels(40, 1),
        );
        gz_idx(
            &dir.path().join("test-labels.gz"),
            &[40],
            &(0..40).map(|i| (i % 10) as u8).collect::<Vec<_>>(),
        );
        gz_idx(&dir.path().join("short-labels.gz"), &[39], &[0; 39]);
        gz_idx(&dir.path().join("no-images.gz"), &[0, 3, 16, 16], &[]);
        gz_idx(
            &dir.path().join("calib-images.gz"),
            &[24, 3, 16, 16],
            &pixels(24, 2),
        );
        Files { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    fn args(&self) -> Vec<String> {
        let weights = common::fixture("resnet20_cifar.safetensors");
        [
            "--weights",
            weights.to_str().unwrap(),
            "--stem",
            "cifar",
            "--test-images",
            &self.path("test-images.gz"),
            "--test-labels",
            &self.path("test-labels.gz"),
            "--calib-images",
            &self.path("calib-images.gz"),
            "--calib-count",
            "16",
            "--calib-batch",
            "8",
            "--signal-images",
            "10",
            "--mean",
            "0.5,0.5,0.5",
            "--std",
            "0.25,0.25,0.25",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

fn run(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reflow"))
        .arg("prune")
        .args(args)
        .output()
        .unwrap()
}

/// `args` with the value of `flag` replaced (or the flag added).
fn with(mut args: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    match args.iter().position(|a| a == flag) {
        Some(i) => args[i + 1] = value.to_string(),
        None => args.extend([flag.to_string(), value.to_string()]),
    }
    args
}

/// Runs the tool with `args`: a non-zero exit and one line on stderr that contains
/// `needle` (no panic, no backtrace).
fn fails_with_one_line(args: &[String], needle: &str) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{needle}: exit 0");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{needle}: {stderr}");
    assert!(stderr.contains(needle), "{needle}: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[test]
fn a_small_run_reports_prunes_recalibrates_and_saves() {
    let files = Files::new();
    let json = files.path("report.json");
    let save = files.path("saved");
    let mut args = with(files.args(), "--sparsity", "0.5,0.9");
    args = with(args, "--json", &json);
    args = with(args, "--save-dir", &save);
    args = with(args, "--exclude", "conv1,fc");
    let out = run(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("REFLOW top-1") && stdout.contains("0.900"),
        "{stdout}"
    );

    let report = common::report(&out, &json);
    assert_eq!(report["model"]["family"], "resnet");
    assert_eq!(report["model"]["stages"], serde_json::json!([3, 3, 3]));
    assert_eq!(report["model"]["block"], "basic");
    assert_eq!(report["model"]["params"], 272_474);
    assert_eq!(
        report["dense"]["correct"].as_u64().unwrap() as f64 / 40.0,
        report["dense"]["top1"].as_f64().unwrap()
    );
    let dense_signal = report["dense"]["bn_signal"].as_object().unwrap();
    assert_eq!(dense_signal.len(), 21);
    assert_eq!(dense_signal.keys().next().unwrap(), "bn1", "forward order");
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for (run, s) in runs.iter().zip([0.5, 0.9]) {
        assert_eq!(run["sparsity"], s);
        assert_eq!(run["scope"], "global");
        assert!(run["bn_signal_pruned"]
            .as_object()
            .unwrap()
            .contains_key("layer2.0.downsample.1"));
        let layers = run["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 22);
        assert_eq!(layers[0]["name"], "conv1.weight");
        assert_eq!(layers[0]["sparsity"], 0.0, "conv1 excluded");
        // actual_sparsity counts every conv/linear weight, the excluded ones too.
        let actual = run["actual_sparsity"].as_f64().unwrap();
        assert!(actual < s && actual > s - 0.01, "{actual}");
    }

    // The saved checkpoint is the pruned, recalibrated network: it loads strictly and
    // has the run's sparsity.
    let net = ResNet::load(format!("{save}/s0.9.safetensors")).unwrap();
    let sparsity = reflow::prune::SparsityReport::measure(&net).prunable_sparsity();
    assert_eq!(sparsity, runs[1]["actual_sparsity"].as_f64().unwrap());
    assert!(Path::new(&format!("{save}/s0.5.safetensors")).exists());
}

#[test]
fn save_format_compressed_writes_smaller_checkpoints_that_load_back() {
    let files = Files::new();
    let json = files.path("report.json");
    let save = files.path("saved");
    let mut args = with(files.args(), "--sparsity", "0.9");
    args = with(args, "--json", &json);
    args = with(args, "--save-dir", &save);
    args = with(args, "--save-format", "compressed");
    let report = common::report(&run(&args), &json);

    let path = format!("{save}/s0.9.safetensors");
    let net = ResNet::load(&path).unwrap();
    let sparsity = SparsityReport::measure(&net).prunable_sparsity();
    assert_eq!(
        sparsity,
        report["runs"][0]["actual_sparsity"].as_f64().unwrap()
    );
    // The pruned weights are stored in the bitmask layout, in under a third of the
    // dense file's bytes.
    let bytes = std::fs::read(&path).unwrap();
    let raw = common::Raw::of(&bytes);
    assert!(raw.entries.contains_key("layer3.2.conv2.bitmask"));
    assert!(!raw.entries.contains_key("layer3.2.conv2.weight"));
    let dense = StateDict::from_layer(&net).to_safetensors_bytes().unwrap();
    assert!(
        bytes.len() * 3 < dense.len(),
        "{} / {} bytes",
        bytes.len(),
        dense.len()
    );
}

#[test]
fn nm_and_channel_patterns_report_and_save() {
    let files = Files::new();
    let json = files.path("nm.json");
    let save = files.path("saved");
    let args = with(files.args(), "--json", &json);
    let args = with(with(args, "--save-dir", &save), "--pattern", "2:4");
    let out = run(&args);
    let report = common::report(&out, &json);
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "N:M is one run, whatever --sparsity says");
    assert_eq!(runs[0]["pattern"], "2:4");
    assert_eq!(runs[0]["sparsity"], 0.5);
    assert_eq!(runs[0]["skipped"], serde_json::json!(["conv1.weight"]));
    let actual = runs[0]["actual_sparsity"].as_f64().unwrap();
    assert!(actual < 0.5 && actual > 0.49, "{actual}");
    // The saved network holds 2:4 masks: pruning it again removes nothing more.
    let net = ResNet::load(format!("{save}/nm2-4.safetensors")).unwrap();
    let again = NmPruner::new(2, 4).unwrap().masks(&net).unwrap();
    let zeros = SparsityReport::measure(&net);
    for (name, mask) in again.iter() {
        assert_eq!(
            mask.pruned_count(),
            zeros.tensor(name).unwrap().zeros,
            "{name}"
        );
    }

    let json = files.path("channel.json");
    let args = with(files.args(), "--json", &json);
    let args = with(with(args, "--save-dir", &save), "--pattern", "channel");
    let out = run(&with(args, "--sparsity", "0.3,0.5"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("channel 0.5: 168 of 336 channels removed"),
        "{stdout}"
    );
    let report = common::report(&out, &json);
    let dense_params = report["model"]["params"].as_u64().unwrap();
    for (run, s) in report["runs"].as_array().unwrap().iter().zip([0.3, 0.5]) {
        assert_eq!(run["pattern"], "channel");
        assert_eq!(run["sparsity"], s);
        let layers = run["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 9, "conv1 of every basic block");
        assert_eq!(layers[0]["name"], "layer1.0.conv1");
        let kept = if s == 0.3 { 11 } else { 8 };
        assert_eq!(layers[0]["kept"], kept, "16 - round({s} * 16)");
        // The compact checkpoint loads as the network the run measured.
        let net = ResNet::load(format!("{save}/channel-s{s}.safetensors")).unwrap();
        let params = run["params"].as_u64().unwrap();
        assert_eq!(count_parameters(&net) as u64, params);
        assert!(params < dense_params);
        assert_eq!(net.config().branch_widths(0, 0).0, kept);
    }
}

#[test]
fn the_wanda_method_prunes_each_row_by_the_calibration_images_input_norms() {
    let files = Files::new();
    let json = files.path("wanda.json");
    let save = files.path("saved");
    let args = with(with(files.args(), "--json", &json), "--save-dir", &save);
    let args = with(with(args, "--method", "wanda"), "--sparsity", "0.5");
    let out = run(&with(args.clone(), "--exclude", "fc"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = common::report(&out, &json);
    assert!(stdout.contains("wanda      0.500"), "{stdout}");
    assert_eq!(report["method"], "wanda");
    assert_eq!(report["inputs"], "dense");
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(
        (runs[0]["pattern"].as_str(), runs[0]["scope"].as_str()),
        (Some("unstructured"), Some("layer"))
    );
    // The saved network's zeros are Wanda's masks of the dense network, its input
    // norms measured on the first 16 calibration images as the command normalises
    // them.
    let dense = ResNet::load(common::fixture("resnet20_cifar.safetensors")).unwrap();
    let images = IdxImages::read(files.path("calib-images.gz")).unwrap();
    let norm = Normalization::new(vec![0.5; 3], vec![0.25; 3]).unwrap();
    let batches = ImageBatches::new(&images, 16, 8, &norm).unwrap();
    let norms = reflow::prune::InputNorms::measure(&dense, &batches).unwrap();
    let masks = reflow::prune::WandaPruner::new(0.5, norms)
        .exclude("fc")
        .masks(&dense)
        .unwrap();
    let saved = ResNet::load(format!("{save}/s0.5.safetensors")).unwrap();
    let mut compared = 0;
    saved.visit_params(&mut |p| {
        if let Some(mask) = masks.get(p.name) {
            for (i, &v) in p.data.iter().enumerate() {
                assert_eq!(v == 0.0, mask.is_pruned(i), "{} at {i}", p.name);
            }
            compared += 1;
        }
    });
    assert_eq!(compared, 21, "every convolution; fc excluded");
    // Not magnitude's per-layer masks: the input norms changed the choice.
    let magnitude = MagnitudePruner::new(0.5).scope(reflow::prune::Scope::Layer);
    assert_ne!(magnitude.masks(&dense).unwrap(), masks);

    // N:M by Wanda's scores, and the method's bad input.
    let out = run(&with(
        with(args.clone(), "--pattern", "2:4"),
        "--json",
        &json,
    ));
    let report = common::report(&out, &json);
    assert_eq!(report["runs"][0]["pattern"], "2:4");
    assert_eq!(
        report["runs"][0]["skipped"],
        serde_json::json!(["conv1.weight"])
    );
    fails_with_one_line(
        &with(args.clone(), "--method", "obs"),
        "invalid --method: \"obs\" (expected magnitude, wanda or sparsegpt)",
    );
    fails_with_one_line(
        &with(args.clone(), "--pattern", "channel"),
        "wanda chooses weights, not channels",
    );
    fails_with_one_line(
        &with(args.clone(), "--inputs", "pruned"),
        "invalid --inputs: \"pruned\" (expected dense or sequential)",
    );
    fails_with_one_line(
        &with(
            with(args, "--method", "magnitude"),
            "--inputs",
            "sequential",
        ),
        "invalid --inputs: sequential: magnitude pruning measures no inputs",
    );
}

/// A CIFAR-10 folder of `test` test and 2 × `train` training records, labels `i % 10`.
fn cifar_folder(dir: &Path, test: usize, train: usize) {
    let records = |n: usize, seed: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                std::iter::once((i % 10) as u8)
                    .chain((0..3072).map(move |p| ((p * 2_654_435_761 + i * 7 + seed) >> 9) as u8))
            })
            .collect()
    };
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("test_batch.bin"), records(test, 1)).unwrap();
    std::fs::write(dir.join("data_batch_1.bin"), records(train, 2)).unwrap();
    std::fs::write(dir.join("data_batch_2.bin"), records(train, 3)).unwrap();
}

#[test]
fn a_cifar_folder_and_a_seeded_calibration_subset() {
    let files = Files::new();
    let cifar = files.dir.path().join("cifar");
    cifar_folder(&cifar, 30, 200);
    let json = files.path("cifar.json");
    let weights = common::fixture("resnet20_cifar.safetensors");
    let args: Vec<String> = [
        "--weights",
        weights.to_str().unwrap(),
        "--stem",
        "cifar",
        "--cifar-dir",
        cifar.to_str().unwrap(),
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.25,0.25,0.25",
        "--calib-count",
        "256",
        "--signal-images",
        "10",
        "--sparsity",
        "0.5",
        "--json",
        &json,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run(&with(args.clone(), "--calib-seed", "7"));
    let report = common::report(&out, &json);
    let calib = &report["calibration"];
    assert_eq!(calib["seed"], 7);
    assert_eq!(calib["count"], 256);
    let indices: Vec<u64> = calib["indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    // The order scripts/reference.py's `shuffled(400, 7)` gives (the same generator).
    assert_eq!(indices[..8], [64, 346, 240, 66, 220, 196, 358, 159]);
    let mut distinct = indices.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 256);
    assert!(
        distinct.iter().all(|&i| i < 400),
        "two training files of 200"
    );
    assert!(report["dense"]["correct"].as_u64().unwrap() <= 30);

    // Without a seed: the first images in order, no index list.
    let plain = args;
    let report = common::report(&run(&plain), &json);
    assert_eq!(report["calibration"]["seed"], Value::Null);
    assert!(report["calibration"].get("indices").is_none());
}

#[test]
fn bad_input_is_one_line_on_stderr_and_a_nonzero_exit() {
    let files = Files::new();
    let base = files.args();
    // The fixture's flags with a CIFAR folder as the only data.
    let cifar_only = |dir: &str| -> Vec<String> {
        let weights = common::fixture("resnet20_cifar.safetensors");
        let weights = weights.to_string_lossy();
        ["--weights", &weights, "--cifar-dir", dir, "--stem", "cifar"]
            .into_iter()
            .chain(["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"])
            .map(String::from)
            .collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            with(base.clone(), "--weights", "/nonexistent/model.safetensors"),
            "No such file",
        ),
        (
            with(
                base.clone(),
                "--weights",
                common::fixture("layers.safetensors").to_str().unwrap(),
            ),
            "fits no supported family",
        ),
        (
            with(
                with(base.clone(), "--arch", "resnet"),
                "--weights",
                common::fixture("layers.safetensors").to_str().unwrap(),
            ),
            "not a ResNet state dict",
        ),
        (
            with(base.clone(), "--arch", "vgg16_bn"),
            "not a VGG state dict",
        ),
        (
            with(base.clone(), "--arch", "alexnet"),
            "invalid arch: \"alexnet\" is none of auto, resnet",
        ),
        (
            with(base.clone(), "--weights", &files.path("test-labels.gz")),
            "not a valid safetensors file",
        ),
        (
            with(base.clone(), "--sparsity", "0.5,1.2"),
            "1.2 is outside [0, 1)",
        ),
        (with(base.clone(), "--sparsity", "NaN"), "outside [0, 1)"),
        (
            with(base.clone(), "--calib-count", "0"),
            "empty calibration set",
        ),
        (with(base.clone(), "--calib-count", "25"), "the source has 24"),
        (
            with(base.clone(), "--mean", "0.5"),
            "1 means and 3 standard deviations",
        ),
        (
            with(with(base.clone(), "--mean", "0.5"), "--std", "0.2"),
            "1 values given; the model takes 3",
        ),
        (
            with(
                base.clone(),
                "--test-labels",
                &files.path("short-labels.gz"),
            ),
            "40 images but 39 labels",
        ),
        (
            with(base.clone(), "--test-images", &files.path("test-labels.gz")),
            "invalid IDX file",
        ),
        (with(base.clone(), "--stem", "imagenet"), "is --stem right?"),
        (
            with(base.clone(), "--stem", "mobile"),
            "expected \"cifar\" or \"imagenet\"",
        ),
        (
            with(base.clone(), "--scope", "channel"),
            "expected \"global\" or \"layer\"",
        ),
        (
            with(base.clone(), "--exclude", "layer9"),
            "\"layer9\" matches no prunable parameter",
        ),
        (
            with(base.clone(), "--mode", "magic"),
            "expected cumulative, ema or exact",
        ),
        (
            with(with(base.clone(), "--mode", "ema"), "--momentum", "0"),
            "momentum",
        ),
        (
            with(base.clone(), "--signal-images", "41"),
            "the test set has 40",
        ),
        (
            with(base.clone(), "--test-count", "41"),
            "--test-count: 41 asked for, the source has 40",
        ),
        (
            with(base.clone(), "--test-count", "0"),
            "--test-count: must be positive",
        ),
        (
            // The signal images come from the test images kept.
            with(with(base.clone(), "--test-count", "8"), "--signal-images", "10"),
            "the test set has 8",
        ),
        (
            with(base.clone(), "--calib-batch", "x"),
            "invalid value 'x'",
        ),
        (
            vec!["--weights".into(), "w.safetensors".into()],
            "required arguments were not provided",
        ),
        (
            with(base.clone(), "--cifar-dir", "/nonexistent/cifar"),
            "cannot be used with",
        ),
        (
            cifar_only("/nonexistent/cifar"),
            "invalid --cifar-dir: /nonexistent/cifar is not a folder",
        ),
        (
            cifar_only(&files.path("")),
            "no CIFAR binary files",
        ),
        (
            with(base.clone(), "--calib-npy", "c.npy"),
            "'--calib-images <PATH>' cannot be used with '--calib-npy <X.npy>'",
        ),
        (
            // An IDX file given as .npy. (A build without the npy feature names it:
            // `tests/npy.rs`.)
            {
                let at = base.iter().position(|a| a == "--calib-images").unwrap();
                let mut args = base.clone();
                args.drain(at..at + 2);
                with(args, "--calib-npy", &files.path("calib-images.gz"))
            },
            "calib-images.gz",
        ),
        (
            with(base.clone(), "--calib-seed", "x"),
            "invalid value 'x' for '--calib-seed <S>'",
        ),
        (
            with(base.clone(), "--pattern", "3:2"),
            "invalid --pattern: \"3:2\": N must be at least 1 and below M",
        ),
        (
            with(base.clone(), "--pattern", "0:4"),
            "\"0:4\": N must be at least 1 and below M",
        ),
        (
            with(base.clone(), "--pattern", "2:0"),
            "\"2:0\": N must be at least 1 and below M",
        ),
        (
            with(base.clone(), "--pattern", "2:x"),
            "N and M must be whole numbers",
        ),
        (
            with(base.clone(), "--pattern", "blocks"),
            "expected unstructured, channel or N:M",
        ),
        (
            with(
                with(base.clone(), "--pattern", "channel"),
                "--sparsity",
                "0.3,1",
            ),
            "invalid --sparsity: 1 is outside [0, 1)",
        ),
        (
            // The 3-channel stem, 16, 32 and 64 channels: none a multiple of 128.
            with(base.clone(), "--pattern", "1:128"),
            "invalid --pattern: 1:128 prunes nothing in this network",
        ),
        (
            with(
                with(base.clone(), "--pattern", "2:4"),
                "--exclude",
                "layer1,layer2,layer3,fc",
            ),
            "invalid --pattern: 2:4 prunes nothing in this network",
        ),
        (
            with(
                with(base.clone(), "--pattern", "channel"),
                "--weights",
                common::fixture("regnet_x_small.safetensors").to_str().unwrap(),
            ),
            "channel pruning supports ResNets (each block's conv1, and conv2 in an ungrouped bottleneck) and VGG (every convolution); this network is a regnet",
        ),
        (
            with(
                with(
                    with(base.clone(), "--pattern", "channel"),
                    "--weights",
                    common::fixture("resnext_small.safetensors").to_str().unwrap(),
                ),
                "--stem",
                "imagenet",
            ),
            "no convolution whose channels can be removed (14 skipped; layer1.0.conv1: feeds a grouped convolution (4 groups))",
        ),
        // Issue 26's stragglers, each naming its flag before any work.
        (
            with(base.clone(), "--calib-images", &files.path("no-images.gz")),
            "invalid --calib-images: ",
        ),
        (
            with(base.clone(), "--json", &files.path("")),
            "invalid --json: ",
        ),
        (
            with(base.clone(), "--exclude", "conv1,layer1,layer2,layer3,fc"),
            "invalid --exclude: the exclusions cover all 22 prunable tensors",
        ),
        (
            with(
                with(base.clone(), "--pattern", "channel"),
                "--exclude",
                "layer1,layer2,layer3",
            ),
            "invalid --exclude: the exclusions cover all 9 convolutions",
        ),
        (
            with(base.clone(), "--momentum", "0.5"),
            "invalid --momentum: applies to --mode ema",
        ),
        (
            with(base.clone(), "--calib-count", "-1"),
            "invalid value '-1' for '--calib-count <N>'",
        ),
        (
            with(base.clone(), "--crop", "100000"),
            "invalid --crop: 100000x100000 is more than 178956970 pixels",
        ),
    ];
    for (args, needle) in cases {
        fails_with_one_line(&args, needle);
    }
    let stderr = String::from_utf8_lossy(
        &run(&with(
            base.clone(),
            "--calib-images",
            &files.path("no-images.gz"),
        ))
        .stderr,
    )
    .into_owned();
    assert!(stderr.contains("no-images.gz: 0 images"), "{stderr}");
}

/// `--save-dir out --json out/report.json` with no `out/` yet: `--save-dir` makes it.
#[test]
fn the_report_may_go_into_the_save_dir_it_makes() {
    let files = Files::new();
    let out = files.path("out");
    let json = format!("{out}/report.json");
    let args = with(
        with(with(files.args(), "--sparsity", "0.5"), "--save-dir", &out),
        "--json",
        &json,
    );
    let report = common::report(&run(&args), &json);
    assert_eq!(report["runs"][0]["sparsity"], 0.5);
    assert!(Path::new(&format!("{out}/s0.5.safetensors")).exists());
}

#[test]
fn the_input_checkpoint_is_never_overwritten() {
    let files = Files::new();
    let dir = files.path("models");
    std::fs::create_dir_all(&dir).unwrap();
    let weights = format!("{dir}/s0.5.safetensors");
    std::fs::copy(common::fixture("resnet20_cifar.safetensors"), &weights).unwrap();
    let before = std::fs::read(&weights).unwrap();
    let mut args = with(files.args(), "--weights", &weights);
    args = with(args, "--sparsity", "0.5");
    args = with(args, "--save-dir", &dir);
    let out = run(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the --weights file"));
    assert_eq!(std::fs::read(&weights).unwrap(), before);
}

/// `files`' inputs and the fixture checkpoint, byte for byte.
fn inputs(files: &Files, extra: &[&str]) -> Vec<(String, Vec<u8>)> {
    ["test-images.gz", "test-labels.gz", "calib-images.gz"]
        .iter()
        .map(|n| files.path(n))
        .chain(extra.iter().map(|s| s.to_string()))
        .chain([common::fixture("resnet20_cifar.safetensors")
            .to_string_lossy()
            .into_owned()])
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[test]
fn bad_input_found_before_any_work_leaves_every_input_as_it_was() {
    // Each case once ran for minutes, overwrote an input, or blamed the wrong flag.
    let files = Files::new();
    let base = files.args();
    let dir = files.dir.path();
    // A copy of the calibration images named as --save-dir would name its output.
    let saves = files.path("saves");
    std::fs::create_dir_all(&saves).unwrap();
    let calib_copy = format!("{saves}/s0.5.safetensors");
    std::fs::copy(files.path("calib-images.gz"), &calib_copy).unwrap();
    // One-channel images for a three-channel model, a label past the last class.
    gz_idx(&dir.join("gray.gz"), &[40, 1, 16, 16], &[9; 40 * 256]);
    gz_idx(
        &dir.join("label-10.gz"),
        &[40],
        &[[3u8; 39].as_slice(), &[10]].concat(),
    );
    // Calibration images of one pixel: one value per channel and image at every BN.
    gz_idx(&dir.join("tiny.gz"), &[24, 3, 1, 1], &[50; 72]);
    let tiny = with(base.clone(), "--calib-images", &files.path("tiny.gz"));
    // A checkpoint without layer2, one with a NaN running variance.
    let mut state = common::read("resnet20_cifar.safetensors");
    let layer2: Vec<String> = state
        .keys()
        .filter(|k| k.starts_with("layer2."))
        .map(String::from)
        .collect();
    layer2.iter().for_each(|k| {
        state.remove(k);
    });
    state
        .write_safetensors(dir.join("no-layer2.safetensors"))
        .unwrap();
    let mut state = common::read("resnet20_cifar.safetensors");
    let t = state.get("layer3.1.bn1.running_var").unwrap().clone();
    let mut v = t.as_f32().unwrap().to_vec();
    v[0] = f32::NAN;
    state.insert(
        "layer3.1.bn1.running_var",
        reflow::state_dict::StoredTensor::f32(t.shape.clone(), v).unwrap(),
    );
    state
        .write_safetensors(dir.join("nan.safetensors"))
        .unwrap();
    let mut state = common::read("resnet20_cifar.safetensors");
    let empty = reflow::state_dict::StoredTensor::f32(vec![100_000, 0, 3, 3], vec![]).unwrap();
    state.insert("layer1.0.conv1.weight", empty);
    state
        .write_safetensors(dir.join("zero-width.safetensors"))
        .unwrap();
    // A compressed checkpoint whose second row offset is one too many.
    let mut net = ResNet::from_state_dict(&common::read("resnet20_cifar.safetensors")).unwrap();
    MagnitudePruner::new(0.8).prune(&mut net).unwrap();
    let bytes = StateDict::from_layer(&net)
        .to_safetensors_bytes_as(reflow::io::SaveFormat::Compressed)
        .unwrap();
    let mut raw = common::Raw::of(&bytes);
    let mut offsets = raw.i64s("layer1.0.conv1.row_offsets");
    offsets[1] += 1;
    raw.set_i64s("layer1.0.conv1.row_offsets", vec![offsets.len()], &offsets);
    std::fs::write(dir.join("bad-offsets.safetensors"), raw.bytes()).unwrap();
    let fifo = dir.join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    // A copy of the checkpoint, so that a regression overwrites no fixture.
    let weights = files.path("weights.safetensors");
    std::fs::copy(common::fixture("resnet20_cifar.safetensors"), &weights).unwrap();
    let saves_args = with(
        with(
            with(base.clone(), "--save-dir", &saves),
            "--sparsity",
            "0.5",
        ),
        "--calib-images",
        &calib_copy,
    );

    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            with(base.clone(), "--sparsity", "-0.1"),
            "-0.1 is outside [0, 1)",
        ),
        (
            with(
                with(base.clone(), "--weights", &weights),
                "--json",
                &weights,
            ),
            "is the --weights file: it would be overwritten",
        ),
        (
            with(base.clone(), "--json", &files.path("test-images.gz")),
            "is the --test-images file",
        ),
        (saves_args, "is the --calib-images file"),
        (
            with(base.clone(), "--json", &files.path("no-such-dir/r.json")),
            "does not exist",
        ),
        (
            with(base.clone(), "--save-dir", &files.path("test-labels.gz")),
            "is not a folder",
        ),
        (
            with(base.clone(), "--test-labels", &files.path("label-10.gz")),
            "label 10 of sample 39",
        ),
        (
            with(base.clone(), "--test-images", &files.path("gray.gz")),
            "--test-images: 1-channel images",
        ),
        (
            with(base.clone(), "--calib-images", &files.path("gray.gz")),
            "--calib-images: 1-channel images",
        ),
        (
            with(
                base.clone(),
                "--weights",
                &files.path("no-layer2.safetensors"),
            ),
            "\"layer2.0.conv1.weight\": missing, but layer3 is present",
        ),
        (
            with(base.clone(), "--weights", &files.path("nan.safetensors")),
            "\"layer3.1.bn1.running_var\": NaN at index 0",
        ),
        (
            with(base.clone(), "--test-images", &files.path("saves")),
            "is not a regular file",
        ),
        (
            with(
                base.clone(),
                "--weights",
                &files.path("zero-width.safetensors"),
            ),
            "\"layer1.0.conv1.weight\": a zero-sized tensor",
        ),
        (
            with(base.clone(), "--weights", &files.path("fifo")),
            "is not a regular file",
        ),
        (
            with(base.clone(), "--method", "sparsegpt"),
            "--calib-count: \"layer3.0.conv1.weight\": 16 image(s) of 16x16 give 256 calibration positions, fewer than its 288 input columns",
        ),
        (
            with(
                base.clone(),
                "--weights",
                &files.path("bad-offsets.safetensors"),
            ),
            "compressed tensor \"layer1.0.conv1.weight\": \"layer1.0.conv1.row_offsets\" gives row 1",
        ),
        (
            with(
                with(base.clone(), "--save-dir", &saves),
                "--save-format",
                "zip",
            ),
            "\"zip\" (expected \"dense\" or \"compressed\")",
        ),
        (
            with(base.clone(), "--save-format", "compressed"),
            "--save-dir <DIR>",
        ),
        (
            with(
                with(tiny.clone(), "--calib-count", "17"),
                "--calib-batch",
                "8",
            ),
            "--calib-batch: 1 image(s) of 1x1 give the smallest batch norms 1 value(s)",
        ),
        (
            with(with(tiny.clone(), "--calib-count", "1"), "--mode", "exact"),
            "--calib-count: 1 image(s) of 1x1",
        ),
    ];
    let before = inputs(&files, &[&calib_copy, &weights]);
    for (args, needle) in cases {
        let t = std::time::Instant::now();
        fails_with_one_line(&args, needle);
        assert!(
            t.elapsed().as_secs_f64() < 10.0,
            "{needle}: found before any work"
        );
        let after = inputs(&files, &[&calib_copy, &weights]);
        for ((path, now), (_, then)) in after.iter().zip(&before) {
            assert!(now == then, "{needle}: {path} changed");
        }
    }
}

/// The bundled ResNet-20 on the first 2,000 images of the Fashion-MNIST test set
/// (`--test-count 2000`: the whole set took this test six minutes on two cores): the
/// counts of `scripts/reference.py` (PyTorch) for the same flags, pruned and after
/// REFLOW (`scripts/compare_patterns.sh` compares every field on the whole set).
#[test]
fn bundled_resnet20_patterns_and_methods_count_as_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let mut base = common::bundled_prune_args();
    base.extend(["--test-count".to_string(), "2000".to_string()]);
    /// The flags, and per run the correct counts (pruned, after REFLOW).
    type Case<'a> = (&'a [&'a str], &'a [(u64, u64)]);
    // As reference.py counted them.
    let cases: [Case; 8] = [
        (&["--pattern", "2:4"], &[(1738, 1892)]),
        (
            &["--pattern", "channel", "--sparsity", "0.3,0.5"],
            &[(903, 1828), (439, 1484)],
        ),
        (
            &["--method", "wanda", "--sparsity", "0.5,0.9"],
            &[(1783, 1892), (195, 495)],
        ),
        (&["--method", "wanda", "--pattern", "2:4"], &[(1221, 1877)]),
        (
            &[
                "--method",
                "sparsegpt",
                "--sparsity",
                "0.5",
                "--calib-count",
                "256",
            ],
            &[(1895, 1904)],
        ),
        (
            &[
                "--method",
                "sparsegpt",
                "--pattern",
                "2:4",
                "--calib-count",
                "256",
            ],
            &[(1876, 1900)],
        ),
        (
            &[
                "--method",
                "sparsegpt",
                "--inputs",
                "sequential",
                "--sparsity",
                "0.5",
                "--calib-count",
                "256",
            ],
            &[(1897, 1903)],
        ),
        (
            &[
                "--method",
                "wanda",
                "--inputs",
                "sequential",
                "--pattern",
                "2:4",
                "--calib-count",
                "256",
            ],
            &[(1054, 1871)],
        ),
    ];
    for (k, (flags, want)) in cases.iter().enumerate() {
        let json = dir.path().join(format!("{k}.json"));
        let mut args = base.clone();
        args.extend(flags.iter().map(|s| s.to_string()));
        args.extend(["--json".to_string(), json.to_string_lossy().into_owned()]);
        let out = run(&args);
        let report = common::report(&out, &json);
        assert_eq!(report["dense"]["correct"], 1902);
        assert_eq!(report["dense"]["images"], 2000);
        let got: Vec<(u64, u64)> = report["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let count = |key: &str| r[key].as_u64().unwrap();
                (count("pruned_correct"), count("reflow_correct"))
            })
            .collect();
        assert_eq!(got, *want, "{flags:?}");
    }
}
