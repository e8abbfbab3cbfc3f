//! The flags of `reflow prune`, parsed and checked into a [`Plan`] before any file is
//! read, and the runs' pruners checked against the network.

use super::super::protocol::invalid;
use super::Args;
use reflow::io::{EvalTransform, SaveFormat};
use reflow::models::Arch;
use reflow::prelude::*;
use reflow::protocol::{Pattern, RepairChoice, Shard, Study};
use reflow::trust::MIN_AUTO_IMAGES;

fn parse_list<T: std::str::FromStr>(flag: &str, text: &str) -> reflow::Result<Vec<T>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse().map_err(|_| Error::InvalidArgument {
                name: format!("--{flag}"),
                reason: format!("\"{s}\" is not a number"),
            })
        })
        .collect()
}

/// Every flag checked before any file is read.
pub(super) struct Plan {
    pub(super) arch: Arch,
    pub(super) stem: Stem,
    /// `--pattern`, `--sparsity`, `--scope`, `--exclude`, `--mode`, `--repair`.
    pub(super) study: Study,
    pub(super) norm: Normalization,
    /// The preprocessing of folder images.
    pub(super) transform: EvalTransform,
    /// How `--save-dir` writes.
    pub(super) save_format: SaveFormat,
    /// `--shard`: the part of the test images this process evaluates.
    pub(super) shard: Shard,
}

pub(super) fn plan(args: &Args) -> reflow::Result<Plan> {
    let pattern: Pattern = args.pattern.parse().map_err(as_flag)?;
    let sparsities: Vec<f64> = match pattern {
        Pattern::Nm(..) => Vec::new(),
        _ => parse_list("sparsity", &args.sparsity)?,
    };
    // The sparsities first, as the flags come.
    Study::new(pattern, sparsities.clone())
        .validate()
        .map_err(as_flag)?;
    if args.momentum.is_some() && args.mode != "ema" {
        return Err(invalid(
            "momentum",
            format!("applies to --mode ema; --mode {} takes none", args.mode),
        ));
    }
    let reflow = match args.mode.as_str() {
        "cumulative" => Reflow::cumulative(),
        "ema" => Reflow::ema(args.momentum.unwrap_or(0.1)),
        "exact" => Reflow::exact(),
        other => {
            return Err(invalid(
                "mode",
                format!("\"{other}\" (expected cumulative, ema or exact)"),
            ))
        }
    };
    reflow.validate()?;
    if args.calib_count == 0 {
        return Err(invalid("calib-count", "empty calibration set (0 images)"));
    }
    let repair: RepairChoice = args.repair.parse().map_err(as_flag)?;
    if repair == RepairChoice::Auto && args.calib_count < MIN_AUTO_IMAGES {
        return Err(invalid(
            "calib-count",
            format!(
                "{}: --repair auto needs at least {MIN_AUTO_IMAGES} calibration images (each half repairs and judges the other)",
                args.calib_count
            ),
        ));
    }
    if args.calib_batch == 0 {
        return Err(invalid("calib-batch", "must be positive"));
    }
    if args.test_count == Some(0) {
        return Err(invalid("test-count", "must be positive"));
    }
    if args.signal_images == Some(0) {
        return Err(invalid("signal-images", "must be positive"));
    }
    let preset = match args.preset.as_deref() {
        None => None,
        Some("imagenet") => Some((EvalTransform::imagenet(), Normalization::imagenet())),
        Some(other) => {
            return Err(invalid(
                "preset",
                format!("\"{other}\" (expected imagenet)"),
            ))
        }
    };
    let from_preset = |f: fn(&Normalization) -> &[f32]| {
        preset
            .as_ref()
            .map(|(_, n)| f(n).to_vec())
            .unwrap_or_default()
    };
    let mean = match &args.mean {
        Some(text) => parse_list("mean", text)?,
        None => from_preset(Normalization::mean),
    };
    let std = match &args.std {
        Some(text) => parse_list("std", text)?,
        None => from_preset(Normalization::std),
    };
    let norm = Normalization::new(mean, std)?;
    let transform = EvalTransform {
        resize: args.resize.or(preset.as_ref().and_then(|(t, _)| t.resize)),
        crop: args.crop.or(preset.as_ref().and_then(|(t, _)| t.crop)),
    };
    for (flag, size) in [("resize", args.resize), ("crop", args.crop)] {
        if size == Some(0) {
            return Err(invalid(flag, "the size must be positive"));
        }
        if let Some(size) = size {
            reflow::io::check_image_pixels(flag, size, size).map_err(|e| match e {
                Error::InvalidArgument { reason, .. } => invalid(flag, reason),
                other => other,
            })?;
        }
        if size.is_some() && args.test_dir.is_none() && args.calib_dir.is_none() {
            return Err(invalid(
                flag,
                "applies to image folders (--test-dir, --calib-dir); no folder is given",
            ));
        }
    }
    let study = Study {
        scope: args.scope.parse()?,
        exclude: args
            .exclude
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        method: args.method.parse().map_err(as_flag)?,
        inputs: args.inputs.parse().map_err(as_flag)?,
        reflow,
        repair,
        ..Study::new(pattern, sparsities)
    };
    study.validate().map_err(as_flag)?;
    Ok(Plan {
        arch: args.arch.parse()?,
        stem: args.stem.parse()?,
        study,
        norm,
        transform,
        save_format: args.save_format.parse()?,
        shard: match &args.shard {
            Some(text) => text.parse().map_err(as_flag)?,
            None => Shard::WHOLE,
        },
    })
}

/// A library error about one of the study's parameters, as the error of the flag that
/// set it (`invalid --pattern: ...`).
pub(super) fn as_flag(e: Error) -> Error {
    let flag = |name: &str| match name {
        "exclusion" | "exclude" => Some("exclude"),
        "N:M pruning" | "pattern" => Some("pattern"),
        "sparsity" => Some("sparsity"),
        "repair" => Some("repair"),
        "method" => Some("method"),
        "inputs" => Some("inputs"),
        "calibration count" => Some("calib-count"),
        "signal images" => Some("signal-images"),
        "calibration batch size" => Some("calib-batch"),
        "shard" | "shard count" => Some("shard"),
        _ => None,
    };
    match e {
        Error::InvalidArgument { name, reason } | Error::Unsupported { name, reason } => {
            match flag(&name) {
                Some(f) => invalid(f, reason),
                None => Error::InvalidArgument { name, reason },
            }
        }
        Error::UnknownName {
            name,
            given,
            expected,
        } => match flag(&name) {
            Some(f) => invalid(f, format!("\"{given}\" (expected {expected})")),
            None => Error::UnknownName {
                name,
                given,
                expected,
            },
        },
        Error::OutOfRange {
            name,
            value,
            allowed,
        } => match flag(&name) {
            Some(f) => invalid(f, format!("{value} is outside {allowed}")),
            None => Error::OutOfRange {
                name,
                value,
                allowed,
            },
        },
        other => other,
    }
}
