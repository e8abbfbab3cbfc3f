//! The repair after pruning: none, a given one, or the one that keeps the network
//! closest to the dense network, chosen on the calibration images alone.

use super::{CalibrationCheck, Fidelity, Reference, Split};
use crate::data::{Tensor2, Tensor4};
use crate::error::{Error, Result};
use crate::layer::Layer;
use crate::rescale::{NormSnapshot, Reflow, RescaleReport, Rescaler};
use serde::{Deserialize, Serialize};

/// The fewest calibration images [`Repair::Auto`] takes: two per half, so that each
/// half both estimates statistics and judges the other's.
pub const MIN_AUTO_IMAGES: usize = 4;

/// A repair a [`Repair`] can make: a named [`Rescaler`]. Its rescaler must change
/// only the running statistics of normalisation layers (as REFLOW does), which the
/// trials restore.
pub struct Candidate {
    name: String,
    rescaler: Box<dyn Rescaler<Tensor4>>,
}

impl std::fmt::Debug for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Candidate")
            .field("name", &self.name)
            .finish()
    }
}

impl Candidate {
    /// `rescaler`, called `name` in reports.
    pub fn new(name: impl Into<String>, rescaler: Box<dyn Rescaler<Tensor4>>) -> Self {
        Candidate {
            name: name.into(),
            rescaler,
        }
    }

    /// REFLOW, called `reflow`.
    pub fn reflow(reflow: Reflow) -> Self {
        Candidate::new("reflow", Box::new(reflow))
    }

    /// The name reports use.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What to do with a pruned network's statistics.
///
/// - [`Repair::None`]: keep the network as pruned;
/// - [`Repair::Always`]: make the repair;
/// - [`Repair::Auto`]: choose between keeping the network and each repair, by which
///   stays closest (mean KL of the softmax outputs) to the dense network on the
///   **calibration images**, cross-fitted: each repair is made from one half of the
///   images and judged on the other half, both ways, so that no image judges
///   statistics estimated from it; the kept network is judged on all of them. A repair
///   from half the images is noisier than one from all, so the choice leans towards
///   keeping the network: it does no harm where the images are too few. Evaluation
///   images and labels play no part.
///
/// Unless the repair is `None`, [`Repair::apply`] also makes the
/// [`CalibrationCheck`] of the first repair, and reports every option's cross-fitted
/// score.
///
/// ```
/// use reflow::prelude::*;
/// use reflow::nn::Tensor4;
/// use reflow::trust::{Reference, Repair};
///
/// let mut net = ResNet::new(ResNetConfig::cifar_resnet(8)?)?;
/// let images: Vec<Tensor4> = (0..2)
///     .map(|b| Tensor4::from_shape_fn((8, 3, 8, 8), |(n, c, h, w)| ((b + n * c + h * w) % 7) as f32))
///     .collect();
/// // The dense network's outputs on the calibration images, before pruning.
/// let dense = Reference::record(&net, &images)?;
/// MagnitudePruner::new(0.5).masks(&net)?.apply(&mut net)?;
/// let report = Repair::auto(Reflow::cumulative()).apply(&mut net, &images, &dense)?;
/// println!("{}: {}", report.chosen, report.reason);
/// assert!(report.check.is_some());
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug)]
pub enum Repair {
    /// Keep the pruned network.
    None,
    /// Make this repair.
    Always(Candidate),
    /// Choose between keeping the network and each of these repairs.
    Auto(Vec<Candidate>),
}

/// One option's fidelity to the dense network on the calibration images: for a
/// repair, made from one half and judged on the other, both ways; for `none`, on all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepairScore {
    /// `none` or the repair's name.
    pub repair: String,
    /// Agreement and mean KL to the dense network.
    pub fidelity: Fidelity,
}

/// What [`Repair::apply`] did and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepairReport {
    /// `none` or the name of the repair made.
    pub chosen: String,
    /// Why, in one sentence.
    pub reason: String,
    /// Every option's cross-fitted score (empty for [`Repair::None`] and for fewer
    /// than two calibration images).
    pub scores: Vec<RepairScore>,
    /// Whether the calibration images look enough for the first repair.
    pub check: Option<CalibrationCheck>,
    /// The repair made, when one was.
    pub rescale: Option<RescaleReport>,
}

impl Repair {
    /// Always REFLOW.
    pub fn reflow(reflow: Reflow) -> Self {
        Repair::Always(Candidate::reflow(reflow))
    }

    /// REFLOW or nothing, whichever the calibration images judge closer to dense.
    pub fn auto(reflow: Reflow) -> Self {
        Repair::Auto(vec![Candidate::reflow(reflow)])
    }

    /// The repairs this may make.
    pub fn candidates(&self) -> &[Candidate] {
        match self {
            Repair::None => &[],
            Repair::Always(c) => std::slice::from_ref(c),
            Repair::Auto(all) => all,
        }
    }

    /// Checks every candidate's parameters.
    pub fn validate(&self) -> Result<()> {
        if let Repair::Auto(all) = self {
            if all.is_empty() {
                return Err(Error::invalid(
                    "repair",
                    "auto needs at least one repair to choose from",
                ));
            }
        }
        self.candidates()
            .iter()
            .try_for_each(|c| c.rescaler.validate())
    }

    /// Repairs `model` (pruned) from `calibration`, as this says; `dense` holds the
    /// dense network's outputs on the same calibration images, in the same order
    /// ([`Reference::record`] before pruning). On error the statistics are as they
    /// were.
    ///
    /// Fails before any work when `Auto` has fewer than [`MIN_AUTO_IMAGES`] images,
    /// or (unless this is `None`, which reads neither) when `dense` was not recorded
    /// on as many images as `calibration` holds.
    pub fn apply<L>(
        &self,
        model: &mut L,
        calibration: &dyn Split,
        dense: &Reference,
    ) -> Result<RepairReport>
    where
        L: Layer<Input = Tensor4, Output = Tensor2>,
    {
        self.validate()?;
        let images = calibration.images();
        if matches!(self, Repair::Auto(_)) && images < MIN_AUTO_IMAGES {
            return Err(Error::invalid(
                "calibration count",
                format!(
                    "{images} calibration image(s): the automatic repair choice needs at least {MIN_AUTO_IMAGES} (two per half)"
                ),
            ));
        }
        let candidates = self.candidates();
        let Some(first) = candidates.first() else {
            return Ok(RepairReport {
                chosen: "none".into(),
                reason: "no repair asked for".into(),
                scores: Vec::new(),
                check: None,
                rescale: None,
            });
        };
        if dense.len() != images {
            return Err(Error::Data(format!(
                "the dense reference holds {} images' outputs, the calibration set has {images}",
                dense.len()
            )));
        }
        if images < 2 {
            let rescale = first.rescaler.rescale(model, calibration)?;
            return Ok(RepairReport {
                chosen: first.name.clone(),
                reason: "asked for (one calibration image: no check)".into(),
                scores: Vec::new(),
                check: None,
                rescale: Some(rescale),
            });
        }

        let pruned = Reference::record(model, calibration)?;
        let mut scores = vec![RepairScore {
            repair: "none".into(),
            fidelity: dense.compare(&pruned, |_| true)?,
        }];
        let mut check = None;
        for candidate in candidates {
            let [from_even, from_odd] = match halves(model, candidate, calibration) {
                Ok(outputs) => outputs,
                // A repair asked for is made even when its halves cannot be.
                Err(e) if matches!(self, Repair::Always(_)) => {
                    check = Some(CalibrationCheck::failed(images, &e.to_string()));
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Each half's repair judged on the other half's images.
            let on_odd = dense.compare(&from_even, |p| p % 2 == 1)?;
            let on_even = dense.compare(&from_odd, |p| p % 2 == 0)?;
            scores.push(RepairScore {
                repair: candidate.name.clone(),
                fidelity: pooled(on_odd, on_even),
            });
            if check.is_none() {
                let (there, back) = (
                    from_even.compare(&from_odd, |_| true)?,
                    from_odd.compare(&from_even, |_| true)?,
                );
                let between = Fidelity {
                    kl: (there.kl + back.kl) / 2.0,
                    ..there
                };
                check = Some(CalibrationCheck::from_halves(images, between));
            }
        }

        let (chosen, reason) = match self {
            Repair::Auto(_) => choose(&scores),
            _ => (1, "asked for".to_string()),
        };
        let rescale = match chosen {
            0 => None,
            i => Some(candidates[i - 1].rescaler.rescale(model, calibration)?),
        };
        Ok(RepairReport {
            chosen: scores[chosen].repair.clone(),
            reason,
            scores,
            check,
            rescale,
        })
    }
}

/// The outputs on every calibration image of the network repaired from the even
/// positions and of the one repaired from the odd positions; the statistics are
/// restored after each.
fn halves<L>(
    model: &mut L,
    candidate: &Candidate,
    calibration: &dyn Split,
) -> Result<[Reference; 2]>
where
    L: Layer<Input = Tensor4, Output = Tensor2>,
{
    let snapshot = NormSnapshot::take(model);
    let mut outputs = Vec::with_capacity(2);
    for half in 0..2 {
        let fold = calibration.fold(half, 2)?;
        let trial = candidate
            .rescaler
            .rescale(model, &*fold)
            .and_then(|_| Reference::record(model, calibration));
        snapshot.restore(model);
        let which = ["even", "odd"][half];
        outputs.push(trial.map_err(|e| {
            Error::Data(format!(
                "{} from the {which}-numbered half of the calibration images: {e}",
                candidate.name
            ))
        })?);
    }
    let [even, odd]: [Reference; 2] = outputs.try_into().expect("two halves");
    Ok([even, odd])
}

/// Two fidelities over disjoint images, as one.
fn pooled(a: Fidelity, b: Fidelity) -> Fidelity {
    let images = a.images + b.images;
    let weight = |f: &Fidelity| f.images as f64 / images.max(1) as f64;
    Fidelity {
        images,
        agreement: a.agreement * weight(&a) + b.agreement * weight(&b),
        kl: a.kl * weight(&a) + b.kl * weight(&b),
    }
}

/// The option with the smallest KL (`none` first, so a tie keeps the network; a NaN
/// score never wins), and why.
fn choose(scores: &[RepairScore]) -> (usize, String) {
    let kl = |i: usize| match scores[i].fidelity.kl {
        v if v.is_nan() => f64::INFINITY,
        v => v,
    };
    let best = (1..scores.len()).fold(0, |best, i| if kl(i) < kl(best) { i } else { best });
    let none = &scores[0].fidelity;
    let reason = match best {
        0 => {
            let closest = scores[1..]
                .iter()
                .min_by(|a, b| a.fidelity.kl.total_cmp(&b.fidelity.kl));
            format!(
                "the pruned network is closer to the dense one on the calibration images (KL {:.4}) than any repair made from half of them is on the other half (best: {} KL {:.4})",
                none.kl,
                closest.map_or("none", |s| s.repair.as_str()),
                closest.map_or(f64::NAN, |s| s.fidelity.kl)
            )
        }
        i => format!(
            "made from half the calibration images, it is closer to the dense network on the other half (KL {:.4}) than the pruned network is (KL {:.4})",
            scores[i].fidelity.kl, none.kl
        ),
    };
    (best, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(repair: &str, kl: f64) -> RepairScore {
        RepairScore {
            repair: repair.into(),
            fidelity: Fidelity {
                images: 8,
                agreement: 1.0,
                kl,
            },
        }
    }

    #[test]
    fn the_smallest_kl_wins_ties_keep_the_network_nan_never_wins() {
        assert_eq!(choose(&[score("none", 0.2), score("reflow", 0.1)]).0, 1);
        assert_eq!(choose(&[score("none", 0.1), score("reflow", 0.1)]).0, 0);
        assert_eq!(
            choose(&[score("none", 0.1), score("reflow", f64::NAN)]).0,
            0
        );
        assert_eq!(
            choose(&[score("none", f64::NAN), score("reflow", 3.0)]).0,
            1
        );
        assert_eq!(
            choose(&[score("none", 0.3), score("a", 0.2), score("b", 0.1)]).0,
            2
        );
    }
}
