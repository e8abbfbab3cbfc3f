//! N:M masks against the PyTorch reference of `scripts/make_nm_fixtures.py`: both
//! conventions, three patterns, ties, and the tensors left dense.

mod common;

use reflow::layer::{ParamRole, Params, Visitor, VisitorMut};
use reflow::prune::{NmAxis, NmPruner, Pruner};

/// Named weight tensors, nothing else.
struct Weights(Vec<(String, Vec<usize>, Vec<f32>)>);

impl Params for Weights {
    fn visit(&self, v: &mut Visitor<'_>) {
        for (name, shape, data) in &self.0 {
            v.tensor(name, ParamRole::Weight, shape, data);
        }
    }
    fn visit_mut(&mut self, v: &mut VisitorMut<'_>) {
        for (name, shape, data) in &mut self.0 {
            v.tensor(name, ParamRole::Weight, shape, data);
        }
    }
}

#[test]
fn masks_equal_the_pytorch_reference_in_both_conventions() {
    let fixture = common::read("nm_masks.safetensors");
    let weights = Weights(
        fixture
            .iter()
            .filter_map(|(k, t)| {
                let name = k.strip_prefix("weights/")?;
                Some((name.to_string(), t.shape.clone(), t.as_f32()?.to_vec()))
            })
            .collect(),
    );
    let mut compared = 0;
    for (convention, axis) in [
        ("channels", NmAxis::InputChannels),
        ("rows", NmAxis::FlattenedRows),
    ] {
        for (n, m) in [(2, 4), (1, 4), (4, 8)] {
            let pruner = NmPruner::new(n, m).unwrap().axis(axis);
            let masks = pruner.masks(&weights).unwrap();
            let prefix = format!("{convention}/{n}:{m}/");
            let expected: Vec<&str> = fixture
                .keys()
                .filter_map(|k| k.strip_prefix(&prefix))
                .collect();
            let got: Vec<&str> = masks.iter().map(|(k, _)| k).collect();
            assert_eq!(got, expected, "{prefix}: the tensors pruned");
            for (name, mask) in masks.iter() {
                let want = fixture
                    .get(&format!("{prefix}{name}"))
                    .unwrap()
                    .as_f32()
                    .unwrap();
                for (i, &w) in want.iter().enumerate() {
                    assert_eq!(mask.is_pruned(i), w == 1.0, "{prefix}{name} at {i}");
                }
                assert_eq!(
                    mask.pruned_count(),
                    mask.len() * (m - n) / m,
                    "{prefix}{name}"
                );
                compared += 1;
            }
            let skipped = pruner.skipped(&weights).unwrap();
            let all = [
                "a.weight", "b.weight", "c.weight", "d.weight", "e.weight", "f.weight",
            ];
            let left: Vec<&str> = all.into_iter().filter(|n| !expected.contains(n)).collect();
            assert_eq!(skipped, left, "{prefix}: the tensors left dense");
        }
    }
    assert_eq!(compared, 22);
}

#[test]
fn bad_patterns_and_exclusions_are_errors() {
    for (n, m) in [(0, 4), (3, 2), (2, 2), (2, 0)] {
        let e = NmPruner::new(n, m).unwrap_err().to_string();
        assert!(e.contains(&format!("{n}:{m}")), "{e}");
    }
    let weights = Weights(vec![("a.weight".into(), vec![2, 4], vec![1.0; 8])]);
    let e = NmPruner::new(2, 4)
        .unwrap()
        .exclude("b")
        .masks(&weights)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("\"b\" matches no prunable parameter"),
        "{e}"
    );
    // Excluding every tensor would prune nothing: an error (issue 26), not empty masks.
    let e = NmPruner::new(2, 4)
        .unwrap()
        .exclude("a")
        .masks(&weights)
        .unwrap_err();
    assert!(e.to_string().contains("nothing is left to prune"), "{e}");
}
