//! The bundled example's code path on a slice of the bundled data: the trained
//! checkpoint loads, pruning and REFLOW run, the table and both plots are written.

mod common;

use std::process::Command;

#[test]
fn the_bundled_example_runs_on_a_slice_of_the_data() {
    let out = tempfile::tempdir().unwrap();
    let result = Command::new(common::example_binary("resnet"))
        .args([
            "--test-count",
            "300",
            "--calib-count",
            "128",
            "--calib-batch",
            "64",
        ])
        .args(["--signal-images", "100", "--sparsity", "0.5,0.9", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );

    // One table row per sparsity: sparsity | dense pruned REFLOW | two signal ratios.
    let rows: Vec<Vec<f64>> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("0."))
        .map(|l| {
            l.split(|c: char| c == '|' || c.is_whitespace())
                .filter_map(|t| t.parse().ok())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for row in &rows {
        assert_eq!(row.len(), 6, "{stdout}");
        let dense = row[1];
        assert!(dense > 0.85, "the bundled network is trained: {dense}");
        assert!(row.iter().all(|v| v.is_finite()), "{stdout}");
    }
    // At 0.5 sparsity REFLOW keeps the network close to dense.
    assert!(rows[0][3] > rows[0][1] - 0.05, "{stdout}");

    for name in ["accuracy.svg", "accuracy.png", "signal.svg", "signal.png"] {
        let path = out.path().join(name);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "{} missing or empty", path.display());
    }
    let svg = std::fs::read_to_string(out.path().join("signal.svg")).unwrap();
    assert!(
        svg.contains("pruned + REFLOW"),
        "the legend names both series"
    );
}
