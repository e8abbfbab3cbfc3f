//! The reflow crate for Python: the extension module `reflow._reflow`, which
//! `reflow/__init__.py` wraps. Tensors cross as safetensors bytes (the state dicts)
//! and little-endian `f32` bytes (the images), as safetensors' own Python side passes
//! them: no link to libtorch or to numpy's C API, one abi3 wheel for every CPython
//! from 3.10 on. The work runs with the interpreter released.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use reflow::data::{FloatImages, ImageSource, Normalization};
use reflow::models::{Arch, Model, Stem};
use reflow::protocol::{signal_images, CalibrationReport, Progress, Protocol, Report, Study};
use reflow::{Error, StateDict};

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

/// What `prune` is asked for: the wrapper's keyword arguments, as a dict.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Options {
    sparsity: f64,
    pattern: String,
    method: String,
    repair: String,
    scope: String,
    stem: Option<String>,
    arch: Option<String>,
    batch_size: usize,
    seed: Option<u64>,
    exclude: Vec<String>,
    /// Draw a progress bar on standard error.
    progress: bool,
}

/// Prunes the network of `state` (safetensors bytes) as `options` say, repairs it on
/// the calibration images (`images`: little-endian `f32` of shape `dims`, normalised)
/// and returns the result as safetensors bytes and the report as JSON.
#[pyfunction]
fn prune<'py>(
    py: Python<'py>,
    state: &[u8],
    images: &[u8],
    dims: [usize; 4],
    options: Options,
) -> PyResult<(Bound<'py, PyBytes>, String)> {
    let (state, report) = py
        .detach(|| run(state, images, dims, &options))
        .map_err(raised)?;
    Ok((PyBytes::new(py, &state), report))
}

/// The network of `state`, of `arch` (auto when none), its stem read off the stem
/// kernel when not named (only ResNets have one to name).
fn network(state: &StateDict, options: &Options) -> reflow::Result<Model> {
    let arch: Arch = options.arch.as_deref().unwrap_or("auto").parse()?;
    let stem: Stem = match options.stem.as_deref() {
        Some(stem) => stem.parse()?,
        None => stem_of(state),
    };
    Model::from_state_dict(state, arch, stem)
}

/// A ResNet's stem kind as its `conv1` kernel tells it (3×3 CIFAR, else ImageNet);
/// the other families ignore the stem.
fn stem_of(state: &StateDict) -> Stem {
    match state.get("conv1.weight").map(|t| t.shape.as_slice()) {
        Some([_, _, 3, 3]) => Stem::Cifar,
        _ => Stem::Imagenet,
    }
}

/// `bytes` as little-endian `f32` values of shape `dims`.
fn images_of(bytes: &[u8], dims: [usize; 4]) -> reflow::Result<FloatImages> {
    if !bytes.len().is_multiple_of(4) {
        return Err(Error::Data(format!(
            "calibration images: {} bytes are not whole float32 values",
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
    options: &Options,
) -> reflow::Result<(Vec<u8>, String)> {
    if dims[0] == 0 {
        return Err(Error::EmptyData {
            name: "calibration images".into(),
            what: "none given (N = 0)".into(),
        });
    }
    let state = StateDict::from_safetensors_bytes(state)?;
    let mut net = network(&state, options)?;
    let images = images_of(images, dims)?;
    if dims[1] != net.in_channels() {
        return Err(Error::Shape {
            context: "calibration images".into(),
            expected: format!("[N, {}, H, W]", net.in_channels()),
            found: dims.into(),
        });
    }
    // The images are normalised already.
    let norm = Normalization::new(vec![0.0; dims[1]], vec![1.0; dims[1]])?;
    let mut study = Study::new(options.pattern.parse()?, vec![options.sparsity]);
    study.method = options.method.parse()?;
    study.scope = options.scope.parse()?;
    study.repair = options.repair.parse()?;
    study.exclude = options.exclude.clone();
    study.validate()?;
    let runs = study.pruners(&net)?;
    let batch = (dims[0], options.batch_size);
    let calibration = study.calibration(&net, &images, batch, options.seed, &norm)?;
    // The calibration images are the evaluation images too: the report's fidelity is
    // the pruned network's agreement with the dense one on them, and its signal theirs.
    let protocol = Protocol {
        test: &images,
        labels: None,
        norm: &norm,
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

/// The version of the reflow crate inside.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _reflow(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(prune, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add("ReflowError", m.py().get_type::<ReflowError>())?;
    Ok(())
}
