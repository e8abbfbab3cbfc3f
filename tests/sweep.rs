//! A sweep's shards merged equal the report of one process, byte for byte but for the
//! runs' times (every process running the same kernels: the dense ones); the merge
//! refuses what does not belong together.

mod common;

use reflow::io::{IdxImages, Normalization};
use reflow::models::{Model, ResNet};
use reflow::protocol::sweep::{merge, Fingerprint};
use reflow::protocol::{CalibrationReport, Pattern, Protocol, Report, Shard, Study};
use reflow::protocol::{PartialReport, RepairChoice};

/// 1,300 test images with 300 signal images make six blocks — 0..256, 256..300 (the
/// signal images), then 300..556, 556..812, 812..1068, 1068..1300 — so that with four
/// shards the second one's first block holds signal images, which it writes unfolded.
const TEST: usize = 1300;
const SIGNAL: usize = 300;

fn images() -> IdxImages {
    IdxImages::from_pixels([TEST, 3, 16, 16], common::pixels(TEST, 3)).unwrap()
}

/// The report of `study` on shard `shard` (the whole report for [`Shard::WHOLE`]),
/// and as a partial report.
fn run(study: &Study, shard: Shard) -> (Report, PartialReport) {
    // Each process must run the same kernels: the measured policy times the sparse
    // kernel against dense in each process, and the two round differently.
    reflow::nn::set_sparse_policy(reflow::nn::SparsePolicy::Never);
    let state = common::read("resnet20_cifar.safetensors");
    let mut net = Model::new(ResNet::from_state_dict(&state).unwrap());
    let test = images();
    let labels: Vec<u32> = (0..TEST as u32).map(|i| i * 7 % 10).collect();
    let calibration_images =
        IdxImages::from_pixels([64, 3, 16, 16], common::pixels(64, 9)).unwrap();
    let norm = Normalization::new(vec![0.5, 0.4, 0.45], vec![0.25, 0.3, 0.2]).unwrap();
    let calibration = study
        .calibration(&net, &calibration_images, (64, 16), None, &norm)
        .unwrap();
    let protocol = Protocol {
        test: &test,
        labels: Some(&labels),
        norm: &norm,
        calibration: &calibration,
        signal_images: SIGNAL,
        repair: study.repair.repair(study.reflow),
        shard,
    };
    let blocks = protocol.blocks().unwrap();
    let images = blocks[0].start..blocks[blocks.len() - 1].end;
    let runs = study.pruners(&net).unwrap();
    let dense = protocol.dense(&net).unwrap();
    let runs = protocol
        .study(
            &mut net,
            study,
            runs,
            &dense,
            &mut |_, _| Ok(()),
            &mut |_| {},
        )
        .unwrap();
    let calibration = CalibrationReport::of(
        "calib".into(),
        &calibration,
        None,
        runs.iter().map(|r| &r.0),
    );
    let report = Report::of(
        &net,
        study,
        calibration,
        (&dense.evaluation, images.len()),
        &runs,
    );
    let mut fingerprint = Fingerprint::new();
    fingerprint.add(format!("{study:?}").as_bytes());
    let partial = PartialReport::new(
        (shard, images, TEST),
        &fingerprint,
        report.clone(),
        &dense.evaluation,
        &runs,
    );
    (report, partial)
}

/// The report as `reflow prune --json` writes it, its runs' times zeroed.
fn text(report: &Report) -> String {
    let mut report = report.clone();
    report.runs.iter_mut().for_each(|r| r.secs = 0.0);
    serde_json::to_string_pretty(&report).unwrap()
}

#[test]
fn four_shards_merged_are_the_one_process_report() {
    let study = Study {
        repair: RepairChoice::Auto,
        ..Study::new(Pattern::Unstructured, vec![0.5, 0.9])
    };
    let (whole, _) = run(&study, Shard::WHOLE);
    let parts: Vec<(String, PartialReport)> = (0..4)
        .map(|i| (format!("part{i}"), run(&study, Shard::new(i, 4).unwrap()).1))
        .collect();
    // Through JSON, as the files carry them; in another order.
    let read: Vec<(String, PartialReport)> = [2, 0, 3, 1]
        .iter()
        .map(|&i| {
            let (name, p) = &parts[i];
            let json = serde_json::to_string(p).unwrap();
            (name.clone(), serde_json::from_str(&json).unwrap())
        })
        .collect();
    assert_eq!(
        read[1].1, parts[0].1,
        "a partial report reads back as written"
    );
    let merged = merge(&read).unwrap();
    assert_eq!(text(&merged), text(&whole));
    assert_eq!(merged.dense.images, TEST);
    assert_eq!(merged.dense.bn_signal.0.len(), 21);
    // The second shard holds signal images; the last none.
    assert_eq!(parts[1].1.tallies.dense.len(), 2);
    assert!(parts[1].1.tallies.dense[0].signal.len() == 21);
    assert!(parts[3].1.tallies.dense.iter().all(|t| t.signal.is_empty()));
    // A merge of one shard is its own report.
    let (alone, partial) = run(&study, Shard::new(0, 1).unwrap());
    assert_eq!(
        text(&merge(&[("p".into(), partial)]).unwrap()),
        text(&alone)
    );
}

#[test]
fn the_merge_refuses_partials_that_do_not_make_one_sweep() {
    let study = Study::new(Pattern::Unstructured, vec![0.5]);
    let parts: Vec<(String, PartialReport)> = (0..3)
        .map(|i| (format!("p{i}"), run(&study, Shard::new(i, 3).unwrap()).1))
        .collect();
    let fails = |parts: &[(String, PartialReport)], needle: &str| {
        let e = merge(parts).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    };
    assert!(merge(&parts).is_ok());
    fails(&parts[..2], "shard(s) 2/3 missing");
    fails(&[], "none given");
    let twice = [parts[0].clone(), parts[1].clone(), parts[1].clone()];
    fails(&twice, "shard 1/3 given twice");
    // Another sweep: other options, or another shard count.
    let mut other = parts.clone();
    other[1].1.partial.fingerprint = "0123456789abcdef".into();
    fails(&other, "p1: shard 1/3 of a different sweep than p0");
    let halves = run(&study, Shard::new(1, 2).unwrap()).1;
    fails(&[parts[0].clone(), ("h".into(), halves)], "different sweep");
    // The same fingerprint and a different run (a report written by another version).
    let mut other = parts.clone();
    other[2].1.report.runs[0].repair_reason = "changed".into();
    fails(
        &other,
        "p2: a different run than p0: the reports differ at runs[0].repair_reason",
    );
    let mut other = parts.clone();
    other[0].1.partial.format = "something else".into();
    fails(&other, "not \"reflow partial report 1\"");
    // Images that do not tile the test set.
    let mut other = parts.clone();
    other[1].1.partial.images[0] += 1;
    fails(&other, "the shards before it end at");
}
