//! The shape of a RegNet X or Y, torchvision's presets, and its inference from keys.

use crate::error::{Error, Result};

pub(super) const FAMILY: &str = "RegNet";

/// One stage of a RegNet (`trunk_output.block{k}`): `depth` residual bottleneck
/// blocks of `width` outputs, the first with stride 2 (and a `proj` shortcut).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegNetStage {
    /// Blocks in the stage.
    pub depth: usize,
    /// Output channels of every block.
    pub width: usize,
    /// Channels inside the bottleneck (`f.a` output, `f.b`, `f.c` input); torchvision's
    /// presets use `width`.
    pub bottleneck: usize,
    /// Groups of the 3×3 convolution `f.b` (`bottleneck / group width`).
    pub groups: usize,
}

/// Everything that determines a RegNet's layers and parameter shapes.
///
/// RegNetX has no squeeze-excitation; RegNetY has one in every block, squeezing to
/// `round(se_ratio · block input width)` channels (torchvision: 0.25).
///
/// ```
/// use reflow::models::RegNetConfig;
///
/// assert_eq!(RegNetConfig::regnet_x_32gf().num_parameters(), 107_811_560);
/// assert_eq!(RegNetConfig::regnet_y_400mf().num_parameters(), 4_344_144);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RegNetConfig {
    /// Output channels of the stem (`stem.0`, 3×3 stride 2).
    pub stem_width: usize,
    /// The stages, in order.
    pub stages: Vec<RegNetStage>,
    /// The squeeze-excitation ratio of RegNetY; `None` for RegNetX.
    pub se_ratio: Option<f64>,
    /// Channels of the input images.
    pub in_channels: usize,
    /// Outputs of the classifier `fc`.
    pub num_classes: usize,
}

/// A stage of a preset: (depth, width, groups).
type Stage = (usize, usize, usize);

/// torchvision's presets as `BlockParams` expands them: `(name, SE, stages)`, with the
/// bottleneck as wide as the block.
const PRESETS: &[(&str, bool, [Stage; 4])] = &[
    (
        "regnet_x_400mf",
        false,
        [(1, 32, 2), (2, 64, 4), (7, 160, 10), (12, 400, 25)],
    ),
    (
        "regnet_x_800mf",
        false,
        [(1, 64, 4), (3, 128, 8), (7, 288, 18), (5, 672, 42)],
    ),
    (
        "regnet_x_1_6gf",
        false,
        [(2, 72, 3), (4, 168, 7), (10, 408, 17), (2, 912, 38)],
    ),
    (
        "regnet_x_3_2gf",
        false,
        [(2, 96, 2), (6, 192, 4), (15, 432, 9), (2, 1008, 21)],
    ),
    (
        "regnet_x_8gf",
        false,
        [(2, 80, 1), (5, 240, 2), (15, 720, 6), (1, 1920, 16)],
    ),
    (
        "regnet_x_16gf",
        false,
        [(2, 256, 2), (6, 512, 4), (13, 896, 7), (1, 2048, 16)],
    ),
    (
        "regnet_x_32gf",
        false,
        [(2, 336, 2), (7, 672, 4), (13, 1344, 8), (1, 2520, 15)],
    ),
    (
        "regnet_y_400mf",
        true,
        [(1, 48, 6), (3, 104, 13), (6, 208, 26), (6, 440, 55)],
    ),
    (
        "regnet_y_800mf",
        true,
        [(1, 64, 4), (3, 144, 9), (8, 320, 20), (2, 784, 49)],
    ),
    (
        "regnet_y_1_6gf",
        true,
        [(2, 48, 2), (6, 120, 5), (17, 336, 14), (2, 888, 37)],
    ),
    (
        "regnet_y_3_2gf",
        true,
        [(2, 72, 3), (5, 216, 9), (13, 576, 24), (1, 1512, 63)],
    ),
    (
        "regnet_y_8gf",
        true,
        [(2, 224, 4), (4, 448, 8), (10, 896, 16), (1, 2016, 36)],
    ),
    (
        "regnet_y_16gf",
        true,
        [(2, 224, 2), (4, 448, 4), (11, 1232, 11), (1, 3024, 27)],
    ),
    (
        "regnet_y_32gf",
        true,
        [(2, 232, 1), (5, 696, 3), (12, 1392, 6), (1, 3712, 16)],
    ),
    (
        "regnet_y_128gf",
        true,
        [(2, 528, 2), (7, 1056, 4), (17, 2904, 11), (1, 7392, 28)],
    ),
];

macro_rules! presets {
    ($($name:ident),*) => {
        $(
            #[doc = concat!("torchvision `", stringify!($name), "`.")]
            pub fn $name() -> Self {
                Self::preset(stringify!($name)).expect("a preset of the table")
            }
        )*
    };
}

impl RegNetConfig {
    /// The names of torchvision's presets.
    pub fn preset_names() -> impl Iterator<Item = &'static str> {
        PRESETS.iter().map(|p| p.0)
    }

    /// The preset of a torchvision name (`regnet_x_400mf`, ..., `regnet_y_128gf`):
    /// stem 32, 3 input channels, 1000 classes.
    pub fn preset(name: &str) -> Option<Self> {
        let (_, se, stages) = PRESETS.iter().find(|p| p.0 == name)?;
        Some(RegNetConfig {
            stem_width: 32,
            stages: stages
                .iter()
                .map(|&(depth, width, groups)| RegNetStage {
                    depth,
                    width,
                    bottleneck: width,
                    groups,
                })
                .collect(),
            se_ratio: se.then_some(0.25),
            in_channels: 3,
            num_classes: 1000,
        })
    }

    presets!(
        regnet_x_400mf,
        regnet_x_800mf,
        regnet_x_1_6gf,
        regnet_x_3_2gf,
        regnet_x_8gf,
        regnet_x_16gf,
        regnet_x_32gf,
        regnet_y_400mf,
        regnet_y_800mf,
        regnet_y_1_6gf,
        regnet_y_3_2gf,
        regnet_y_8gf,
        regnet_y_16gf,
        regnet_y_32gf,
        regnet_y_128gf
    );

    channel_and_class_builders!();

    /// The squeeze width of a block whose input has `width_in` channels (torchvision:
    /// `int(round(se_ratio · width_in))`).
    pub fn squeeze(&self, width_in: usize) -> Option<usize> {
        self.se_ratio
            .map(|r| (r * width_in as f64).round_ties_even() as usize)
    }

    /// Checks every size and that each bottleneck is divisible into its groups.
    pub fn validate(&self) -> Result<()> {
        if [self.stem_width, self.in_channels, self.num_classes].contains(&0)
            || self.stages.is_empty()
        {
            return Err(Error::invalid(
                "RegNet config",
                "every size must be positive",
            ));
        }
        for (k, s) in self.stages.iter().enumerate() {
            if [s.depth, s.width, s.bottleneck, s.groups].contains(&0)
                || !s.bottleneck.is_multiple_of(s.groups)
            {
                return Err(Error::invalid(
                    format!("RegNet stage {}", k + 1),
                    format!("{s:?}: sizes must be positive and the groups divide the bottleneck"),
                ));
            }
        }
        if let Some(r) = self.se_ratio {
            if !(r > 0.0 && r.is_finite()) {
                return Err(Error::invalid("RegNet config", format!("se_ratio {r}")));
            }
        }
        Ok(())
    }

    /// Number of parameters, as PyTorch counts them.
    pub fn num_parameters(&self) -> usize {
        let conv_bn = |i: usize, o: usize, k: usize, g: usize| o * (i / g) * k * k + 2 * o;
        let mut n = conv_bn(self.in_channels, self.stem_width, 3, 1);
        let mut c = self.stem_width;
        for s in &self.stages {
            for b in 0..s.depth {
                let (w, wb) = (s.width, s.bottleneck);
                if b == 0 {
                    n += conv_bn(c, w, 1, 1);
                }
                n += conv_bn(c, wb, 1, 1) + conv_bn(wb, wb, 3, s.groups) + conv_bn(wb, w, 1, 1);
                if let Some(q) = self.squeeze(c) {
                    n += wb * q + q + q * wb + wb;
                }
                c = w;
            }
        }
        n + c * self.num_classes + self.num_classes
    }

}
