//! A study: the prunings `reflow prune` runs one after the other from the dense
//! network — the pattern, the sparsities, the exclusions and the repair — as typed
//! options, checked against the network before any data is read ([`Study::pruners`]),
//! then run by [`Protocol::study`].

use super::{Dense, Inputs, Layers, Method, Pattern, Protocol, RepairChoice, Run, RunReport};
use crate::data::ImageBatches;
use crate::error::{Error, Result};
use crate::models::{Model, FAMILIES};
use crate::prune::{ChannelPruner, ChannelReport, MagnitudePruner, NmPruner, Pruner};
use crate::prune::{Hessians, InputNorms, SparseGptPruner, WandaPruner};
use crate::prune::{PrunePlan, Scope};
use crate::rescale::Reflow;
use crate::state_dict::StateDict;
use std::time::Instant;

/// The prunings of one study and what follows each.
///
/// ```
/// use reflow::models::{Model, ResNet, ResNetConfig};
/// use reflow::protocol::{Pattern, Study};
///
/// let net = Model::new(ResNet::new(ResNetConfig::cifar_resnet(8)?)?);
/// let study = Study::new(Pattern::Unstructured, vec![0.5, 0.8]).excluding("fc");
/// study.validate()?;
/// assert_eq!(study.pruners(&net)?.len(), 2);
/// assert_eq!(Study::new(Pattern::Nm(2, 4), vec![]).sparsities, [0.5]);
/// # Ok::<(), reflow::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Study {
    /// How the weights are pruned.
    pub pattern: Pattern,
    /// How the weights to remove are chosen (unstructured and N:M patterns).
    pub method: Method,
    /// Which network the activation-aware methods measure their statistics on.
    pub inputs: Inputs,
    /// The scope of unstructured pruning (N:M and channel pruning are per layer).
    pub scope: Scope,
    /// One per run: the fraction pruned (for N:M, 1 − N/M).
    pub sparsities: Vec<f64>,
    /// Parameter names or prefixes never pruned.
    pub exclude: Vec<String>,
    /// REFLOW's statistic mode, for the repair.
    pub reflow: Reflow,
    /// What follows each pruning.
    pub repair: RepairChoice,
}

impl Study {
    /// `pattern` at `sparsities` (for N:M the one sparsity 1 − N/M, whatever is given),
    /// global scope, nothing excluded, cumulative REFLOW after each.
    pub fn new(pattern: Pattern, sparsities: Vec<f64>) -> Study {
        let sparsities = match pattern {
            Pattern::Nm(n, m) => vec![1.0 - n as f64 / m as f64],
            _ => sparsities,
        };
        Study {
            pattern,
            method: Method::Magnitude,
            inputs: Inputs::Dense,
            scope: Scope::Global,
            sparsities,
            exclude: Vec::new(),
            reflow: Reflow::cumulative(),
            repair: RepairChoice::Reflow,
        }
    }

    /// The same study, never pruning `name` (a parameter or a prefix of names).
    pub fn excluding(mut self, name: impl Into<String>) -> Study {
        self.exclude.push(name.into());
        self
    }

    /// Checks what can be checked without the network: at least one sparsity, each in
    /// [0, 1); sequential inputs only with an activation-aware method; REFLOW's
    /// parameters.
    pub fn validate(&self) -> Result<()> {
        if self.sparsities.is_empty() {
            return Err(Error::invalid("sparsity", "no value given"));
        }
        if self.inputs == Inputs::Sequential && self.method == Method::Magnitude {
            return Err(Error::unsupported(
                "inputs",
                "sequential: magnitude pruning measures no inputs (it applies to the wanda and sparsegpt methods)",
            ));
        }
        for &s in &self.sparsities {
            PrunePlan::new(s)
                .validate()
                .map_err(|_| Error::out_of_range("sparsity", s, "[0, 1)"))?;
        }
        self.reflow.validate()
    }

    /// The file names of the runs' networks (see [`Pattern::saved_name`]).
    pub fn saved_names(&self) -> Vec<String> {
        let names = self.sparsities.iter();
        names.map(|&s| self.pattern.saved_name(s)).collect()
    }

    /// The runs' pruners, each checked against `net` (exclusions that match nothing,
    /// an N:M that prunes nothing, a family without channel scope) before any data.
    pub fn pruners(&self, net: &Model) -> Result<Runs> {
        /// `p` with every exclusion.
        fn excluding<P>(p: P, exclude: &[String], add: fn(P, String) -> P) -> P {
            exclude.iter().cloned().fold(p, add)
        }
        let exclude = &self.exclude;
        if self.method != Method::Magnitude {
            return self.activation_pruners(net);
        }
        match self.pattern {
            Pattern::Unstructured => self
                .sparsities
                .iter()
                .map(|&s| {
                    let p = MagnitudePruner::new(s).scope(self.scope);
                    let p = excluding(p, exclude, MagnitudePruner::exclude);
                    p.plan().check(net).map(|_| p)
                })
                .collect::<Result<_>>()
                .map(Runs::Unstructured),
            Pattern::Nm(n, m) => {
                let pruner = excluding(NmPruner::new(n, m)?, exclude, NmPruner::exclude);
                let skipped = pruner.skipped(net)?;
                pruner.masks(net)?;
                Ok(Runs::Nm(pruner, skipped))
            }
            Pattern::Channel => {
                if net.family().about().channel_pruning.is_none() {
                    let supported: Vec<_> = FAMILIES
                        .iter()
                        .filter_map(|f| f.about().channel_pruning)
                        .collect();
                    return Err(Error::unsupported(
                        "pattern",
                        format!(
                            "channel: channel pruning supports {}; this network is a {}",
                            supported.join(" and "),
                            net.arch().family()
                        ),
                    ));
                }
                let state = StateDict::from_layer(net);
                let scope = crate::prune::ChannelPrunable::channel_scope(net);
                self.sparsities
                    .iter()
                    .map(|&s| {
                        let p = excluding(ChannelPruner::new(s)?, exclude, ChannelPruner::exclude);
                        p.select(&state, &scope).map(|_| p)
                    })
                    .collect::<Result<_>>()
                    .map(Runs::Channel)
            }
        }
    }
}

impl Study {
    /// Prunes `net` as this study's first run does (its first sparsity), with no
    /// evaluation and no repair: the stage on its own. The activation-aware methods
    /// measure their statistics on `calibration` first — on the dense network, or
    /// layer by layer with [`Inputs::Sequential`] — and refuse to run without it;
    /// channel pruning replaces `net` with the compact network. Returns what was
    /// pruned (with the zeros in [`SparsityReport::measure`](crate::prune::SparsityReport::measure)).
    ///
    /// ```
    /// use reflow::layer::count_prunable;
    /// use reflow::models::{Model, ResNet, ResNetConfig};
    /// use reflow::protocol::{Pattern, Pruned, Study};
    /// use reflow::prune::SparsityReport;
    ///
    /// let mut net = Model::new(ResNet::new(ResNetConfig::cifar_resnet(8)?)?);
    /// # use reflow::layer::Params;
    /// # let mut i = 0u32;
    /// # net.visit_params_mut(&mut |p| if p.role.is_prunable() { p.data.iter_mut().for_each(|v| { i = i.wrapping_mul(747796405).wrapping_add(2891336453); *v = (i >> 9) as f32 / 8388608.0 - 1.0; }) });
    /// let pruned = Study::new(Pattern::Nm(2, 4), vec![]).prune(&mut net, None)?;
    /// assert!(matches!(pruned, Pruned::Nm(ref dense) if dense == &["conv1.weight"]));
    /// let zeros = SparsityReport::measure(&net).prunable_sparsity();
    /// assert!(zeros > 0.45 && zeros <= 0.5, "{zeros}");
    /// let before = count_prunable(&net);
    /// Study::new(Pattern::Channel, vec![0.5]).prune(&mut net, None)?;
    /// assert!(count_prunable(&net) < before);
    /// # Ok::<(), reflow::Error>(())
    /// ```
    pub fn prune(&self, net: &mut Model, calibration: Option<&ImageBatches<'_>>) -> Result<Pruned> {
        self.validate()?;
        let data = || {
            calibration.ok_or_else(|| {
                Error::invalid(
                    "calibration images",
                    format!(
                        "{} measures each layer's inputs on calibration images; none given",
                        self.method
                    ),
                )
            })
        };
        let kind = |skipped: Option<Vec<String>>| match skipped {
            Some(skipped) => Pruned::Nm(skipped),
            None => Pruned::Unstructured,
        };
        let sequential = self.inputs == Inputs::Sequential;
        match self.pruners(net)? {
            Runs::Unstructured(pruners) => {
                pruners[0].prune(net)?;
                Ok(Pruned::Unstructured)
            }
            Runs::Nm(pruner, skipped) => {
                pruner.prune(net)?;
                Ok(Pruned::Nm(skipped))
            }
            Runs::Channel(pruners) => {
                let (compact, report) = pruners[0].prune(net)?;
                *net = compact;
                Ok(Pruned::Channel(report))
            }
            Runs::Wanda(mut pruners, skipped) => {
                let pruner = pruners.swap_remove(0);
                match sequential {
                    true => pruner.prune_sequential(net, data()?).map(drop)?,
                    false => {
                        let norms = InputNorms::measure(&*net, data()?)?;
                        pruner.with_norms(norms).prune(net)?;
                    }
                }
                Ok(kind(skipped))
            }
            Runs::SparseGpt(mut pruners, skipped) => {
                let pruner = pruners.swap_remove(0);
                match sequential {
                    true => pruner.prune_sequential(net, data()?).map(drop)?,
                    false => {
                        let hessians = Hessians::measure(&*net, data()?)?;
                        pruner.with_hessians(hessians).prune(net)?;
                    }
                }
                Ok(kind(skipped))
            }
        }
    }
}

impl Study {
    /// [`Study::pruners`] for the activation-aware methods: without their statistics
    /// yet (the study measures them), checked against `net`.
    fn activation_pruners(&self, net: &Model) -> Result<Runs> {
        let (sparsities, nm) = match self.pattern {
            Pattern::Unstructured => (self.sparsities.clone(), None),
            Pattern::Nm(n, m) => (vec![0.0], Some((n, m))),
            Pattern::Channel => {
                return Err(Error::unsupported(
                    "method",
                    format!(
                    "{} chooses weights, not channels: channel pruning ranks filters by their norm",
                    self.method
                ),
                ))
            }
        };
        /// The pruners of type `$ty`, made from `$empty` statistics, and with N:M the
        /// tensors they leave dense.
        macro_rules! checked {
            ($ty:ident, $empty:expr) => {{
                let mut pruners = Vec::new();
                for &s in &sparsities {
                    let p = self
                        .exclude
                        .iter()
                        .cloned()
                        .fold($ty::new(s, $empty), $ty::exclude);
                    let p = match nm {
                        Some((n, m)) => p.nm(n, m)?,
                        None => p,
                    };
                    p.check(net)?;
                    pruners.push(p);
                }
                let skipped = match nm {
                    Some(_) => Some(pruners[0].skipped(net)?),
                    None => None,
                };
                (pruners, skipped)
            }};
        }
        Ok(match self.method {
            Method::SparseGpt => {
                let (pruners, skipped) = checked!(SparseGptPruner, Hessians::default());
                Runs::SparseGpt(pruners, skipped)
            }
            _ => {
                let (pruners, skipped) = checked!(WandaPruner, InputNorms::default());
                Runs::Wanda(pruners, skipped)
            }
        })
    }
}

/// The pruners of a study's runs, checked against the network.
#[derive(Debug)]
pub enum Runs {
    /// One magnitude pruner per sparsity.
    Unstructured(Vec<MagnitudePruner>),
    /// The N:M pruner and the tensors it leaves dense.
    Nm(NmPruner, Vec<String>),
    /// One channel pruner per sparsity.
    Channel(Vec<ChannelPruner>),
    /// One Wanda pruner per sparsity (one for N:M, with the tensors it leaves dense),
    /// their norms measured when the study runs.
    Wanda(Vec<WandaPruner>, Option<Vec<String>>),
    /// One SparseGPT pruner per sparsity (one for N:M, with the tensors it leaves
    /// dense), their Hessians measured when the study runs.
    SparseGpt(Vec<SparseGptPruner>, Option<Vec<String>>),
}

impl Runs {
    /// How many runs.
    pub fn len(&self) -> usize {
        match self {
            Runs::Unstructured(p) => p.len(),
            Runs::Nm(..) => 1,
            Runs::Channel(p) => p.len(),
            Runs::Wanda(p, _) => p.len(),
            Runs::SparseGpt(p, _) => p.len(),
        }
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a run pruned, beyond the zeros in [`Run::report`].
#[derive(Debug, Clone, PartialEq)]
pub enum Pruned {
    /// Weights set to zero.
    Unstructured,
    /// N:M, and the tensors it left dense.
    Nm(Vec<String>),
    /// The channels removed.
    Channel(ChannelReport),
}

impl Pruned {
    /// The fraction pruned: of the prunable weights, or of the channels in scope.
    pub fn actual(&self, run: &Run) -> f64 {
        match self {
            Pruned::Channel(r) => r.channel_fraction(),
            _ => run.report.prunable_sparsity(),
        }
    }

    /// The report's entry for `run` of `study`.
    pub fn report(&self, run: &Run, study: &Study) -> RunReport {
        let scope = match (study.pattern, study.method) {
            (Pattern::Unstructured, Method::Magnitude) => study.scope,
            _ => Scope::Layer,
        };
        let layers = match self {
            Pruned::Channel(report) => Layers::channels(report),
            _ => Layers::tensors(&run.report),
        };
        let name = study.pattern.name();
        let mut entry = RunReport::of(run, &name, &scope.to_string(), self.actual(run), layers);
        match self {
            Pruned::Unstructured => {}
            Pruned::Nm(skipped) => entry.skipped = Some(skipped.clone()),
            Pruned::Channel(report) => {
                entry.skipped = Some(report.skipped.iter().map(|s| s.conv.clone()).collect());
                entry.params = Some(report.params.1);
            }
        }
        entry
    }
}

/// Where a study is, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress<'a> {
    /// A run starts: its label (`unstructured 0.5`, `2:4`).
    Run(&'a str),
    /// One evaluation pass is done (two per run).
    Pass,
}

impl Protocol<'_> {
    /// Runs `runs` (from [`Study::pruners`]) on `net`, each from the dense weights
    /// (`dense`, from [`Protocol::dense`] on the same network): prune, evaluate,
    /// repair, evaluate. `save` gets each run's network and its file name (a channel
    /// run's network is the compact one) as the repair stage left it; `net` ends as
    /// the last unstructured or N:M run left it.
    pub fn study(
        &self,
        net: &mut Model,
        study: &Study,
        runs: Runs,
        dense: &Dense,
        save: &mut dyn FnMut(&str, &Model) -> Result<()>,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<Vec<(Run, Pruned)>> {
        let dense_state = StateDict::from_layer(net);
        let label = |s: f64| {
            let method = match study.method {
                Method::Magnitude => String::new(),
                other => format!("{} ", other.name()),
            };
            match study.pattern {
                Pattern::Nm(..) => format!("{method}{}", study.pattern.name()),
                _ => format!("{method}{} {s}", study.pattern.name()),
            }
        };
        let mut done = Vec::new();
        fn boxed<P: Pruner + 'static>(pruners: Vec<P>) -> Vec<Box<dyn Pruner>> {
            pruners
                .into_iter()
                .map(|p| Box::new(p) as Box<dyn Pruner>)
                .collect()
        }
        let pruned_kind = |skipped: &Option<Vec<String>>| match skipped {
            Some(skipped) => Pruned::Nm(skipped.clone()),
            None => Pruned::Unstructured,
        };
        if study.inputs == Inputs::Sequential {
            let (runs, skipped) = self.sequential(runs)?;
            for (&s, prune) in study.sparsities.iter().zip(runs) {
                progress(Progress::Run(&label(s)));
                let started = Instant::now();
                dense_state.load_into(net)?;
                prune(net)?;
                let pass = &mut || progress(Progress::Pass);
                let run = self.run_pruned(net, dense, s, started, pass)?;
                save(&study.pattern.saved_name(s), net)?;
                done.push((run, pruned_kind(&skipped)));
            }
            return Ok(done);
        }
        // Runs that zero weights (SparseGPT's also update the others) in `net`, with
        // N:M the tensors left dense; the activation-aware ones' statistics measured
        // on the dense network, once (as OBC's and Wanda's default).
        let (pruners, skipped) = match runs {
            Runs::Unstructured(pruners) => (boxed(pruners), None),
            Runs::Nm(pruner, skipped) => (boxed(vec![pruner]), Some(skipped)),
            Runs::Wanda(pruners, skipped) => {
                let norms = InputNorms::measure(&*net, self.calibration)?;
                let pruners = pruners.into_iter().map(|p| p.with_norms(norms.clone()));
                (boxed(pruners.collect()), skipped)
            }
            Runs::SparseGpt(pruners, skipped) => {
                let hessians = std::sync::Arc::new(Hessians::measure(&*net, self.calibration)?);
                let pruners = pruners
                    .into_iter()
                    .map(|p| p.with_hessians(hessians.clone()));
                (boxed(pruners.collect()), skipped)
            }
            Runs::Channel(pruners) => {
                for (&s, pruner) in study.sparsities.iter().zip(pruners) {
                    progress(Progress::Run(&label(s)));
                    let started = Instant::now();
                    let (mut compact, report) = pruner.prune(net)?;
                    let pass = &mut || progress(Progress::Pass);
                    let run = self.run_pruned(&mut compact, dense, s, started, pass)?;
                    save(&study.pattern.saved_name(s), &compact)?;
                    done.push((run, Pruned::Channel(report)));
                }
                return Ok(done);
            }
        };
        for (&s, pruner) in study.sparsities.iter().zip(pruners) {
            progress(Progress::Run(&label(s)));
            let pass = &mut || progress(Progress::Pass);
            let run = self.run(net, &dense_state, dense, s, pruner, pass)?;
            save(&study.pattern.saved_name(s), net)?;
            done.push((run, pruned_kind(&skipped)));
        }
        Ok(done)
    }

    /// The activation-aware runs of `runs` in the sequential mode: each prunes a
    /// network with the calibration images layer by layer. With N:M, the tensors
    /// left dense.
    fn sequential(&self, runs: Runs) -> Result<(Vec<SequentialRun<'_>>, Option<Vec<String>>)> {
        let data = self.calibration;
        Ok(match runs {
            Runs::Wanda(pruners, skipped) => {
                let runs = pruners.into_iter().map(|p| -> SequentialRun<'_> {
                    Box::new(move |net| p.prune_sequential(net, data).map(drop))
                });
                (runs.collect(), skipped)
            }
            Runs::SparseGpt(pruners, skipped) => {
                let runs = pruners.into_iter().map(|p| -> SequentialRun<'_> {
                    Box::new(move |net| p.prune_sequential(net, data).map(drop))
                });
                (runs.collect(), skipped)
            }
            _ => {
                return Err(Error::unsupported(
                    "inputs",
                    "sequential: only the wanda and sparsegpt methods measure inputs",
                ))
            }
        })
    }
}

/// One run of the sequential mode: prunes the network it is given.
type SequentialRun<'a> = Box<dyn Fn(&mut Model) -> Result<()> + 'a>;
