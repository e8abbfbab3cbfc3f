#![allow(dead_code)] // each example uses its own part of this module

//! The evaluation protocol shared by `reflow prune` and the `prune` and `resnet`
//! examples: for each sparsity, from the dense checkpoint, prune → evaluate → repair
//! (REFLOW, none, or the automatic choice) → evaluate, with the signal metric of every
//! batch-norm layer and the fidelity to the dense network at each step.

use indicatif::{ProgressBar, ProgressStyle};
use reflow::io::ImageSource;
use reflow::metrics::argmax;
use reflow::prelude::*;
use reflow::stats::{Recorder, TapSelector};
use reflow::trust::{Fidelity, Reference, Repair, RepairReport};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Batch size for evaluation and signal measurement.
pub const EVAL_BATCH: usize = 256;

/// One network on the evaluation images: accuracy (when there are labels), the signal
/// on the signal images, and the fidelity to the dense network (for all but it).
pub struct Evaluation {
    pub accuracy: Option<Accuracy>,
    pub signal: Signal,
    pub fidelity: Option<Fidelity>,
}

impl Evaluation {
    /// Top-1, NaN without labels.
    pub fn top1(&self) -> f64 {
        self.accuracy.map_or(f64::NAN, |a| a.top1())
    }
}

/// The dense network, evaluated, and its outputs kept to compare the others with.
pub struct Dense {
    pub evaluation: Evaluation,
    /// Its outputs on the evaluation images.
    pub test: Reference,
    /// Its outputs on the calibration images (what the repair's choice and check judge
    /// by); `None` when the repair is none.
    pub calibration: Option<Reference>,
}

/// One sparsity's results.
pub struct Run {
    pub sparsity: f64,
    pub pruned: Evaluation,
    /// After the repair (the pruned network again when the repair made is none).
    pub repaired: Evaluation,
    /// Which repair was made, why, and the calibration check.
    pub repair: RepairReport,
    /// The pruned network's zeros, tensor by tensor.
    pub report: SparsityReport,
    pub secs: f64,
}

/// The data a protocol runs on.
pub struct Protocol<'a> {
    /// The evaluation images.
    pub test: &'a dyn ImageSource,
    /// Their labels, when there are: without, accuracy is not measured, fidelity is.
    pub labels: Option<&'a [u32]>,
    pub norm: &'a Normalization,
    pub calibration: &'a ImageBatches<'a>,
    /// The signal metric is measured on the first this many test images.
    pub signal_images: usize,
    pub repair: Repair,
}

/// `println!` that does not panic when stdout is closed (`reflow inspect m | head`):
/// what cannot be written is dropped.
#[allow(unused_macros)] // the resnet example prints with println!
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// How a command ends: 0 on success, 1 with the error on one line of stderr.
pub fn exit_with(result: reflow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What a command line that clap refused ends with: `--help` and `--version` print
/// and succeed; an error prints clap's message on one line (everything before the
/// usage text) and exits with 2.
pub fn clap_exit(e: clap::Error) -> std::process::ExitCode {
    if !e.use_stderr() {
        let _ = e.print();
        return std::process::ExitCode::SUCCESS;
    }
    let text = e.to_string();
    let message: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    eprintln!("{}", message.join(" "));
    std::process::ExitCode::from(2)
}

/// A progress bar on stderr for `steps` evaluations.
pub fn progress_bar(steps: u64) -> ProgressBar {
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    bar
}

impl Protocol<'_> {
    /// Evaluates the dense network and keeps its outputs: on the test images, and on
    /// the calibration images when a repair may be made.
    pub fn dense<N>(&self, net: &N) -> reflow::Result<Dense>
    where
        N: Layer<Input = reflow::nn::Tensor4, Output = reflow::nn::Tensor2>,
    {
        let mut test = Reference::new();
        let evaluation = self.pass(net, &mut |logits| test.push(logits))?;
        let calibration = match self.repair.candidates().is_empty() {
            true => None,
            false => Some(Reference::record(net, self.calibration)?),
        };
        Ok(Dense {
            evaluation,
            test,
            calibration,
        })
    }

    /// Top-1 on the whole test set (when labelled), the fidelity to `dense` on it and
    /// the signal metric on its first `signal_images` images, in one pass.
    pub fn evaluate<N>(&self, net: &N, dense: &Dense) -> reflow::Result<Evaluation>
    where
        N: Layer<Input = reflow::nn::Tensor4, Output = reflow::nn::Tensor2>,
    {
        let mut meter = dense.test.meter();
        let mut evaluation = self.pass(net, &mut |logits| meter.add(logits))?;
        evaluation.fidelity = Some(meter.finish()?);
        Ok(evaluation)
    }

    /// One pass over the test images: accuracy, signal, and each batch's logits to
    /// `outputs`.
    fn pass<N>(
        &self,
        net: &N,
        outputs: &mut dyn FnMut(&reflow::nn::Tensor2) -> reflow::Result<()>,
    ) -> reflow::Result<Evaluation>
    where
        N: Layer<Input = reflow::nn::Tensor4, Output = reflow::nn::Tensor2>,
    {
        let mut recorder = Recorder::new(TapSelector::batch_norm_outputs());
        let mut accuracy = Accuracy::default();
        let observed = self.signal_images.min(self.test.len());
        let ranges = chunks(0, observed).chain(chunks(observed, self.test.len()));
        for range in ranges {
            let indices: Vec<usize> = range.clone().collect();
            let x = self.test.tensor(&indices, self.norm)?;
            let logits = if range.start < observed {
                net.forward_with(&x, &mut Probe::new(&mut recorder))?
            } else {
                net.forward(&x)?
            };
            outputs(&logits)?;
            if let Some(labels) = self.labels {
                for (row, &label) in logits.rows().into_iter().zip(&labels[range]) {
                    accuracy.correct += (argmax(row.iter().copied()) == label as usize) as usize;
                    accuracy.total += 1;
                }
            }
        }
        Ok(Evaluation {
            accuracy: self.labels.map(|_| accuracy),
            signal: Signal::from_stats(&recorder.finish()?),
            fidelity: None,
        })
    }

    /// Restores `dense_state` into `net`, then prunes with `pruner`, evaluates, repairs
    /// and evaluates again. Ticks `progress` after each evaluation.
    pub fn run<N, P: Pruner>(
        &self,
        net: &mut N,
        dense_state: &StateDict,
        dense: &Dense,
        sparsity: f64,
        pruner: P,
        progress: &ProgressBar,
    ) -> reflow::Result<Run>
    where
        N: Layer<Input = reflow::nn::Tensor4, Output = reflow::nn::Tensor2>,
    {
        let started = Instant::now();
        dense_state.load_into(net)?;
        pruner.masks(net)?.apply(net)?;
        self.run_pruned(net, dense, sparsity, started, progress)
    }

    /// Evaluates `net`, pruned already (a channel-pruned, compact network), repairs it
    /// and evaluates again. `started` is when its pruning began.
    pub fn run_pruned<N>(
        &self,
        net: &mut N,
        dense: &Dense,
        sparsity: f64,
        started: Instant,
        progress: &ProgressBar,
    ) -> reflow::Result<Run>
    where
        N: Layer<Input = reflow::nn::Tensor4, Output = reflow::nn::Tensor2>,
    {
        let report = SparsityReport::measure(net);
        let pruned = self.evaluate(net, dense)?;
        progress.inc(1);
        let repair = match &dense.calibration {
            Some(on_calibration) => self.repair.apply(net, self.calibration, on_calibration)?,
            None => self
                .repair
                .apply(net, self.calibration, &Reference::new())?,
        };
        let repaired = match repair.rescale {
            Some(_) => self.evaluate(net, dense)?,
            None => Evaluation {
                accuracy: pruned.accuracy,
                signal: pruned.signal.clone(),
                fidelity: pruned.fidelity,
            },
        };
        progress.inc(1);
        Ok(Run {
            sparsity,
            pruned,
            repaired,
            repair,
            report,
            secs: started.elapsed().as_secs_f64(),
        })
    }
}

/// `start..end` in ranges of at most [`EVAL_BATCH`].
fn chunks(start: usize, end: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (start..end)
        .step_by(EVAL_BATCH)
        .map(move |s| s..(s + EVAL_BATCH).min(end))
}

/// The last batch-norm layer's signal relative to the dense network's.
pub fn last_ratio(signal: &Signal, dense: &Signal) -> f64 {
    signal.ratio_to(dense).last().map_or(f64::NAN, |(_, r)| r)
}

/// An invalid command-line argument `--flag`.
pub fn invalid(flag: &str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        name: format!("--{flag}"),
        reason: reason.into(),
    }
}

/// Where `path` is, whether or not it exists yet: its canonical form, or its folder's
/// with its name.
pub fn identity(path: &Path) -> Option<PathBuf> {
    path.canonicalize().ok().or_else(|| {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        Some(dir.canonicalize().ok()?.join(path.file_name()?))
    })
}

/// `dir` (the current folder when empty or absent) exists, is a folder, and takes a
/// new file.
pub fn writable_folder(flag: &str, dir: Option<&Path>) -> reflow::Result<()> {
    let dir = match dir {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(invalid(
            flag,
            format!("folder {} does not exist", dir.display()),
        ));
    }
    let probe = dir.join(format!(".reflow-write-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| invalid(flag, format!("cannot write in {}: {e}", dir.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The checkpoint a command reads, and how to read it.
#[derive(clap::Args, Debug)]
pub struct Checkpoint {
    /// safetensors state dict in torchvision layout, dense or with pruned weights in
    /// compressed-tensors' bitmask layout (--save-format compressed).
    #[arg(value_name = "CHECKPOINT")]
    pub weights: PathBuf,
    /// Network family or torchvision preset; auto detects it from the keys.
    #[arg(long, default_value = "auto")]
    pub arch: String,
    /// ResNet stem kind: cifar or imagenet (the one thing a ResNet's keys do not say;
    /// the stem kernel is checked against it).
    #[arg(long, default_value = "imagenet")]
    pub stem: String,
}

impl Checkpoint {
    /// The network, its family and shape read off the keys.
    pub fn load(&self) -> reflow::Result<reflow::models::Model> {
        let arch: reflow::models::Arch = self.arch.parse()?;
        let stem: reflow::models::Stem = self.stem.parse()?;
        reflow::models::Model::load(&self.weights, arch, stem)
    }
}
