//! Whether the calibration images are enough for a repair, judged from them alone.

use super::Fidelity;
use serde::{Deserialize, Serialize};

/// The repair's own noise, as a KL divergence to the repair from unlimited images,
/// above which the calibration images are called too few (nats, mean per image).
///
/// On the bundled ResNet-20 (Fashion-MNIST, 10 classes) REFLOW's own noise falls
/// below it between 256 and 1,024 calibration images: from 256 images REFLOW still
/// moves 0.9 % of the intact network's predictions, from 1,024 0.6 %; from 64 it
/// costs 0.4 points of top-1, from 16 3.5 (`docs/results.md`, "Trust without
/// labels").
pub const NOISE_KL_LIMIT: f64 = 2e-3;

/// Whether the calibration images look enough for a repair: the same repair is made
/// from each half of them (interleaved halves), and the two repaired networks are
/// compared on all of them.
///
/// Statistics estimated from half the images scatter around those of unlimited images
/// with twice the variance of the full set's, so the two halves' results differ by
/// twice the full set's variance each: to first order the KL between the two halves'
/// networks is four times the full set's own noise (the KL of its repair to one from
/// unlimited images), which falls as 1 / images. The check predicts that noise, and
/// warns when it is above [`NOISE_KL_LIMIT`], with how many images would bring it
/// there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationCheck {
    /// Calibration images.
    pub images: usize,
    /// Fraction of the calibration images on which the two halves' networks have the
    /// same top-1 class.
    pub agreement_between_halves: f64,
    /// Mean symmetric KL divergence between the two halves' networks' outputs on the
    /// calibration images.
    pub kl_between_halves: f64,
    /// The predicted noise of the repair from all the images: `kl_between_halves / 4`.
    pub predicted_noise_kl: f64,
    /// Images that look needed to bring the noise below [`NOISE_KL_LIMIT`] (rounded up
    /// to two significant digits); `None` when the outputs were not finite.
    pub images_needed: Option<usize>,
    /// One line when the images look too few (or the check failed), else `None`.
    pub warning: Option<String>,
}

impl CalibrationCheck {
    /// The check from the comparison of the two halves' networks on `images`
    /// calibration images: `between.kl` the symmetric KL.
    pub fn from_halves(images: usize, between: Fidelity) -> Self {
        let noise = between.kl / 4.0;
        let needed = noise
            .is_finite()
            .then(|| round_up_2_digits((images as f64 * noise / NOISE_KL_LIMIT).ceil() as usize));
        let warning = match needed {
            None => Some(format!(
                "the calibration check failed: networks repaired on halves of the {images} calibration images give outputs that are not finite"
            )),
            Some(n) if noise > NOISE_KL_LIMIT => Some(format!(
                "{images} calibration images look too few for the repair: networks repaired on two halves of them disagree on {:.1} % of them (KL {:.4}); about {n} look needed",
                100.0 * (1.0 - between.agreement),
                between.kl
            )),
            Some(_) => None,
        };
        CalibrationCheck {
            images,
            agreement_between_halves: between.agreement,
            kl_between_halves: between.kl,
            predicted_noise_kl: noise,
            images_needed: needed,
            warning,
        }
    }
}

impl CalibrationCheck {
    /// A check that could not be made (the repair failed on a half of `images`
    /// images, say), with the reason in its warning.
    pub fn failed(images: usize, reason: &str) -> Self {
        CalibrationCheck {
            images,
            agreement_between_halves: f64::NAN,
            kl_between_halves: f64::NAN,
            predicted_noise_kl: f64::NAN,
            images_needed: None,
            warning: Some(format!("the calibration check could not be made: {reason}")),
        }
    }
}

/// `n` rounded up to two significant digits (1234 → 1300).
fn round_up_2_digits(n: usize) -> usize {
    let mut unit = 1;
    while n / unit >= 100 {
        unit *= 10;
    }
    n.div_ceil(unit) * unit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn between(kl: f64) -> Fidelity {
        Fidelity {
            images: 16,
            agreement: 0.875,
            kl,
        }
    }

    #[test]
    fn warns_above_the_limit_with_the_images_needed() {
        let check = CalibrationCheck::from_halves(16, between(4.0 * NOISE_KL_LIMIT * 10.0));
        assert_eq!(check.images_needed, Some(160));
        let warning = check.warning.unwrap();
        assert!(
            warning.contains("16 calibration images look too few"),
            "{warning}"
        );
        assert!(
            warning.contains("12.5 %") && warning.contains("about 160"),
            "{warning}"
        );
        let check = CalibrationCheck::from_halves(1024, between(4.0 * NOISE_KL_LIMIT * 0.5));
        assert_eq!((check.images_needed, check.warning), (Some(520), None));
        assert!(CalibrationCheck::from_halves(8, between(f64::NAN))
            .warning
            .is_some());
    }

    #[test]
    fn rounding() {
        assert_eq!(round_up_2_digits(0), 0);
        assert_eq!(round_up_2_digits(99), 99);
        assert_eq!(round_up_2_digits(101), 110);
        assert_eq!(round_up_2_digits(1234), 1300);
    }
}
