//! Trust without labels, as a user meets it in `reflow prune` on the bundled ResNet-20:
//! fidelity to the dense network in the report (checked against an independent
//! computation on the saved network), the calibration check's warning, `--repair
//! auto` doing no harm and choosing on calibration images alone, and evaluation
//! without labels. The command's tests need `--features cli` (`.ci/run` runs them
//! so); the library's run in every build.
#![cfg_attr(not(feature = "cli"), allow(dead_code, unused_imports))]

mod common;

use flate2::read::GzDecoder;
use reflow::nn::Tensor2;
use reflow::prelude::*;
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `reflow prune` with `args` (feature `cli`).
#[cfg(feature = "cli")]
fn run(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reflow"))
        .arg("prune")
        .args(args)
        .output()
        .unwrap()
}

fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets/fashion-mnist")
        .join(name)
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

/// Test images `range` of the bundled Fashion-MNIST test set, and their labels, as
/// IDX files in `dir` (names ending in `tag`).
fn test_subset(dir: &Path, range: std::ops::Range<usize>, tag: &str) -> [String; 2] {
    let images = gunzip(&asset("t10k-images-idx3-ubyte.gz"));
    let labels = gunzip(&asset("t10k-labels-idx1-ubyte.gz"));
    let n = range.len() as u32;
    let (x, y) = (
        dir.join(format!("x{tag}.gz")),
        dir.join(format!("y{tag}.gz")),
    );
    common::write_idx(
        &x,
        &[n, 28, 28],
        &images[16 + range.start * 784..16 + range.end * 784],
        true,
    );
    common::write_idx(&y, &[n], &labels[8 + range.start..8 + range.end], true);
    [x, y].map(|p| p.to_string_lossy().into_owned())
}

/// The tool's flags for the bundled network on the test files `test` (images, then
/// labels when given).
fn args(test: &[&str], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--weights".into(),
        asset("resnet20_fmnist.safetensors")
            .to_string_lossy()
            .into_owned(),
        "--stem".into(),
        "cifar".into(),
        "--calib-images".into(),
        asset("calib-images-idx3-ubyte.gz")
            .to_string_lossy()
            .into_owned(),
        "--mean".into(),
        "0.2860".into(),
        "--std".into(),
        "0.3530".into(),
        "--signal-images".into(),
        "100".into(),
        "--test-images".into(),
        test[0].into(),
    ];
    if let Some(labels) = test.get(1) {
        args.extend(["--test-labels".into(), labels.to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `a` and `b` equal, their numbers within 1e-5 relative.
fn close(a: &Value, b: &Value) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= 1e-5 * x.abs().max(y.abs()), "{x} vs {y}");
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
            x.values().zip(y.values()).for_each(|(x, y)| close(x, y));
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).for_each(|(x, y)| close(x, y));
        }
        _ => assert_eq!(a, b),
    }
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// With 16 calibration images (one batch), the check warns; `auto` keeps the network
/// at 0 % and 30 % (so its accuracy is the unrepaired one's) and repairs at 80 %; and
/// the choice, the scores and the check are the same on another evaluation set.
#[test]
#[cfg(feature = "cli")]
fn auto_does_no_harm_with_16_images_and_never_looks_at_the_evaluation_set() {
    let dir = tempfile::tempdir().unwrap();
    let first = test_subset(dir.path(), 0..1000, "a");
    let second = test_subset(dir.path(), 5000..5800, "b");
    let mut reports = Vec::new();
    let saved = [dir.path().join("saved0"), dir.path().join("saved1")];
    for (k, test) in [&first, &second].iter().enumerate() {
        let json = dir.path().join(format!("auto{k}.json"));
        let extra = [
            "--calib-count",
            "16",
            "--sparsity",
            "0,0.3,0.8",
            "--repair",
            "auto",
            "--json",
            json.to_str().unwrap(),
            "--save-dir",
            saved[k].to_str().unwrap(),
        ];
        let out = run(&args(&[&test[0], &test[1]], &extra));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let report = common::report(&out, &json);
        assert!(
            stderr.contains("warning: 16 calibration images look too few"),
            "{stderr}"
        );
        assert!(
            stdout.contains("calibration: 16 calibration images look too few"),
            "{stdout}"
        );
        reports.push(report);
    }
    let report = &reports[0];
    assert_eq!(report["repair"], "auto");
    let warning = report["calibration"]["warning"].as_str().unwrap();
    assert!(warning.contains("look needed"), "{warning}");
    assert!(report["calibration"]["images_needed"].as_u64().unwrap() > 16);
    let runs = report["runs"].as_array().unwrap();
    let chosen: Vec<&str> = runs.iter().map(|r| r["repair"].as_str().unwrap()).collect();
    assert_eq!(chosen, ["none", "none", "reflow"]);
    for run in &runs[..2] {
        let (pruned, repaired) = (number(&run["pruned_top1"]), number(&run["reflow_top1"]));
        assert!(
            repaired >= pruned - 0.002,
            "{repaired} vs unrepaired {pruned}"
        );
        assert_eq!(run["agreement_pruned"], run["agreement_repaired"]);
    }
    let at80 = &runs[2];
    assert!(number(&at80["reflow_top1"]) > number(&at80["pruned_top1"]) + 0.3);
    assert!(number(&at80["kl_repaired"]) < number(&at80["kl_pruned"]));

    // The evaluation set changes every evaluation number, and nothing the choice saw.
    let other = reports[1]["runs"].as_array().unwrap();
    // Equal up to the last bits: each layer's kernel (sparse or dense) is chosen by
    // timing, and the kernels sum in different orders.
    for (a, b) in runs.iter().zip(other) {
        assert_eq!(a["repair"], b["repair"]);
        assert_eq!(a["repair_reason"], b["repair_reason"]);
        close(&a["repair_scores"], &b["repair_scores"]);
        close(&a["calibration_check"], &b["calibration_check"]);
    }
    close(&report["calibration"], &reports[1]["calibration"]);
    assert_ne!(runs[2]["kl_pruned"], other[2]["kl_pruned"]);

    // --save-dir writes each network as chosen: the dense statistics where the
    // network was kept, re-estimated ones where it was repaired.
    let variances = |path: PathBuf| {
        let net = ResNet::load(path).unwrap();
        let mut all = Vec::new();
        net.visit_norms(&mut |_, s| all.extend(s.running_var.iter().copied()));
        all
    };
    let dense = variances(asset("resnet20_fmnist.safetensors"));
    assert_eq!(variances(saved[0].join("s0.3.safetensors")), dense);
    assert_ne!(variances(saved[0].join("s0.8.safetensors")), dense);
}

/// The softmax of one row of logits, in f64.
fn softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// Agreement and mean KL(dense ‖ other), computed here from the two networks' logits.
fn by_hand(dense: &Tensor2, other: &Tensor2) -> (f64, f64) {
    let (mut agree, mut kl) = (0usize, 0.0);
    for (d, o) in dense.rows().into_iter().zip(other.rows()) {
        let (d, o) = (d.to_vec(), o.to_vec());
        agree += (argmax(d.iter().copied()) == argmax(o.iter().copied())) as usize;
        let (p, q) = (softmax(&d), softmax(&o));
        kl += p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum::<f64>();
    }
    let n = dense.nrows() as f64;
    (agree as f64 / n, kl / n)
}

/// With 1,024 calibration images the check does not warn; the report's fidelity
/// equals the one computed here from the dense and the saved networks; and the dense
/// network against itself has agreement 1 and KL 0.
#[test]
#[cfg(feature = "cli")]
fn fidelity_equals_an_independent_computation_and_1024_images_are_enough() {
    let dir = tempfile::tempdir().unwrap();
    let test = test_subset(dir.path(), 0..1000, "");
    let json = dir.path().join("r.json");
    let saved = dir.path().join("saved");
    let extra = [
        "--calib-count",
        "1024",
        "--sparsity",
        "0,0.8",
        "--json",
        json.to_str().unwrap(),
        "--save-dir",
        saved.to_str().unwrap(),
    ];
    let out = run(&args(&[&test[0], &test[1]], &extra));
    let report = common::report(&out, &json);
    assert!(String::from_utf8_lossy(&out.stderr).trim().is_empty());
    assert_eq!(report["calibration"]["warning"], Value::Null);
    assert!(number(&report["calibration"]["agreement_between_halves"]) > 0.97);
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs[1]["repair"], "reflow");
    let check = &runs[1]["calibration_check"];
    assert_eq!(check["images"], 1024);
    assert_eq!(check["warning"], Value::Null);

    let images = IdxImages::read(&test[0]).unwrap();
    let x = images
        .to_tensor(0..images.len(), &Normalization::fashion_mnist())
        .unwrap();
    let dense = ResNet::load(asset("resnet20_fmnist.safetensors")).unwrap();
    let dense_logits = dense.forward(&x).unwrap();
    let mut pruned = ResNet::load(asset("resnet20_fmnist.safetensors")).unwrap();
    MagnitudePruner::new(0.8)
        .masks(&pruned)
        .unwrap()
        .apply(&mut pruned)
        .unwrap();
    let repaired = ResNet::load(saved.join("s0.8.safetensors")).unwrap();
    for (net, field) in [(&pruned, "pruned"), (&repaired, "repaired")] {
        let (agreement, kl) = by_hand(&dense_logits, &net.forward(&x).unwrap());
        let run = &runs[1];
        assert_eq!(
            number(&run[format!("agreement_{field}")]),
            agreement,
            "{field}"
        );
        let reported = number(&run[format!("kl_{field}")]);
        assert!(
            (reported - kl).abs() <= 1e-5 * kl.max(1e-3),
            "{field}: {reported} vs {kl}"
        );
    }
    assert_eq!(number(&runs[0]["agreement_pruned"]), 1.0);
    assert_eq!(number(&runs[0]["kl_pruned"]), 0.0);
}

/// Evaluation images without labels: the report has fidelity and no accuracy (a
/// folder of images with no class sub-folder: `tests/reflow_cli.rs`).
#[test]
#[cfg(feature = "cli")]
fn without_labels_the_report_has_fidelity_only() {
    let dir = tempfile::tempdir().unwrap();
    let test = test_subset(dir.path(), 0..300, "");
    let json = dir.path().join("r.json");
    let extra = [
        "--calib-count",
        "64",
        "--sparsity",
        "0,0.5",
        "--repair",
        "none",
        "--json",
        json.to_str().unwrap(),
    ];
    let out = run(&args(&[&test[0]], &extra));
    let report = common::report(&out, &json);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("300 test images without labels"),
        "{stdout}"
    );
    assert_eq!(report["dense"]["top1"], Value::Null);
    assert_eq!(report["repair"], "none");
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs[0]["pruned_top1"], Value::Null);
    assert_eq!(
        (
            number(&runs[0]["agreement_pruned"]),
            number(&runs[0]["kl_pruned"])
        ),
        (1.0, 0.0)
    );
    assert!(number(&runs[1]["kl_pruned"]) > 0.0);
    assert_eq!(
        runs[1]["calibration_check"],
        Value::Null,
        "no repair, no check"
    );
    assert_eq!(runs[1]["kl_repaired"], runs[1]["kl_pruned"]);
}

/// Bad `--repair` input: one line naming the flag, before any work.
#[test]
#[cfg(feature = "cli")]
fn bad_repair_flags_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let test = test_subset(dir.path(), 0..10, "");
    for (extra, needle) in [
        (
            &["--repair", "auto", "--calib-count", "3"][..],
            "--calib-count",
        ),
        (&["--repair", "best"][..], "--repair"),
    ] {
        let out = run(&args(&[&test[0], &test[1]], extra));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }
}

/// The library's scores, taken apart: a repair's score is the pooled fidelity of the
/// repair from the even-numbered images judged on the odd ones and the other way
/// round; the check compares those two networks on every image; and the network is
/// left as a repair from all the images makes it.
#[test]
fn a_repairs_score_is_cross_fitted_and_the_check_compares_the_halves() {
    use reflow::trust::{Reference, Repair, Split};
    let images = IdxImages::read(asset("calib-images-idx3-ubyte.gz"))
        .unwrap()
        .first(40)
        .unwrap();
    let norm = Normalization::fashion_mnist();
    let calibration = ImageBatches::new(&images, 40, 8, &norm).unwrap();
    let pruned = || {
        let mut net = ResNet::load(asset("resnet20_fmnist.safetensors")).unwrap();
        MagnitudePruner::new(0.7)
            .masks(&net)
            .unwrap()
            .apply(&mut net)
            .unwrap();
        net
    };
    let dense = ResNet::load(asset("resnet20_fmnist.safetensors")).unwrap();
    let reference = Reference::record(&dense, &calibration).unwrap();

    // By hand.
    let halves: Vec<Reference> = (0..2)
        .map(|half| {
            let mut net = pruned();
            let fold = Split::fold(&calibration, half, 2).unwrap();
            Reflow::cumulative().rescale(&mut net, &*fold).unwrap();
            Reference::record(&net, &calibration).unwrap()
        })
        .collect();
    let on_odd = reference.compare(&halves[0], |p| p % 2 == 1).unwrap();
    let on_even = reference.compare(&halves[1], |p| p % 2 == 0).unwrap();
    let score = (on_odd.kl * on_odd.images as f64 + on_even.kl * on_even.images as f64) / 40.0;
    let between = (halves[0].compare(&halves[1], |_| true).unwrap().kl
        + halves[1].compare(&halves[0], |_| true).unwrap().kl)
        / 2.0;
    let mut all = pruned();
    Reflow::cumulative()
        .rescale(&mut all, &calibration)
        .unwrap();

    let mut net = pruned();
    let none = reference
        .compare(&Reference::record(&net, &calibration).unwrap(), |_| true)
        .unwrap();
    let report = Repair::reflow(Reflow::cumulative())
        .apply(&mut net, &calibration, &reference)
        .unwrap();
    let near = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(b.abs());
    assert_eq!(report.chosen, "reflow");
    assert_eq!(report.scores[0].repair, "none");
    assert!(near(report.scores[0].fidelity.kl, none.kl));
    assert_eq!(report.scores[1].fidelity.images, 40);
    assert!(
        near(report.scores[1].fidelity.kl, score),
        "{:?} vs {score}",
        report.scores[1]
    );
    let check = report.check.unwrap();
    assert!(
        near(check.kl_between_halves, between),
        "{check:?} vs {between}"
    );
    assert_eq!(check.images, 40);
    let statistics = |net: &ResNet| {
        let mut all = Vec::new();
        net.visit_norms(&mut |_, s| all.extend(s.running_var.iter().copied()));
        all
    };
    assert_eq!(statistics(&net), statistics(&all));
}
