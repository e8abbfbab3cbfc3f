//! Helpers shared by the integration tests: fixture paths, tensors from fixture files,
//! and the parity tolerance.
#![allow(dead_code)]

use ndarray::{ArrayD, IxDyn};
use reflow::layer::{ActivationView, LayerKind, Observer, Site, Tap};
use reflow::StateDict;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// The binary of example `name`, next to this test (`target/<profile>/examples/`).
/// `cargo test` builds examples; `cargo build --example` here makes sure it is current
/// when a test runs alone.
pub fn example_binary(name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the {name} example failed");
    let deps = std::env::current_exe().unwrap();
    let dir = deps.parent().unwrap().parent().unwrap();
    dir.join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The prune tool's flags for the bundled ResNet-20 and Fashion-MNIST files in
/// `assets/fashion-mnist/`.
#[allow(dead_code)] // each test binary uses its own part of this module
pub fn bundled_prune_args() -> Vec<String> {
    let asset = |name: &str| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("assets/fashion-mnist")
            .join(name)
            .to_string_lossy()
            .into_owned()
    };
    vec![
        "--weights".into(),
        asset("resnet20_fmnist.safetensors"),
        "--stem".into(),
        "cifar".into(),
        "--test-images".into(),
        asset("t10k-images-idx3-ubyte.gz"),
        "--test-labels".into(),
        asset("t10k-labels-idx1-ubyte.gz"),
        "--calib-images".into(),
        asset("calib-images-idx3-ubyte.gz"),
        "--mean".into(),
        "0.2860".into(),
        "--std".into(),
        "0.3530".into(),
    ]
}

/// `n` deterministic 3-channel 16 × 16 images of bytes (the ResNet-20 fixture takes
/// 3 channels); `seed` makes another set.
#[allow(dead_code)]
pub fn pixels(n: usize, seed: usize) -> Vec<u8> {
    (0..n * 3 * 256)
        .map(|i| ((i * 2_654_435_761 + seed) >> 7) as u8)
        .collect()
}

/// Writes a u8 IDX file of `dims` holding `data` to `path`, gzip-compressed or not.
#[allow(dead_code)]
pub fn write_idx(path: &std::path::Path, dims: &[u32], data: &[u8], gzip: bool) {
    use std::io::Write;
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    dims.iter()
        .for_each(|d| bytes.extend_from_slice(&d.to_be_bytes()));
    bytes.extend_from_slice(data);
    if gzip {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&bytes).unwrap();
        bytes = e.finish().unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

/// Reads `tests/fixtures/<name>` as a state dict.
pub fn read(name: &str) -> StateDict {
    StateDict::read_safetensors(fixture(name)).expect("fixture reads")
}

/// The float tensor `key` of `state` as an n-d array.
pub fn array(state: &StateDict, key: &str) -> ArrayD<f32> {
    let t = state
        .get(key)
        .unwrap_or_else(|| panic!("fixture has no {key}"));
    ArrayD::from_shape_vec(IxDyn(&t.shape), t.as_f32().expect("float").to_vec()).unwrap()
}

/// The tensors of `state` under `prefix.`, with the prefix removed.
pub fn strip_prefix(state: &StateDict, prefix: &str) -> StateDict {
    let mut out = StateDict::new();
    for (k, t) in state.iter() {
        if let Some(rest) = k.strip_prefix(&format!("{prefix}.")) {
            out.insert(rest, t.clone());
        }
    }
    out
}

/// max |got − want| / max |want|: the parity criterion is that this is ≤ 1e-4.
pub fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length");
    let scale = want.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    err / scale.max(f64::MIN_POSITIVE)
}

/// The parity tolerance of the issue: 1e-4 of the tensor's max |value|.
pub const PARITY: f64 = 1e-4;

/// Records a copy of every batch-norm output, by layer path.
#[derive(Default)]
pub struct BnOutputs(pub BTreeMap<String, (Vec<usize>, Vec<f32>)>);

impl Observer for BnOutputs {
    fn wants(&self, tap: &Tap<'_>) -> bool {
        tap.kind == LayerKind::BatchNorm && tap.site == Site::Output
    }

    fn observe(&mut self, tap: &Tap<'_>, act: ActivationView<'_>) {
        self.0.insert(
            tap.layer.to_string(),
            (
                vec![act.batch, act.channels, act.spatial],
                act.data.to_vec(),
            ),
        );
    }
}

/// Runs `f` at every kernel level this machine supports ([`reflow::cpu::supported`]),
/// with the process-wide cap set to that level meanwhile, then restores the cap.
/// The tests of one binary that call it take turns, so that each runs wholly at the
/// level it names; the level is printed, so a failure's output says which one failed.
pub fn at_every_level(mut f: impl FnMut(reflow::cpu::Level)) {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    /// Restores the cap, also when `f` panics.
    struct Restore(reflow::cpu::Level);
    impl Drop for Restore {
        fn drop(&mut self) {
            reflow::cpu::set_max_level(self.0);
        }
    }
    let _restore = Restore(reflow::cpu::max_level());
    for level in reflow::cpu::supported() {
        reflow::cpu::set_max_level(level);
        assert_eq!(reflow::cpu::level(), level);
        eprintln!("kernel level {level}");
        f(level);
    }
}

/// The JSON report a run of the prune tool wrote to `json`, which must have succeeded
/// (its stderr is the panic message otherwise).
pub fn report(out: &std::process::Output, json: impl AsRef<std::path::Path>) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

/// A safetensors file's entries (dtype, shape, bytes) and metadata, to look at and
/// to break.
pub struct Raw {
    pub entries: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
    pub metadata: Option<HashMap<String, String>>,
}

impl Raw {
    pub fn of(bytes: &[u8]) -> Raw {
        let file = SafeTensors::deserialize(bytes).unwrap();
        let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
        let entries = file
            .iter()
            .map(|(n, v)| {
                let entry = (v.dtype(), v.shape().to_vec(), v.data().to_vec());
                (n.to_string(), entry)
            })
            .collect();
        Raw {
            entries,
            metadata: header.metadata().clone(),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let views: Vec<(&str, TensorView)> = self
            .entries
            .iter()
            .map(|(n, (d, s, b))| (n.as_str(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, self.metadata.clone()).unwrap()
    }

    pub fn i64s(&self, name: &str) -> Vec<i64> {
        let (dtype, _, bytes) = &self.entries[name];
        assert_eq!(*dtype, Dtype::I64, "{name}");
        bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn set_i64s(&mut self, name: &str, shape: Vec<usize>, values: &[i64]) {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.entries.insert(name.into(), (Dtype::I64, shape, bytes));
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.entries[name].1.clone()
    }

    pub fn bytes_mut(&mut self, name: &str) -> &mut Vec<u8> {
        &mut self.entries.get_mut(name).unwrap().2
    }
}

/// The network of `scripts/make_wanda_fixtures.py` (a grouped, a strided and dilated, a
/// 1×1 convolution and a linear layer), loaded with the fixture's weights.
pub fn small_network(
    fixture: &StateDict,
) -> impl reflow::layer::Layer<Input = reflow::nn::Tensor4, Output = reflow::nn::Tensor2> {
    use reflow::nn::Sequential;
    use reflow::nn::{Activation, AdaptiveAvgPool2d, Conv2d, Conv2dConfig, Flatten, Linear};
    let conv = |cfg: Conv2dConfig| Conv2d::new(cfg).unwrap();
    let mut net = Sequential::new()
        .push("0", conv(Conv2dConfig::new(8, 16, 3).padding(1).groups(2)))
        .push("1", Activation::Relu)
        .push(
            "2",
            conv(
                Conv2dConfig::new(16, 16, 3)
                    .stride(2)
                    .padding(2)
                    .dilation(2),
            ),
        )
        .push("3", Activation::Relu)
        .push("4", conv(Conv2dConfig::new(16, 24, 1).bias(true)))
        .push("5", AdaptiveAvgPool2d::new(1, 1).unwrap())
        .push("6", Flatten)
        .push("7", Linear::new(24, 10, true));
    let mut weights = StateDict::new();
    for (k, t) in fixture.iter() {
        if let Some(name) = k.strip_prefix("weights/") {
            weights.insert(name, t.clone());
        }
    }
    weights.load_into(&mut net).unwrap();
    net
}

/// The calibration batches of `scripts/make_wanda_fixtures.py`.
pub fn small_inputs(fixture: &StateDict) -> Vec<reflow::nn::Tensor4> {
    (0..)
        .map_while(|k| {
            let t = fixture.get(&format!("inputs/{k}"))?;
            let dims: [usize; 4] = t.shape.clone().try_into().unwrap();
            Some(reflow::nn::Tensor4::from_shape_vec(dims, t.as_f32().unwrap().to_vec()).unwrap())
        })
        .collect()
}
