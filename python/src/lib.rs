//! The reflow crate for Python: the extension module `reflow._reflow`, which
//! `reflow/__init__.py` wraps. Tensors cross as safetensors bytes (the state dicts)
//! and little-endian `f32` bytes (the images), as safetensors' own Python side passes
//! them: no link to libtorch or to numpy's C API, one abi3 wheel for every CPython
//! from 3.10 on. The work runs with the interpreter released.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};
use reflow::data::{FloatImages, ImageSource, Normalization};
use reflow::io::EvalTransform;
use reflow::layer::{Layer, Probe};
use reflow::metrics::argmax;
use reflow::models::{Arch, Model, Stem};
use reflow::protocol::{signal_images, CalibrationReport, Progress, Protocol, Report, Study};
use reflow::protocol::{Layers, Number, Pattern, Pruned, Source};
use reflow::prune::SparsityReport;
use reflow::rescale::{Reflow, Rescaler};
use reflow::stats::{Recorder, Signal, TapSelector};
use reflow::{Error, StateDict};
use std::path::PathBuf;

create_exception!(
    _reflow,
    ReflowError,
    PyValueError,
    "An error of the reflow crate (bad input, a network it does not support, a step that failed), with the crate's message."
);

/// The crate's error as a Python exception.
fn raised(e: Error) -> PyErr {
    ReflowError::new_err(e.to_string())
}

/// How to prune, as `reflow.prune` and `Network.prune` are both asked: items of their
/// options dict.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Pruning {
    sparsity: f64,
    pattern: String,
    method: String,
    inputs: String,
    scope: String,
    exclude: Vec<String>,
}

/// The study of one pruning (no repair yet), not yet validated.
fn study_of(pruning: &Pruning) -> reflow::Result<Study> {
    let mut study = Study::new(pruning.pattern.parse()?, vec![pruning.sparsity]);
    study.method = pruning.method.parse()?;
    study.inputs = pruning.inputs.parse()?;
    study.scope = pruning.scope.parse()?;
    study.exclude = pruning.exclude.clone();
    Ok(study)
}

/// What `prune` is asked for besides the pruning: the rest of the wrapper's keyword
/// arguments.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Options {
    repair: String,
    stem: Option<String>,
    arch: Option<String>,
    batch_size: usize,
    seed: Option<u64>,
    /// Draw a progress bar on standard error.
    progress: bool,
}

/// Prunes the network of `state` (safetensors bytes) as `options` say, repairs it on
/// the calibration images (`images`: little-endian `f32` of shape `dims`, normalised)
/// and returns the result as safetensors bytes (a `bytearray`, which the wrapper's arrays
/// view) and the report as JSON.
#[pyfunction]
fn prune<'py>(
    py: Python<'py>,
    state: &[u8],
    images: &[u8],
    dims: [usize; 4],
    options: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyByteArray>, String)> {
    let pruning: Pruning = options.extract()?;
    let options: Options = options.extract()?;
    let (state, report) = py
        .detach(|| run(state, images, dims, &pruning, &options))
        .map_err(raised)?;
    Ok((PyByteArray::new(py, &state), report))
}

/// The network of `state`, of `arch` (auto when none), its stem read off the stem
/// kernel when not named (only ResNets have one to name).
fn network(state: &StateDict, options: &Options) -> reflow::Result<Model> {
    load(state, options.arch.as_deref(), options.stem.as_deref())
}

/// A ResNet's stem kind as its `conv1` kernel tells it (3×3 CIFAR, else ImageNet);
/// the other families ignore the stem.
fn stem_of(state: &StateDict) -> Stem {
    match state.get("conv1.weight").map(|t| t.shape.as_slice()) {
        Some([_, _, 3, 3]) => Stem::Cifar,
        _ => Stem::Imagenet,
    }
}

/// `bytes` as little-endian `f32` values of shape `dims` (`what`, in errors).
fn images_of(bytes: &[u8], dims: [usize; 4], what: &str) -> reflow::Result<FloatImages> {
    if !bytes.len().is_multiple_of(4) {
        return Err(Error::Data(format!(
            "{what}: {} bytes are not whole float32 values",
            bytes.len()
        )));
    }
    let values = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    FloatImages::new(dims, values)
}

fn run(
    state: &[u8],
    images: &[u8],
    dims: [usize; 4],
    pruning: &Pruning,
    options: &Options,
) -> reflow::Result<(Vec<u8>, String)> {
    let images = PyImages::normalised(images, dims, "calibration images")?;
    let state = StateDict::from_safetensors_bytes(state)?;
    let mut net = network(&state, options)?;
    images.check(&net, "calibration images")?;
    let norm = &images.norm;
    let images = &*images.source;
    let mut study = study_of(pruning)?;
    study.repair = options.repair.parse()?;
    study.validate()?;
    let runs = study.pruners(&net)?;
    let batch = (dims[0], options.batch_size);
    let calibration = study.calibration(&net, images, batch, options.seed, norm)?;
    // The calibration images are the evaluation images too: the report's fidelity is
    // the pruned network's agreement with the dense one on them, and its signal theirs.
    let protocol = Protocol {
        test: images,
        labels: None,
        norm,
        calibration: &calibration,
        signal_images: signal_images(None, images.len())?,
        repair: study.repair.repair(study.reflow),
        shard: reflow::protocol::Shard::WHOLE,
    };
    let bar = progress_bar(options.progress, 1 + 2 * study.sparsities.len() as u64);
    bar.set_message("dense model");
    let dense = protocol.dense(&net)?;
    bar.inc(1);
    let mut show = |step: Progress<'_>| match step {
        Progress::Run(label) => bar.set_message(label.to_string()),
        Progress::Pass => bar.inc(1),
    };
    let mut result = None;
    let mut keep = |_: &str, net: &Model| {
        result = Some(StateDict::from_layer(net));
        Ok(())
    };
    let runs = protocol.study(&mut net, &study, runs, &dense, &mut keep, &mut show)?;
    bar.finish_and_clear();
    let source = "numpy array".to_string();
    let calibration = CalibrationReport::of(
        source,
        &calibration,
        options.seed,
        runs.iter().map(|(r, _)| r),
    );
    let dense = (&dense.evaluation, images.len());
    let report = Report::of(&net, &study, calibration, dense, &runs);
    let state = result.expect("a study of one sparsity saves one network");
    let json = serde_json::to_string(&report).expect("the report serialises");
    Ok((state.to_safetensors_bytes()?, json))
}

/// The steps of a run as `reflow prune` shows them (the dense network, then each
/// run's two evaluations), drawn on standard error when `shown` (the wrapper asks for
/// it when standard error is a terminal), else nowhere.
fn progress_bar(shown: bool, steps: u64) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("a valid template");
    bar.set_style(style);
    bar
}

/// Images for a network's stages: normalised `f32` values, or an image folder read and
/// preprocessed as torchvision does (with its classes' labels when it has classes).
#[pyclass(name = "Images", module = "reflow._reflow", frozen)]
struct PyImages {
    source: Source,
    labels: Option<Vec<u32>>,
    norm: Normalization,
}

#[pymethods]
impl PyImages {
    /// Normalised images of shape `dims`, as little-endian `f32` bytes.
    #[staticmethod]
    fn from_array(py: Python<'_>, data: &[u8], dims: [usize; 4]) -> PyResult<PyImages> {
        py.detach(|| PyImages::normalised(data, dims, "images"))
            .map_err(raised)
    }

    /// The images of a folder in torchvision's `ImageFolder` layout (one sub-folder per
    /// class: labels) or with the images directly in it (no labels), read as
    /// `channels` channels, resized, centre-cropped and normalised as torchvision's
    /// `Resize`, `CenterCrop`, `ToTensor` and `Normalize` do.
    #[staticmethod]
    #[pyo3(signature = (path, channels, mean, std, resize=None, crop=None))]
    fn from_folder(
        py: Python<'_>,
        path: PathBuf,
        channels: usize,
        mean: Vec<f32>,
        std: Vec<f32>,
        resize: Option<usize>,
        crop: Option<usize>,
    ) -> PyResult<PyImages> {
        py.detach(|| {
            let norm = Normalization::new(mean, std)?;
            if norm.channels() != channels {
                return Err(invalid(
                    "mean/std",
                    format!("{} values for {channels} channel(s)", norm.channels()),
                ));
            }
            let folder = reflow::protocol::Images::Folder(path.clone());
            let name = path.display().to_string();
            let transform = EvalTransform { resize, crop };
            let test = folder.open_test(None, channels, usize::MAX, transform, (&name, &name))?;
            Ok(PyImages {
                source: test.images,
                labels: test.labels.map(|l| l.as_slice().to_vec()),
                norm,
            })
        })
        .map_err(raised)
    }

    fn __len__(&self) -> usize {
        self.source.len()
    }

    /// `[C, H, W]` of every image.
    #[getter]
    fn dims(&self) -> (usize, usize, usize) {
        let [c, h, w] = self.source.image_dims();
        (c, h, w)
    }

    /// A folder's class of every image, in order; `None` for arrays and unlabelled
    /// folders.
    #[getter]
    fn labels(&self) -> Option<Vec<u32>> {
        self.labels.clone()
    }
}

impl PyImages {
    /// `what`: normalised images of shape `dims`, as little-endian `f32` bytes; at
    /// least one.
    fn normalised(data: &[u8], dims: [usize; 4], what: &str) -> reflow::Result<PyImages> {
        if dims[0] == 0 {
            return Err(Error::EmptyData {
                name: what.into(),
                what: "none given (N = 0)".into(),
            });
        }
        Ok(PyImages {
            source: Box::new(images_of(data, dims, what)?),
            labels: None,
            norm: Normalization::new(vec![0.0; dims[1]], vec![1.0; dims[1]])?,
        })
    }

    /// Checked against `net`: its input channels.
    fn check(&self, net: &Model, what: &str) -> reflow::Result<()> {
        let [c, h, w] = self.source.image_dims();
        if c != net.in_channels() {
            return Err(Error::Shape {
                context: what.into(),
                expected: format!("[N, {}, H, W]", net.in_channels()),
                found: [self.source.len(), c, h, w].into(),
            });
        }
        Ok(())
    }

    /// Images `range`, normalised.
    fn batch(&self, range: std::ops::Range<usize>) -> reflow::Result<reflow::data::Tensor4> {
        let indices: Vec<usize> = range.collect();
        self.source.tensor(&indices, &self.norm)
    }
}

/// How `Network.prune` measures on its calibration images (Wanda, SparseGPT): the
/// rest of its options dict.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Calibrating {
    batch_size: usize,
    count: Option<usize>,
    seed: Option<u64>,
}

/// A network of one of the crate's families, loaded from a state dict, and its
/// stages one at a time.
#[pyclass(name = "Network", module = "reflow._reflow")]
struct PyNetwork {
    model: Model,
}

#[pymethods]
impl PyNetwork {
    /// The network of `state` (safetensors bytes): its family read off its keys, or
    /// `arch`; a ResNet's stem off its stem kernel, or `stem`.
    #[new]
    #[pyo3(signature = (state, arch=None, stem=None))]
    fn new(
        py: Python<'_>,
        state: &[u8],
        arch: Option<String>,
        stem: Option<String>,
    ) -> PyResult<Self> {
        py.detach(|| {
            let state = StateDict::from_safetensors_bytes(state)?;
            load(&state, arch.as_deref(), stem.as_deref())
        })
        .map(|model| PyNetwork { model })
        .map_err(raised)
    }

    /// `resnet`, `regnet`, `mobilenet_v2`, ...
    #[getter]
    fn family(&self) -> String {
        self.model.arch().family().to_string()
    }

    /// The preset its shapes match (`resnet18`), else the family.
    #[getter]
    fn arch(&self) -> String {
        self.model.arch().to_string()
    }

    /// Parameters, as PyTorch counts them.
    #[getter]
    fn parameters(&self) -> usize {
        reflow::layer::count_parameters(&self.model)
    }

    /// Convolution and linear weights.
    #[getter]
    fn prunable(&self) -> usize {
        reflow::layer::count_prunable(&self.model)
    }

    /// Input channels.
    #[getter]
    fn in_channels(&self) -> usize {
        self.model.in_channels()
    }

    /// Classes.
    #[getter]
    fn num_classes(&self) -> usize {
        self.model.num_classes()
    }

    /// The state dict, as safetensors bytes (every key torchvision's model has), in a
    /// `bytearray` that the wrapper's arrays view.
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyByteArray>> {
        let bytes = py
            .detach(|| StateDict::from_layer(&self.model).to_safetensors_bytes())
            .map_err(raised)?;
        Ok(PyByteArray::new(py, &bytes))
    }

    /// The outputs on `images`, in batches of `batch_size`: little-endian `f32`
    /// bytes of shape `[N, classes]`.
    fn logits<'py>(
        &self,
        py: Python<'py>,
        images: &PyImages,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = py
            .detach(|| {
                images.check(&self.model, "images")?;
                let mut bytes =
                    Vec::with_capacity(images.source.len() * self.model.num_classes() * 4);
                for range in batches(images.source.len(), batch_size)? {
                    let logits = self.model.forward(&images.batch(range)?)?;
                    bytes.extend(logits.iter().flat_map(|v| v.to_le_bytes()));
                }
                Ok(bytes)
            })
            .map_err(raised)?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Top-1 on `images` against `labels` (the folder's when `None`), and the signal
    /// metric of every batch norm on the first `signal_count` of them (1,000 or all by
    /// default), in one pass:
    /// the JSON of `{"images", "correct", "top1", "bn_signal"}` (`correct` and `top1`
    /// null without labels).
    #[pyo3(signature = (images, labels, batch_size, signal_count))]
    fn evaluate(
        &self,
        py: Python<'_>,
        images: &PyImages,
        labels: Option<Vec<u32>>,
        batch_size: usize,
        signal_count: Option<usize>,
    ) -> PyResult<String> {
        py.detach(|| {
            images.check(&self.model, "images")?;
            let n = images.source.len();
            let labels = labels.or_else(|| images.labels.clone());
            if let Some(labels) = &labels {
                if labels.len() != n {
                    return Err(invalid(
                        "labels",
                        format!("{} labels for {n} images", labels.len()),
                    ));
                }
                let classes = self.model.num_classes();
                if let Some(i) = labels.iter().position(|&l| l as usize >= classes) {
                    return Err(invalid(
                        "labels",
                        format!(
                            "label {} of image {i}, but the network has {classes} classes",
                            labels[i]
                        ),
                    ));
                }
            }
            check_batch(batch_size)?;
            let observed = signal_images(signal_count, n)?;
            let mut recorder = Recorder::new(TapSelector::batch_norm_outputs());
            let mut correct = 0;
            for range in reflow::protocol::sweep::blocks(n, observed, batch_size) {
                let x = images.batch(range.clone())?;
                let logits = match range.start < observed {
                    true => self
                        .model
                        .forward_with(&x, &mut Probe::new(&mut recorder))?,
                    false => self.model.forward(&x)?,
                };
                if let Some(labels) = &labels {
                    let rows = logits.rows().into_iter().zip(&labels[range]);
                    correct += rows
                        .filter(|(row, &l)| argmax(row.iter().copied()) == l as usize)
                        .count();
                }
            }
            let signal = Signal::from_stats(&recorder.finish()?);
            let report = serde_json::json!({
                "images": n,
                "correct": labels.as_ref().map(|_| correct),
                "top1": labels.as_ref().map(|_| correct as f64 / n as f64),
                "bn_signal": reflow::protocol::SignalReport::of(&signal),
            });
            Ok(report.to_string())
        })
        .map_err(raised)
    }

    /// Prunes the network in place as `options` say (one sparsity), with no repair;
    /// the activation-aware methods measure their statistics on `calibration`. The
    /// JSON of what was pruned: `{"pattern", "sparsity", "actual_sparsity", "layers"}`
    /// and `"skipped"` (N:M: tensors left dense; channel: convolutions kept whole),
    /// `"params"` (channel: the compact network's).
    #[pyo3(signature = (options, calibration=None))]
    fn prune(
        &mut self,
        py: Python<'_>,
        options: &Bound<'_, PyAny>,
        calibration: Option<&PyImages>,
    ) -> PyResult<String> {
        let pruning: Pruning = options.extract()?;
        let options: Calibrating = options.extract()?;
        let model = &mut self.model;
        py.detach(|| {
            let study = study_of(&pruning)?;
            study.validate()?;
            let batches = match calibration {
                Some(images) => {
                    images.check(model, "calibration")?;
                    let count = options.count.unwrap_or(images.source.len());
                    let counts = (count, options.batch_size);
                    Some(study.calibration(
                        model,
                        &*images.source,
                        counts,
                        options.seed,
                        &images.norm,
                    )?)
                }
                None => None,
            };
            let pruned = study.prune(model, batches.as_ref())?;
            let zeros = SparsityReport::measure(&*model);
            let mut report = serde_json::json!({
                "pattern": study.pattern.name(),
                "sparsity": study.sparsities[0],
            });
            let (actual, layers) = match &pruned {
                Pruned::Channel(r) => (r.channel_fraction(), Layers::channels(r)),
                _ => (zeros.prunable_sparsity(), Layers::tensors(&zeros)),
            };
            report["actual_sparsity"] = serde_json::json!(Number(actual));
            report["layers"] = serde_json::to_value(layers).expect("serialises");
            match &pruned {
                Pruned::Unstructured => {}
                Pruned::Nm(skipped) => report["skipped"] = serde_json::json!(skipped),
                Pruned::Channel(r) => {
                    let kept: Vec<&str> = r.skipped.iter().map(|s| s.conv.as_str()).collect();
                    report["skipped"] = serde_json::json!(kept);
                    report["params"] = serde_json::json!(r.params.1);
                }
            }
            Ok(report.to_string())
        })
        .map_err(raised)
    }

    /// REFLOW: re-estimates every batch norm's running statistics on `calibration`
    /// (`count` of its images, all by default, in batches of `batch_size`, in order or
    /// by a seeded shuffle), with `mode` `cumulative`, `ema` (with `momentum`) or
    /// `exact`. No trainable weight changes.
    #[pyo3(signature = (calibration, mode, momentum, batch_size, count=None, seed=None))]
    #[allow(clippy::too_many_arguments)]
    fn reflow(
        &mut self,
        py: Python<'_>,
        calibration: &PyImages,
        mode: String,
        momentum: Option<f64>,
        batch_size: usize,
        count: Option<usize>,
        seed: Option<u64>,
    ) -> PyResult<()> {
        let model = &mut self.model;
        py.detach(|| {
            calibration.check(model, "calibration")?;
            let reflow = match (mode.as_str(), momentum) {
                ("cumulative", None) => Reflow::cumulative(),
                ("exact", None) => Reflow::exact(),
                ("ema", m) => Reflow::ema(m.unwrap_or(0.1)),
                ("cumulative" | "exact", Some(_)) => {
                    return Err(invalid(
                        "momentum",
                        format!("applies to mode \"ema\"; mode \"{mode}\" takes none"),
                    ))
                }
                (other, _) => {
                    return Err(invalid(
                        "mode",
                        format!("\"{other}\" (expected cumulative, ema or exact)"),
                    ))
                }
            };
            reflow.validate()?;
            let study = Study {
                reflow,
                ..Study::new(Pattern::Unstructured, vec![0.0])
            };
            let count = count.unwrap_or(calibration.source.len());
            let counts = (count, batch_size);
            let source = &*calibration.source;
            let batches = study.calibration(model, source, counts, seed, &calibration.norm)?;
            Rescaler::<reflow::data::Tensor4>::rescale(&reflow, model, &batches).map(drop)
        })
        .map_err(raised)
    }
}

/// The network of `state`: `arch` or the family its keys say; a ResNet's stem named,
/// or read off its stem kernel.
fn load(state: &StateDict, arch: Option<&str>, stem: Option<&str>) -> reflow::Result<Model> {
    let arch: Arch = arch.unwrap_or("auto").parse()?;
    let stem: Stem = match stem {
        Some(stem) => stem.parse()?,
        None => stem_of(state),
    };
    Model::from_state_dict(state, arch, stem)
}

/// An invalid argument `name`.
fn invalid(name: &str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        name: name.into(),
        reason: reason.into(),
    }
}

/// A batch size, positive.
fn check_batch(batch_size: usize) -> reflow::Result<()> {
    match batch_size {
        0 => Err(invalid("batch_size", "must be positive")),
        _ => Ok(()),
    }
}

/// `0..n` in runs of at most `batch_size`.
fn batches(n: usize, batch_size: usize) -> reflow::Result<Vec<std::ops::Range<usize>>> {
    check_batch(batch_size)?;
    Ok(reflow::protocol::sweep::blocks(n, 0, batch_size))
}

/// The version of the reflow crate inside.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _reflow(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(prune, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_class::<PyNetwork>()?;
    m.add_class::<PyImages>()?;
    m.add("ReflowError", m.py().get_type::<ReflowError>())?;
    Ok(())
}
