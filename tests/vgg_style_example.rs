//! The `vgg_style` example: a network composed from the crate's layers loads its
//! PyTorch checkpoint by name and gives PyTorch's accuracy; REFLOW recovers what
//! pruning lost. The counts are `scripts/reference.py`'s on the same checkpoint (its
//! spec in the file's metadata): 8802 dense; at 0.8, 6203 pruned and 8508 after REFLOW.

mod common;

use std::process::Command;

#[test]
fn the_composed_network_matches_pytorch_and_recovers() {
    let out = Command::new(common::example_binary("vgg_style"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("dense top-1 0.8802"), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("0.8 "))
        .unwrap_or_else(|| panic!("no 0.8 row: {stdout}"));
    let values: Vec<f64> = row
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    assert_eq!(values, [0.8, 0.6203, 0.8508], "{stdout}");
}
