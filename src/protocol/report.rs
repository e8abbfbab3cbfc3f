//! The protocol's report as a type: serialising a [`Report`] with `serde_json` gives
//! exactly the JSON `reflow prune --json` writes (its fields are documented in
//! `docs/prune-example.md`, "Output").

use super::{Evaluation, Pruned, Run, Study};
use crate::data::ImageBatches;
use crate::models::{Model, ResNet};
use crate::prune::{ChannelReport, SparsityReport};
use crate::stats::Signal;
use crate::trust::{CalibrationCheck, Fidelity};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number as the report writes it: a JSON number when finite; `"NaN"`, `"inf"` or
/// `"-inf"` otherwise (JSON numbers cannot be those, and `serde_json` would write
/// `null`), so that a value that went wrong stays visible.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Number(pub f64);

impl Serialize for Number {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::floats::serialize(&self.0, s)
    }
}

/// Reads what [`Number`]'s `Serialize` wrote, to the same bits.
impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::floats::deserialize(d).map(Number)
    }
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The network.
    pub model: ModelReport,
    /// The calibration set and its check.
    pub calibration: CalibrationReport,
    /// `--method`: `magnitude`, `wanda` or `sparsegpt`.
    pub method: String,
    /// `--inputs`: `dense` or `sequential` (what wanda and sparsegpt measure on).
    pub inputs: String,
    /// `--repair`: `reflow`, `none` or `auto`.
    pub repair: String,
    /// The dense network.
    pub dense: DenseReport,
    /// One entry per pruning, in the order asked.
    pub runs: Vec<RunReport>,
}

/// The network's family and size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    /// `resnet`, `regnet`, `mobilenet_v2`, `mobilenet_v3`, `efficientnet` or `vgg`.
    pub family: String,
    /// The preset the shapes match where it matters, else the family.
    pub arch: String,
    /// Parameters, as PyTorch counts them.
    pub params: usize,
    /// Convolution and linear weights.
    pub prunable: usize,
    /// A ResNet's stem, stages, block and groups.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub resnet: Option<ResNetShape>,
}

/// What a ResNet's report adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetShape {
    /// `cifar` or `imagenet`.
    pub stem: String,
    /// Blocks per stage.
    pub stages: Vec<usize>,
    /// `basic` or `bottleneck`.
    pub block: String,
    /// Groups of the 3×3 convolutions.
    pub groups: usize,
}

impl ModelReport {
    /// The report of `net`.
    pub fn of(net: &Model) -> Self {
        let arch = net.arch();
        ModelReport {
            family: arch.family().to_string(),
            arch: arch.to_string(),
            params: crate::layer::count_parameters(net),
            prunable: crate::layer::count_prunable(net),
            resnet: net.downcast_ref::<ResNet>().map(|r| {
                let cfg = r.config();
                ResNetShape {
                    stem: cfg.stem.to_string(),
                    stages: cfg.layers.clone(),
                    block: cfg.block.to_string(),
                    groups: cfg.groups,
                }
            }),
        }
    }
}

/// The calibration set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationReport {
    /// Where the images came from (a file, a folder, a CIFAR training split).
    pub source: String,
    /// Images.
    pub count: usize,
    /// Batch size.
    pub batch: usize,
    /// `--calib-seed`.
    pub seed: Option<u64>,
    /// The calibration check of the run with the largest predicted noise.
    pub agreement_between_halves: Option<Number>,
    /// Its halves' KL.
    pub kl_between_halves: Option<Number>,
    /// Its images that look needed.
    pub images_needed: Option<usize>,
    /// Its warning.
    pub warning: Option<String>,
    /// The images drawn, in batch order (with a seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indices: Option<Vec<usize>>,
}

impl Report {
    /// The report of `study`'s `runs` on `net`: the calibration set as `calibration`
    /// says it, the dense network as evaluated (`dense`, on `images` images).
    pub fn of(
        net: &Model,
        study: &Study,
        calibration: CalibrationReport,
        (dense, images): (&Evaluation, usize),
        runs: &[(Run, Pruned)],
    ) -> Report {
        Report {
            model: ModelReport::of(net),
            calibration,
            method: study.method.name().to_string(),
            inputs: study.inputs.name().to_string(),
            repair: study.repair.name().to_string(),
            dense: DenseReport::of(dense, images),
            runs: runs
                .iter()
                .map(|(run, pruned)| pruned.report(run, study))
                .collect(),
        }
    }
}

impl CalibrationReport {
    /// The calibration set `calibration` (read from `source`, drawn by a shuffle of
    /// `seed` when there is one) and the check of `runs` that speaks for it
    /// ([`CalibrationReport::worst`]).
    pub fn of<'r>(
        source: String,
        calibration: &ImageBatches<'_>,
        seed: Option<u64>,
        runs: impl IntoIterator<Item = &'r Run>,
    ) -> Self {
        let worst = Self::worst(runs);
        CalibrationReport {
            source,
            count: calibration.len(),
            batch: calibration.batch_size(),
            seed,
            agreement_between_halves: worst.map(|c| Number(c.agreement_between_halves)),
            kl_between_halves: worst.map(|c| Number(c.kl_between_halves)),
            images_needed: worst.and_then(|c| c.images_needed),
            warning: worst.and_then(|c| c.warning.clone()),
            indices: seed.map(|_| calibration.indices().to_vec()),
        }
    }

    /// The run's check that speaks for the calibration set: the largest predicted
    /// noise (a failed check first).
    pub fn worst<'r>(runs: impl IntoIterator<Item = &'r Run>) -> Option<&'r CalibrationCheck> {
        let noise = |c: &CalibrationCheck| match c.predicted_noise_kl {
            v if v.is_nan() => f64::INFINITY,
            v => v,
        };
        runs.into_iter()
            .filter_map(|run| run.repair.check.as_ref())
            .max_by(|a, b| noise(a).total_cmp(&noise(b)))
    }
}

/// The dense network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseReport {
    /// Top-1 (`null` without labels).
    pub top1: Option<Number>,
    /// Correct predictions (`null` without labels).
    pub correct: Option<usize>,
    /// Evaluation images.
    pub images: usize,
    /// The signal metric of every batch norm, in forward order.
    pub bn_signal: SignalReport,
}

impl DenseReport {
    /// The report of the dense network's evaluation on `images` images.
    pub fn of(evaluation: &Evaluation, images: usize) -> Self {
        DenseReport {
            top1: top1(evaluation),
            correct: evaluation.accuracy.map(|a| a.correct),
            images,
            bn_signal: SignalReport::of(&evaluation.signal),
        }
    }
}

/// The signal metric per batch norm: an object from layer name to value, in forward
/// order.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalReport(pub Vec<(String, f64)>);

impl SignalReport {
    /// The report of `signal`.
    pub fn of(signal: &Signal) -> Self {
        SignalReport(signal.layers.clone())
    }
}

impl Serialize for SignalReport {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(name, v)| (name, Number(*v))))
    }
}

impl<'de> Deserialize<'de> for SignalReport {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let layers = ordered_map::<D, Number>(d)?;
        Ok(SignalReport(
            layers.into_iter().map(|(name, v)| (name, v.0)).collect(),
        ))
    }
}

/// A JSON object's entries in the order written (the report's maps are in forward
/// or run order, which a map type would lose).
fn ordered_map<'de, D, V>(d: D) -> Result<Vec<(String, V)>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Entries<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> Visitor<'de> for Entries<V> {
        type Value = Vec<(String, V)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::new();
            while let Some(entry) = map.next_entry()? {
                entries.push(entry);
            }
            Ok(entries)
        }
    }
    d.deserialize_map(Entries(std::marker::PhantomData))
}

/// Agreement and KL, as the report writes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FidelityReport {
    /// Images compared.
    pub images: usize,
    /// Top-1 agreement.
    pub agreement: Number,
    /// Mean KL.
    pub kl: Number,
}

impl From<&Fidelity> for FidelityReport {
    fn from(f: &Fidelity) -> Self {
        FidelityReport {
            images: f.images,
            agreement: Number(f.agreement),
            kl: Number(f.kl),
        }
    }
}

/// A run's calibration check, as the report writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Calibration images.
    pub images: usize,
    /// The halves' networks' agreement.
    pub agreement_between_halves: Number,
    /// Their symmetric KL.
    pub kl_between_halves: Number,
    /// A quarter of it.
    pub predicted_noise_kl: Number,
    /// Images that look needed.
    pub images_needed: Option<usize>,
    /// One line, or `null`.
    pub warning: Option<String>,
}

impl From<&CalibrationCheck> for CheckReport {
    fn from(c: &CalibrationCheck) -> Self {
        CheckReport {
            images: c.images,
            agreement_between_halves: Number(c.agreement_between_halves),
            kl_between_halves: Number(c.kl_between_halves),
            predicted_noise_kl: Number(c.predicted_noise_kl),
            images_needed: c.images_needed,
            warning: c.warning.clone(),
        }
    }
}

/// The tensors or channels a run's report lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Layers {
    /// Every convolution and linear weight, with its zeros (unstructured, N:M).
    Tensors(Vec<TensorLayer>),
    /// Every pruned convolution's channels (channel pruning).
    Channels(Vec<ChannelLayer>),
}

/// One weight tensor's zeros.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorLayer {
    /// `conv1.weight`.
    pub name: String,
    /// Values.
    pub numel: usize,
    /// Fraction of zeros.
    pub sparsity: Number,
}

/// One convolution's channels after channel pruning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelLayer {
    /// `layer1.0.conv1`.
    pub name: String,
    /// Output channels before.
    pub channels: usize,
    /// Output channels kept.
    pub kept: usize,
}

impl Layers {
    /// Every tensor of `report`.
    pub fn tensors(report: &SparsityReport) -> Self {
        Layers::Tensors(
            report
                .tensors
                .iter()
                .map(|t| TensorLayer {
                    name: t.name.clone(),
                    numel: t.numel,
                    sparsity: Number(t.sparsity()),
                })
                .collect(),
        )
    }

    /// Every convolution `report` removed channels of.
    pub fn channels(report: &ChannelReport) -> Self {
        Layers::Channels(
            report
                .removals
                .iter()
                .map(|r| ChannelLayer {
                    name: r.conv.clone(),
                    channels: r.channels,
                    kept: r.kept(),
                })
                .collect(),
        )
    }
}

/// One pruning's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// `unstructured`, `N:M` or `channel`.
    pub pattern: String,
    /// `global` or `layer`.
    pub scope: String,
    /// As asked.
    pub sparsity: f64,
    /// As measured: of the prunable weights, or of the channels in scope.
    pub actual_sparsity: Number,
    /// Top-1 after pruning (`null` without labels).
    pub pruned_top1: Option<Number>,
    /// Correct after pruning.
    pub pruned_correct: Option<usize>,
    /// Top-1 after the repair stage.
    pub reflow_top1: Option<Number>,
    /// Correct after the repair stage.
    pub reflow_correct: Option<usize>,
    /// Top-1 agreement with the dense network, pruned.
    pub agreement_pruned: Option<Number>,
    /// The same, repaired.
    pub agreement_repaired: Option<Number>,
    /// Mean KL from the dense network, pruned.
    pub kl_pruned: Option<Number>,
    /// The same, repaired.
    pub kl_repaired: Option<Number>,
    /// The repair made: `none` or `reflow`.
    pub repair: String,
    /// Why.
    pub repair_reason: String,
    /// Each option's cross-fitted fidelity on the calibration images, by name.
    pub repair_scores: ScoresReport,
    /// The run's calibration check.
    pub calibration_check: Option<CheckReport>,
    /// The signal metric, pruned.
    pub bn_signal_pruned: SignalReport,
    /// The signal metric after the repair stage.
    pub bn_signal_reflow: SignalReport,
    /// The tensors or channels.
    pub layers: Layers,
    /// Wall time, seconds.
    pub secs: f64,
    /// N:M: the tensors left dense; channel: the convolutions kept whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<Vec<String>>,
    /// Channel pruning: the compact network's parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<usize>,
}

/// The scores by option name, in the order they were made.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoresReport(pub Vec<(String, FidelityReport)>);

impl Serialize for ScoresReport {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(name, f)| (name, f)))
    }
}

impl<'de> Deserialize<'de> for ScoresReport {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ordered_map(d).map(ScoresReport)
    }
}

impl RunReport {
    /// The report of `run` under `pattern` and `scope`, `actual` its measured sparsity,
    /// `layers` what it lists. `skipped` and `params` are set by the caller where the
    /// pattern has them.
    pub fn of(run: &Run, pattern: &str, scope: &str, actual: f64, layers: Layers) -> Self {
        let mut report = RunReport {
            pattern: pattern.to_string(),
            scope: scope.to_string(),
            sparsity: run.sparsity,
            actual_sparsity: Number(actual),
            pruned_top1: None,
            pruned_correct: None,
            reflow_top1: None,
            reflow_correct: None,
            agreement_pruned: None,
            agreement_repaired: None,
            kl_pruned: None,
            kl_repaired: None,
            repair: run.repair.chosen.clone(),
            repair_reason: run.repair.reason.clone(),
            repair_scores: ScoresReport(
                run.repair
                    .scores
                    .iter()
                    .map(|s| (s.repair.clone(), FidelityReport::from(&s.fidelity)))
                    .collect(),
            ),
            calibration_check: run.repair.check.as_ref().map(CheckReport::from),
            bn_signal_pruned: SignalReport(Vec::new()),
            bn_signal_reflow: SignalReport(Vec::new()),
            layers,
            secs: run.secs,
            skipped: None,
            params: None,
        };
        report.set_evaluations(&run.pruned, &run.repaired);
        report
    }

    /// Sets what the test images decide: the pruned and repaired networks' accuracy,
    /// fidelity and signal.
    pub fn set_evaluations(&mut self, pruned: &Evaluation, repaired: &Evaluation) {
        let fidelity = |e: &Evaluation, field: fn(&Fidelity) -> f64| {
            e.fidelity.as_ref().map(|f| Number(field(f)))
        };
        self.pruned_top1 = top1(pruned);
        self.pruned_correct = pruned.accuracy.map(|a| a.correct);
        self.reflow_top1 = top1(repaired);
        self.reflow_correct = repaired.accuracy.map(|a| a.correct);
        self.agreement_pruned = fidelity(pruned, |f| f.agreement);
        self.agreement_repaired = fidelity(repaired, |f| f.agreement);
        self.kl_pruned = fidelity(pruned, |f| f.kl);
        self.kl_repaired = fidelity(repaired, |f| f.kl);
        self.bn_signal_pruned = SignalReport::of(&pruned.signal);
        self.bn_signal_reflow = SignalReport::of(&repaired.signal);
    }
}

impl Report {
    /// The report without what the test images decide — the dense network's and every
    /// run's accuracy, fidelity and signal, and the runs' times: what every shard of a
    /// sweep writes alike ([`sweep`](super::sweep)).
    pub fn without_test_results(&self) -> Report {
        let blank = Evaluation::default();
        let mut report = self.clone();
        report.dense = DenseReport::of(&blank, 0);
        for run in &mut report.runs {
            run.set_evaluations(&blank, &blank);
            run.secs = 0.0;
        }
        report
    }
}

/// Top-1, `None` without labels.
fn top1(e: &Evaluation) -> Option<Number> {
    e.accuracy.map(|a| Number(a.top1()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_that_went_wrong_stay_visible() {
        let text =
            serde_json::to_string(&[Number(0.5), Number(f64::NAN), Number(f64::NEG_INFINITY)])
                .unwrap();
        assert_eq!(text, r#"[0.5,"NaN","-inf"]"#);
        let signal = SignalReport(vec![
            ("bn1".into(), 0.25),
            ("layer1.0.bn1".into(), f64::INFINITY),
        ]);
        assert_eq!(
            serde_json::to_string(&signal).unwrap(),
            r#"{"bn1":0.25,"layer1.0.bn1":"inf"}"#
        );
    }
}
