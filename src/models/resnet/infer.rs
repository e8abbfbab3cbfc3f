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

impl ResNetConfig {
    /// Reads the network's shape off a torchvision-layout state dict: stages, blocks
    /// per stage, block kind, stage widths, stem width, groups and width per group,
    /// input channels and classes. Only the stem kind cannot be read off the keys;
    /// the stem convolution's kernel size (3 or 7) is checked against it.
    ///
    /// The error names the first key that does not fit. Keys this reading does not
    /// look at (every BN tensor, say) are checked by the strict load that
    /// [`crate::models::ResNet::from_state_dict`] runs next.
    ///
    /// ```
    /// use reflow::models::{ResNet, ResNetConfig, Stem};
    /// use reflow::StateDict;
    ///
    /// let cfg = ResNetConfig::resnext50_32x4d().with_num_classes(7);
    /// let state = StateDict::from_layer(&ResNet::new(cfg.clone())?);
    /// assert_eq!(ResNetConfig::infer(&state, Stem::Imagenet)?, cfg);
    /// # Ok::<(), reflow::Error>(())
    /// ```
    pub fn infer(state: &StateDict, stem: Stem) -> Result<ResNetConfig> {
        let stem_shape = shape_of(state, "conv1.weight", 4)?;
        let [stem_width, in_channels, kh, kw] =
            [stem_shape[0], stem_shape[1], stem_shape[2], stem_shape[3]];
        if kh != stem.kernel() || kw != stem.kernel() {
            return Err(arch(
                "conv1.weight",
                format!(
                    "a {kh}x{kw} kernel does not fit the {stem} stem ({k}x{k}); is --stem right?",
                    k = stem.kernel()
                ),
            ));
        }

        let block = if state.contains("layer1.0.conv3.weight") {
            BlockKind::Bottleneck
        } else {
            BlockKind::Basic
        };
        let mut layers = Vec::new();
        let mut planes = Vec::new();
        let mut widths = Vec::new();
        let mut groups = 1;
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
            let width = shape_of(state, &first, 4)?[0];
            let p = match block {
                BlockKind::Basic => width,
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
                    let key = format!("layer{stage}.0.conv2.weight");
                    let per_group = shape_of(state, &key, 4)?[1];
                    if per_group == 0 || width % per_group != 0 {
                        return Err(arch(
                            &key,
                            format!("{per_group} input channels per group does not divide the width {width}"),
                        ));
                    }
                    let g = width / per_group;
                    if stage > 1 && g != groups {
                        return Err(arch(&key, format!("{g} groups, but stage 1 has {groups}")));
                    }
                    groups = g;
                    out / 4
                }
            };
            layers.push(blocks);
            planes.push(p);
            widths.push(width);
        }

        // torchvision: width = ⌊planes · width_per_group / 64⌋ · groups. Take the
        // smallest width_per_group that gives stage 1's width, then check the others.
        let width_per_group = match block {
            BlockKind::Basic => 64,
            BlockKind::Bottleneck => ((widths[0] / groups) * 64).div_ceil(planes[0]),
        };
        let fc = shape_of(state, "fc.weight", 2)?;
        let config = ResNetConfig {
            block,
            layers,
            planes,
            stem,
            stem_width,
            in_channels,
            num_classes: fc[0],
            groups,
            width_per_group,
        };
        for (s, (&p, &w)) in config.planes.iter().zip(&widths).enumerate() {
            if config.inner_width(p) != w {
                return Err(arch(
                    &format!("layer{}.0.conv1.weight", s + 1),
                    format!(
                        "width {w} does not follow groups {groups} and width_per_group {width_per_group} read off stage 1"
                    ),
                ));
            }
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
                .chain((1..=config.layers.len()).map(|s| format!("layer{s}.0.conv1.weight")))
                .max_by_key(|k| state.get(k).map_or(0, |t| t.shape[0]))
                .unwrap_or_default();
            return Err(arch(
                &widest,
                format!(
                    "the architecture read off the keys ({} stages of {:?} blocks, widths {:?}) needs {needed} parameters, but the file holds only {stored} values",
                    config.layers.len(),
                    config.layers,
                    widths
                ),
            ));
        }
        Ok(config)
    }
}
