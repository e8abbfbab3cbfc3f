//! Reading a ResNet's shape off the keys and shapes of a state dict.

use super::config::{BlockKind, ResNetConfig, Stem};
use crate::error::{Error, Result};
use crate::models::keys;
use crate::state_dict::StateDict;

const FAMILY: &str = "ResNet";

fn arch(key: &str, reason: impl Into<String>) -> Error {
    keys::arch(FAMILY, key, reason)
}

fn shape_of<'s>(state: &'s StateDict, key: &str, rank: usize) -> Result<&'s [usize]> {
    keys::shape_of(state, FAMILY, key, rank)
}

/// Reads a ResNet's shape off a torchvision-layout state dict: stages, blocks per
/// stage, block kind, stage widths, stem kind (from the stem convolution's kernel, 3×3
/// CIFAR or 7×7 ImageNet) and width, groups and width per group, input channels and
/// classes. When some block's branch is narrower or wider than its stage's rule gives
/// (a channel-pruned network), every block's widths are read into
/// [`ResNetConfig::block_widths`].
///
/// The error names the first key that does not fit. Keys this reading does not look
/// at (every BN tensor, say) are checked by the strict load that follows.
pub(super) fn infer(state: &StateDict) -> Result<ResNetConfig> {
    let stem_shape = shape_of(state, "conv1.weight", 4)?;
    let [stem_width, in_channels, kh, kw] =
        [stem_shape[0], stem_shape[1], stem_shape[2], stem_shape[3]];
    let stem = match (kh, kw) {
        (3, 3) => Stem::Cifar,
        (7, 7) => Stem::Imagenet,
        _ => {
            return Err(arch(
                "conv1.weight",
                format!("a {kh}x{kw} kernel fits no stem (cifar 3x3, imagenet 7x7)"),
            ))
        }
    };

    let block = if state.contains("layer1.0.conv3.weight") {
        BlockKind::Bottleneck
    } else {
        BlockKind::Basic
    };
    let mut layers = Vec::new();
    let mut planes = Vec::new();
    // Each block's branch widths, as stored: [conv1] or [conv1, conv2].
    let mut widths: Vec<Vec<Vec<usize>>> = Vec::new();
    let mut groups = None;
    loop {
        let stage = layers.len() + 1;
        let first = format!("layer{stage}.0.conv1.weight");
        if !state.contains(&first) {
            if stage == 1 {
                return Err(arch(&first, "missing: a ResNet has at least one stage"));
            }
            // A later stage's keys with this one missing: the stage is missing,
            // not the classifier that the later keys would then seem to misfit.
            let later = state.keys().find_map(|k| {
                let n: usize = k.strip_prefix("layer")?.split('.').next()?.parse().ok()?;
                (n > stage).then_some(n)
            });
            if let Some(later) = later {
                return Err(arch(
                    &first,
                    format!("missing, but layer{later} is present"),
                ));
            }
            break;
        }
        let blocks = (0..)
            .take_while(|i| state.contains(&format!("layer{stage}.{i}.conv1.weight")))
            .count();
        let p = match block {
            // The block's output: conv2's (conv1's may be channel-pruned).
            BlockKind::Basic => shape_of(state, &format!("layer{stage}.0.conv2.weight"), 4)?[0],
            BlockKind::Bottleneck => {
                let key = format!("layer{stage}.0.conv3.weight");
                let out = shape_of(state, &key, 4)?[0];
                if out % 4 != 0 {
                    return Err(arch(
                        &key,
                        format!(
                            "{out} output channels is not 4 × planes (bottleneck expansion)"
                        ),
                    ));
                }
                out / 4
            }
        };
        let mut stage_widths = Vec::with_capacity(blocks);
        for b in 0..blocks {
            let w1 = shape_of(state, &format!("layer{stage}.{b}.conv1.weight"), 4)?[0];
            stage_widths.push(match block {
                BlockKind::Basic => vec![w1],
                BlockKind::Bottleneck => {
                    let key = format!("layer{stage}.{b}.conv2.weight");
                    let conv2 = shape_of(state, &key, 4)?;
                    let per_group = conv2[1];
                    if per_group == 0 || w1 % per_group != 0 {
                        return Err(arch(
                            &key,
                            format!("{per_group} input channels per group does not divide conv1's {w1} outputs"),
                        ));
                    }
                    let g = w1 / per_group;
                    match groups {
                        Some(first) if first != g => {
                            return Err(arch(
                                &key,
                                format!("{g} groups, but layer1.0.conv2 has {first}"),
                            ))
                        }
                        _ => groups = Some(g),
                    }
                    vec![w1, conv2[0]]
                }
            });
        }
        layers.push(blocks);
        planes.push(p);
        widths.push(stage_widths);
    }
    let groups = groups.unwrap_or(1);

    // torchvision: width = ⌊planes · width_per_group / 64⌋ · groups. Take the
    // smallest width_per_group that gives stage 1's width; when some block's
    // widths do not follow it (a channel-pruned network), every block's widths
    // are kept as stored.
    let width_per_group = match block {
        BlockKind::Basic => 64,
        BlockKind::Bottleneck => ((widths[0][0][0] / groups) * 64).div_ceil(planes[0]),
    };
    let fc = shape_of(state, "fc.weight", 2)?;
    let mut config = ResNetConfig {
        block,
        layers,
        planes,
        stem,
        stem_width,
        in_channels,
        num_classes: fc[0],
        groups,
        width_per_group,
        block_widths: None,
    };
    let uniform = widths.iter().enumerate().all(|(s, stage)| {
        stage.iter().enumerate().all(|(b, w)| {
            let (w1, w2) = config.branch_widths(s, b);
            w[..] == [w1] || w[..] == [w1, w2]
        })
    });
    if !uniform {
        config.width_per_group = 64;
        config.block_widths = Some(widths.clone());
    }
    if fc[1] != config.feature_dim() {
        return Err(arch(
            "fc.weight",
            format!(
                "{} input features, but the last stage outputs {} channels",
                fc[1],
                config.feature_dim()
            ),
        ));
    }
    config.validate()?;
    // Nothing may be built for more values than the file holds: a mis-shaped or
    // zero-sized tensor elsewhere (or thousands of block keys) must not make the
    // network, and its allocation, huge. The strict load names the keys.
    let needed = config.num_parameters();
    let stored = state
        .iter()
        .map(|(_, t)| t.numel())
        .fold(0usize, usize::saturating_add);
    if needed > stored {
        // The key of the widest tensor the reading took a width from.
        let widest = std::iter::once("conv1.weight".to_string())
            .chain(config.layers.iter().enumerate().flat_map(|(s, &n)| {
                (0..n).map(move |b| format!("layer{}.{b}.conv1.weight", s + 1))
            }))
            .max_by_key(|k| state.get(k).map_or(0, |t| t.shape[0]))
            .unwrap_or_default();
        return Err(arch(
            &widest,
            format!(
                "the architecture read off the keys ({} stages of {:?} blocks, planes {:?}) needs {needed} parameters, but the file holds only {stored} values",
                config.layers.len(),
                config.layers,
                config.planes
            ),
        ));
    }
    Ok(config)
}

/// Checks the stem a caller names (`--stem`) against the stem `config` was read with
/// (its kernel's).
pub(super) fn check_stem(config: &ResNetConfig, stem: Stem) -> Result<()> {
    if config.stem == stem {
        return Ok(());
    }
    let (k, found) = (stem.kernel(), config.stem.kernel());
    Err(arch(
        "conv1.weight",
        format!("a {found}x{found} kernel does not fit the {stem} stem ({k}x{k}); is --stem right?"),
    ))
}
