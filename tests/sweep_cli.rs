//! A sweep as a user runs it: `reflow prune --shard I/N` in four processes at once,
//! `reflow merge`, and the merged report equal to the one-process report byte for byte
//! (but for the runs' times); one clear line for each way a sweep can go wrong.
//! `.ci/run` runs it with `--features cli`.
#![cfg(feature = "cli")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// 1,100 test images with 300 signal images make six blocks of at most 256 (0..256,
/// 256..300, then four), so that four shards split the signal images too.
const TEST: usize = 1100;

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let idx = |name: &str, dims: &[u32], data: &[u8]| {
            common::write_idx(&dir.path().join(name), dims, data, true)
        };
        let test = TEST as u32;
        idx("test.gz", &[test, 3, 16, 16], &common::pixels(TEST, 5));
        let labels: Vec<u8> = (0..TEST).map(|i| (i * 3 % 10) as u8).collect();
        idx("labels.gz", &[test], &labels);
        idx("calib.gz", &[32, 3, 16, 16], &common::pixels(32, 6));
        Files { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `reflow prune` on the files, writing its report to `json`.
    fn prune(&self, json: &str) -> Command {
        let mut cmd = reflow();
        cmd.arg("prune").arg("--weights");
        cmd.arg(common::fixture("resnet20_cifar.safetensors"));
        for (flag, file) in [
            ("--test-images", "test.gz"),
            ("--test-labels", "labels.gz"),
            ("--calib-images", "calib.gz"),
            ("--json", json),
        ] {
            cmd.arg(flag).arg(self.path(file));
        }
        cmd.args([
            "--stem",
            "cifar",
            "--calib-count",
            "32",
            "--calib-batch",
            "8",
        ]);
        cmd.args(["--signal-images", "300", "--sparsity", "0.5,0.9"]);
        cmd.args(["--mean", "0.5,0.4,0.45", "--std", "0.25,0.3,0.2"]);
        cmd
    }
}

/// The `reflow` command, with the dense kernels only: every process must run the same
/// kernels (the measured sparse policy times them in each process).
fn reflow() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reflow"));
    cmd.env("REFLOW_SPARSE", "never");
    cmd
}

fn succeeds(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails_with_one_line(out: Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{needle}: exit 0");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{needle}: {stderr}");
    assert!(stderr.contains(needle), "{needle}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The report's text with every run's `secs` line the same.
fn without_times(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let lines = text
        .lines()
        .map(|l| match l.trim_start().starts_with("\"secs\":") {
            true => "\"secs\": _,",
            false => l,
        });
    lines.collect::<Vec<_>>().join("\n")
}

#[test]
fn four_processes_merged_write_the_one_process_report() {
    let files = Files::new();
    let save = files.path("saved");
    std::fs::create_dir(&save).unwrap();
    // The four shards at once, as an array job runs them; the first two with
    // --save-dir, which only shard 0 writes.
    let shards: Vec<_> = (0..4)
        .map(|i| {
            let mut cmd = files.prune(&format!("part{i}.json"));
            cmd.args(["--shard", &format!("{i}/4")]);
            if i < 2 {
                cmd.arg("--save-dir").arg(&save);
            }
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    let mut cmd = files.prune("whole.json");
    succeeds(cmd.output().unwrap());
    let mut stdout = Vec::new();
    for child in shards {
        stdout.push(succeeds(child.wait_with_output().unwrap()));
    }
    assert!(
        stdout[1].contains("shard 1/4: test images 256..556 of 1100 (shard 0 writes --save-dir)")
    );
    assert_eq!(std::fs::read_dir(&save).unwrap().count(), 2, "s0.5, s0.9");
    let mut merge = reflow();
    merge.arg("merge");
    for i in [3, 1, 0, 2] {
        merge.arg(files.path(&format!("part{i}.json")));
    }
    merge.arg("--json").arg(files.path("merged.json"));
    let said = succeeds(merge.output().unwrap());
    assert!(said.contains("merged 4 shards: 1100 test images"), "{said}");
    let (merged, whole) = (files.path("merged.json"), files.path("whole.json"));
    assert_eq!(without_times(&merged), without_times(&whole));
    assert!(std::fs::read_to_string(&whole)
        .unwrap()
        .contains("\"secs\""));
}

#[test]
fn a_sweep_that_cannot_be_merged_is_one_line() {
    let files = Files::new();
    let shard = |i: usize, n: usize, json: &str| {
        let mut cmd = files.prune(json);
        cmd.args(["--shard", &format!("{i}/{n}")]);
        cmd.output().unwrap()
    };
    // Refused before any work.
    fails_with_one_line(
        shard(2, 2, "x.json"),
        "--shard: 2/2: the index counts from 0",
    );
    fails_with_one_line(shard(0, 0, "x.json"), "--shard");
    fails_with_one_line(shard(6, 7, "x.json"), "use at most 6 shards");
    let mut no_json = files.prune("x.json");
    let args: Vec<_> = no_json.get_args().map(|a| a.to_owned()).collect();
    let at = args.iter().position(|a| a == "--json").unwrap();
    no_json = reflow();
    no_json.args(&args[..at]).args(&args[at + 2..]);
    fails_with_one_line(no_json.args(["--shard", "0/2"]).output().unwrap(), "--json");
    assert!(!files.path("x.json").exists());

    succeeds(shard(0, 2, "a.json"));
    succeeds(shard(1, 2, "b.json"));
    succeeds(shard(0, 3, "c.json"));
    succeeds(files.prune("whole.json").output().unwrap());
    let merge = |parts: &[&str], out: &str| {
        let mut cmd = reflow();
        cmd.arg("merge");
        parts.iter().for_each(|p| {
            cmd.arg(files.path(p));
        });
        cmd.arg("--json").arg(files.path(out)).output().unwrap()
    };
    fails_with_one_line(merge(&["a.json"], "m.json"), "shard(s) 1/2 missing");
    fails_with_one_line(
        merge(&["a.json", "a.json", "b.json"], "m.json"),
        "given twice",
    );
    fails_with_one_line(
        merge(&["a.json", "c.json"], "m.json"),
        "of a different sweep",
    );
    fails_with_one_line(
        merge(&["a.json", "whole.json"], "m.json"),
        "not a reflow partial report",
    );
    fails_with_one_line(merge(&["a.json", "nothing.json"], "m.json"), "nothing.json");
    let before = std::fs::read(files.path("b.json")).unwrap();
    fails_with_one_line(
        merge(&["a.json", "b.json"], "b.json"),
        "is one of the partial reports",
    );
    assert_eq!(std::fs::read(files.path("b.json")).unwrap(), before);
    assert!(!files.path("m.json").exists());
    succeeds(merge(&["b.json", "a.json"], "m.json"));
    assert_eq!(
        without_times(&files.path("m.json")),
        without_times(&files.path("whole.json"))
    );
}
