//! The `reflow` command (feature `cli`): `reflow inspect` and `reflow prune`, and one
//! line on stderr for bad input. `.ci/run` runs it with `--features cli`.
#![cfg(feature = "cli")]

mod common;

use serde_json::Value;
use std::process::{Command, Output};

fn reflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reflow"))
        .args(args)
        .output()
        .unwrap()
}

fn asset(name: &str) -> String {
    format!("{}/assets/fashion-mnist/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn inspect_shows_the_architecture_counts_and_sparsity() {
    let weights = common::fixture("resnext_small.safetensors");
    let out = reflow(&["inspect", weights.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("bottleneck blocks") && text.contains("groups 4"),
        "{text}"
    );
    assert!(text.contains("layer4.0.conv2.weight"), "{text}");

    let out = reflow(&["inspect", "--json", weights.to_str().unwrap()]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let state = common::read("resnext_small.safetensors");
    let net =
        reflow::models::ResNet::from_state_dict(&state, reflow::models::Stem::Imagenet).unwrap();
    assert_eq!(report["params"], reflow::layer::count_parameters(&net));
    assert_eq!(report["family"], "resnet");
    assert_eq!(report["sparsity"], 0.0);
}

#[test]
fn prune_runs_as_the_example_does() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let out = reflow(&[
        "prune",
        "--weights",
        &asset("resnet20_fmnist.safetensors"),
        "--stem",
        "cifar",
        "--test-images",
        &asset("t10k-images-idx3-ubyte.gz"),
        "--test-labels",
        &asset("t10k-labels-idx1-ubyte.gz"),
        "--calib-images",
        &asset("calib-images-idx3-ubyte.gz"),
        "--mean",
        "0.2860",
        "--std",
        "0.3530",
        "--pattern",
        "2:4",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // scripts/reference.py's counts for the same flags.
    assert_eq!(report["runs"][0]["pruned_correct"], 8672);
    assert_eq!(report["runs"][0]["reflow_correct"], 9340);
}

#[test]
fn bad_input_is_one_line() {
    for (args, needle, code) in [
        (
            vec!["inspect", "/nonexistent.safetensors"],
            "No such file",
            1,
        ),
        (
            vec!["frobnicate"],
            "unrecognized subcommand 'frobnicate'",
            2,
        ),
        (
            vec!["prune", "--pattern", "2:4"],
            "required arguments were not provided",
            2,
        ),
        (
            vec!["inspect", "x", "--stem", "mobile"],
            "expected \"cifar\" or \"imagenet\"",
            1,
        ),
    ] {
        let out = reflow(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
