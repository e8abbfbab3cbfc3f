//! What `reflow prune` prints, and the JSON report it writes.

use super::super::protocol::{self, last_ratio};
use super::plan::Plan;
use super::Args;
use reflow::models::Model;
use reflow::prelude::*;
use reflow::protocol::sweep::Fingerprint;
use reflow::protocol::{CalibrationReport, PartialReport, Report, Shard};
use reflow::protocol::{Method, Pattern, Pruned, RepairChoice};
use reflow::trust::Fidelity;

/// Prints the tables and writes the JSON report (`--json`).
pub(super) fn finish(
    args: &Args,
    plan: &Plan,
    net: &Model,
    dense: &protocol::Dense,
    runs: &[(protocol::Run, Pruned)],
    (protocol, images): (&protocol::Protocol<'_>, std::ops::Range<usize>),
) -> reflow::Result<()> {
    let calibration = protocol.calibration;
    // The signal images among the shard's (all of them without a shard).
    let observed = protocol.signal_images.min(protocol.test.len());
    let signal_images = observed.min(images.end) - observed.min(images.start);
    let arch = net.arch();
    let described = match net.describe() {
        d if d.is_empty() => arch.to_string(),
        d => d,
    };
    let described = match described == arch.family() {
        true => String::new(),
        false => format!(" {described},"),
    };
    say!(
        "model: {},{described} {} parameters ({} prunable)",
        arch.family(),
        count_parameters(net),
        count_prunable(net)
    );
    let dense_signal = &dense.evaluation.signal;
    say!(
        "dense: {}, last BN signal {:.4}",
        match dense.evaluation.accuracy {
            Some(a) => format!("top-1 {:.4} ({}/{})", a.top1(), a.correct, a.total),
            None => format!(
                "{} test images without labels (fidelity only)",
                images.len()
            ),
        },
        dense_signal.last().map_or(f64::NAN, |(_, v)| v)
    );
    let (repaired, signal_repaired) = match plan.study.repair {
        RepairChoice::Reflow => ("REFLOW top-1", "signal REFLOW/d"),
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
    let kind = match (plan.study.method, plan.study.pattern) {
        (Method::Magnitude, Pattern::Unstructured) => plan.study.scope.to_string(),
        (Method::Magnitude, other) => other.name(),
        (method, Pattern::Unstructured) => method.to_string(),
        (method, other) => format!("{method} {other}"),
    };
    for (run, pruned) in runs {
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
        signal_images
    );
    say!(
        "fidelity to the dense network on {} test images (top-1 agreement, mean KL), and the repair ({}):",
        images.len(),
        plan.study.repair.name()
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
    for (run, _) in runs {
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
    if plan.study.repair == RepairChoice::Auto {
        for (run, _) in runs {
            say!(
                "repair at {}: {} ({})",
                run.sparsity,
                run.repair.chosen,
                run.repair.reason
            );
        }
    }
    for (run, pruned) in runs {
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
                plan.study.pattern.name(),
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
        let calibration = CalibrationReport::of(
            source,
            calibration,
            args.calib_seed,
            runs.iter().map(|(run, _)| run),
        );
        let evaluated = (&dense.evaluation, images.len());
        let report = Report::of(net, &plan.study, calibration, evaluated, runs);
        let text = match plan.shard == Shard::WHOLE {
            true => serde_json::to_string_pretty(&report),
            // Compact: the statistics a merge needs are long lists.
            false => serde_json::to_string(&PartialReport::new(
                (plan.shard, images, protocol.test.len()),
                &fingerprint(args, plan, protocol)?,
                report,
                &dense.evaluation,
                runs,
            )),
        };
        let text = text.expect("the report serialises");
        reflow::io::write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}

/// What every shard of one sweep shares, hashed: the checkpoint's bytes, every option
/// that decides a result (not the paths: the machines of a sweep may mount the data
/// elsewhere) and the test set's size.
fn fingerprint(
    args: &Args,
    plan: &Plan,
    protocol: &protocol::Protocol<'_>,
) -> reflow::Result<Fingerprint> {
    let weights = std::fs::read(&args.weights).map_err(|source| Error::Io {
        path: args.weights.clone(),
        source,
    })?;
    let options = format!(
        "{:?} {:?} {:?} {:?} {:?} {} {} {:?} {} {} {}",
        plan.study,
        plan.arch,
        plan.stem,
        plan.norm,
        plan.transform,
        args.calib_count,
        args.calib_batch,
        args.calib_seed,
        protocol.signal_images,
        protocol.test.len(),
        protocol.labels.is_some(),
    );
    let mut hash = Fingerprint::new();
    hash.add(&weights).add(options.as_bytes());
    Ok(hash)
}
