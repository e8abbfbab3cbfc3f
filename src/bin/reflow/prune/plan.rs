//! The flags of `reflow prune`, parsed and checked into a [`Plan`] before any file is
//! read, and the runs' pruners checked against the network.

use super::super::protocol::invalid;
use super::Args;
use reflow::io::{EvalTransform, SaveFormat};
use reflow::models::{Arch, Model, FAMILIES};
use reflow::prelude::*;
use reflow::prune::PrunePlan;
use reflow::trust::{Repair, MIN_AUTO_IMAGES};

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

/// The `--pattern` of the runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Pattern {
    /// Magnitude pruning at each `--sparsity`, `--scope`.
    Unstructured,
    /// N:M pruning, one run.
    Nm(usize, usize),
    /// Channel pruning at each `--sparsity`: a compact network.
    Channel,
}

impl Pattern {
    fn parse(text: &str) -> reflow::Result<Pattern> {
        let bad = |why: String| invalid("pattern", format!("\"{text}\": {why}"));
        match text {
            "unstructured" => Ok(Pattern::Unstructured),
            "channel" => Ok(Pattern::Channel),
            _ => {
                let Some((n, m)) = text.split_once(':') else {
                    return Err(bad(
                        "expected unstructured, channel or N:M (e.g. 2:4)".into()
                    ));
                };
                let (Ok(n), Ok(m)) = (n.trim().parse::<usize>(), m.trim().parse::<usize>()) else {
                    return Err(bad("N and M must be whole numbers (e.g. 2:4)".into()));
                };
                NmPruner::new(n, m).map_err(|_| bad("N must be at least 1 and below M".into()))?;
                Ok(Pattern::Nm(n, m))
            }
        }
    }

    /// The JSON `"pattern"` and the table's name of it.
    pub(super) fn name(self) -> String {
        match self {
            Pattern::Unstructured => "unstructured".into(),
            Pattern::Nm(n, m) => format!("{n}:{m}"),
            Pattern::Channel => "channel".into(),
        }
    }

    /// The file `--save-dir` gets for a run at `s`.
    pub(super) fn saved_name(self, s: f64) -> String {
        match self {
            Pattern::Unstructured => format!("s{s}.safetensors"),
            Pattern::Nm(n, m) => format!("nm{n}-{m}.safetensors"),
            Pattern::Channel => format!("channel-s{s}.safetensors"),
        }
    }
}

/// Every flag checked before any file is read.
pub(super) struct Plan {
    pub(super) arch: Arch,
    pub(super) stem: Stem,
    pub(super) scope: Scope,
    pub(super) pattern: Pattern,
    /// One per run: the `--sparsity` list, or N:M's 1 − N/M.
    pub(super) sparsities: Vec<f64>,
    pub(super) exclude: Vec<String>,
    pub(super) reflow: Reflow,
    pub(super) norm: Normalization,
    /// The preprocessing of folder images.
    pub(super) transform: EvalTransform,
    /// How `--save-dir` writes.
    pub(super) save_format: SaveFormat,
    /// `--repair`.
    pub(super) repair: RepairKind,
}

/// The `--repair` of the runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum RepairKind {
    Reflow,
    None,
    Auto,
}

impl RepairKind {
    fn parse(text: &str) -> reflow::Result<RepairKind> {
        match text {
            "reflow" => Ok(RepairKind::Reflow),
            "none" => Ok(RepairKind::None),
            "auto" => Ok(RepairKind::Auto),
            other => Err(invalid(
                "repair",
                format!("\"{other}\" (expected reflow, none or auto)"),
            )),
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            RepairKind::Reflow => "reflow",
            RepairKind::None => "none",
            RepairKind::Auto => "auto",
        }
    }

    /// The repair with REFLOW in `reflow`'s mode.
    pub(super) fn repair(self, reflow: Reflow) -> Repair {
        match self {
            RepairKind::Reflow => Repair::reflow(reflow),
            RepairKind::None => Repair::None,
            RepairKind::Auto => Repair::auto(reflow),
        }
    }
}

pub(super) fn plan(args: &Args) -> reflow::Result<Plan> {
    let pattern = Pattern::parse(&args.pattern)?;
    let sparsities: Vec<f64> = match pattern {
        Pattern::Nm(n, m) => vec![1.0 - n as f64 / m as f64],
        _ => parse_list("sparsity", &args.sparsity)?,
    };
    if sparsities.is_empty() {
        return Err(invalid("sparsity", "no value given"));
    }
    for &s in &sparsities {
        PrunePlan::new(s)
            .validate()
            .map_err(|_| invalid("sparsity", format!("{s} is outside [0, 1)")))?;
    }
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
    let repair = RepairKind::parse(&args.repair)?;
    if repair == RepairKind::Auto && args.calib_count < MIN_AUTO_IMAGES {
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
    Ok(Plan {
        arch: args.arch.parse()?,
        stem: args.stem.parse()?,
        scope: args.scope.parse()?,
        pattern,
        sparsities,
        exclude: args
            .exclude
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        reflow,
        norm,
        transform,
        save_format: args.save_format.parse()?,
        repair,
    })
}

/// A pruner's error about one of its parameters, as the error of the flag that set it.
fn as_flag(e: Error) -> Error {
    match e {
        Error::InvalidArgument { name, reason } => {
            let flag = match name.as_str() {
                "exclusion" | "exclude" => "exclude",
                "N:M pruning" => "pattern",
                _ => return Error::InvalidArgument { name, reason },
            };
            invalid(flag, reason)
        }
        other => other,
    }
}

/// The runs' pruners, each checked against the network before any data is read.
pub(super) enum Runs {
    Unstructured(Vec<MagnitudePruner>),
    /// The pruner and the tensors it leaves dense.
    Nm(NmPruner, Vec<String>),
    Channel(Vec<ChannelPruner>),
}

impl Runs {
    pub(super) fn check(plan: &Plan, net: &Model) -> reflow::Result<Runs> {
        /// `p` with every `--exclude` entry.
        fn excluding<P>(p: P, exclude: &[String], add: fn(P, String) -> P) -> P {
            exclude.iter().cloned().fold(p, add)
        }
        let exclude = &plan.exclude;
        match plan.pattern {
            Pattern::Unstructured => plan
                .sparsities
                .iter()
                .map(|&s| {
                    let p = excluding(
                        MagnitudePruner::new(s).scope(plan.scope),
                        exclude,
                        MagnitudePruner::exclude,
                    );
                    p.plan().check(net).map(|_| p).map_err(as_flag)
                })
                .collect::<reflow::Result<_>>()
                .map(Runs::Unstructured),
            Pattern::Nm(n, m) => {
                let pruner = excluding(NmPruner::new(n, m)?, exclude, NmPruner::exclude);
                let skipped = pruner.skipped(net)?;
                pruner.masks(net).map_err(as_flag)?;
                Ok(Runs::Nm(pruner, skipped))
            }
            Pattern::Channel => {
                if net.family().channel_pruning().is_none() {
                    let supported: Vec<_> = FAMILIES
                        .iter()
                        .filter_map(|f| f.channel_pruning())
                        .collect();
                    return Err(invalid(
                        "pattern",
                        format!(
                            "channel: channel pruning supports {}; this network is a {}",
                            supported.join(" and "),
                            net.arch().family()
                        ),
                    ));
                }
                let state = StateDict::from_layer(net);
                let scope = net.channel_scope();
                plan.sparsities
                    .iter()
                    .map(|&s| {
                        let p = excluding(ChannelPruner::new(s)?, exclude, ChannelPruner::exclude);
                        p.select(&state, &scope).map(|_| p).map_err(as_flag)
                    })
                    .collect::<reflow::Result<_>>()
                    .map(Runs::Channel)
            }
        }
    }
}
