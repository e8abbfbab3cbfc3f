//! Compressed checkpoints: pruned tensors in compressed-tensors' bitmask layout
//! ("sparse-bitmask"). Round trips bit for bit, the size, files written by
//! compressed-tensors itself, and one typed error naming the tensor for every kind of
//! broken entry.

mod common;

use common::{fixture, read, Raw};
use reflow::io::SaveFormat;
use reflow::models::{ResNet, Stem};
use reflow::prelude::*;
use reflow::state_dict::{StoredTensor, TensorData};
use safetensors::tensor::Dtype;

/// `name` (a bundled ResNet) pruned by global magnitude at `sparsity`.
fn pruned(name: &str, stem: Stem, sparsity: f64) -> StateDict {
    let mut net = ResNet::from_state_dict(&read(name)).unwrap();
    assert_eq!(net.config().stem, stem);
    MagnitudePruner::new(sparsity).prune(&mut net).unwrap();
    StateDict::from_layer(&net)
}

fn compressed_bytes(state: &StateDict) -> Vec<u8> {
    state
        .to_safetensors_bytes_as(SaveFormat::Compressed)
        .unwrap()
}

/// Seeded values in `shape`, about four in five of them zero; one row (of the 2-D
/// view) all zero.
fn sparse_values(shape: &[usize], seed: u64) -> StoredTensor {
    let numel: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let cols = numel / shape[0];
    let values = (0..numel)
        .map(|i| {
            let r = next();
            match (i / cols == 1, r % 5) {
                (false, 0) => (r >> 40) as f32 / (1u64 << 24) as f32 - 0.5,
                _ => 0.0,
            }
        })
        .collect();
    StoredTensor::f32(shape.to_vec(), values).unwrap()
}

/// A small state dict: a 3x3 convolution of 27 columns a row (four mask bytes, three
/// bits of the last used), a linear layer of 20 columns, a batch norm.
fn small() -> StateDict {
    let mut state = StateDict::new();
    state.insert("conv.weight", sparse_values(&[6, 3, 3, 3], 1));
    state.insert("fc.weight", sparse_values(&[5, 20], 2));
    state.insert(
        "bn.weight",
        StoredTensor::f32(vec![6], vec![1.0, 0.0, 0.5, 2.0, 0.0, 1.0]).unwrap(),
    );
    state.insert("bn.bias", StoredTensor::f32(vec![6], vec![0.0; 6]).unwrap());
    state.insert(
        "bn.num_batches_tracked",
        StoredTensor::i64(vec![], vec![3]).unwrap(),
    );
    state
}

#[test]
fn pruned_networks_read_back_bit_for_bit() {
    for (name, stem) in [
        ("resnet20_cifar.safetensors", Stem::Cifar),
        ("resnext_small.safetensors", Stem::Imagenet),
    ] {
        let state = pruned(name, stem, 0.8);
        let bytes = compressed_bytes(&state);
        let back = StateDict::from_safetensors_bytes(&bytes).unwrap();
        assert_eq!(back, state, "{name}");
        for (key, t) in back.iter() {
            let want = state.get(key).unwrap();
            if let (Some(a), Some(b)) = (t.as_f32(), want.as_f32()) {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(a), bits(b), "{name} {key}");
            }
        }

        // Every convolution and the classifier compressed, as 2-D views; batch norms
        // and counters dense.
        let raw = Raw::of(&bytes);
        for (key, t) in state.iter() {
            let prefix = key.strip_suffix(".weight").unwrap_or(key);
            let compressed = raw.entries.contains_key(&format!("{prefix}.bitmask"));
            assert_eq!(compressed, t.shape.len() >= 2, "{name} {key}");
            assert_eq!(raw.entries.contains_key(key), !compressed, "{name} {key}");
            if compressed {
                let rows = t.shape[0] as i64;
                let cols = (t.numel() / t.shape[0]) as i64;
                assert_eq!(raw.i64s(&format!("{prefix}.shape")), [rows, cols]);
                assert_eq!(raw.shape(&format!("{prefix}.row_offsets")), [t.shape[0]]);
                let (dtype, shape, _) = &raw.entries[&format!("{prefix}.bitmask")];
                assert_eq!(
                    (*dtype, shape.clone()),
                    (Dtype::U8, vec![t.shape[0], (cols as usize).div_ceil(8)])
                );
            }
        }
        let metadata = raw.metadata.unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&metadata["quantization_config"]).unwrap();
        assert_eq!(config["quant_method"], "compressed-tensors");
        assert_eq!(config["sparsity_config"]["format"], "sparse-bitmask");
        let shapes: serde_json::Value = serde_json::from_str(&metadata["reflow.shapes"]).unwrap();
        assert_eq!(
            shapes["conv1.weight"],
            serde_json::json!(state.get("conv1.weight").unwrap().shape)
        );
    }
}

#[test]
fn files_read_back_as_the_network_they_hold() {
    let state = pruned("resnext_small.safetensors", Stem::Imagenet, 0.9);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s0.9.safetensors");
    state
        .write_safetensors_as(&path, SaveFormat::Compressed)
        .unwrap();
    assert_eq!(StateDict::read_safetensors(&path).unwrap(), state);
    let net = ResNet::load(&path).unwrap();
    assert_eq!(StateDict::from_layer(&net), state);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file left");
}

#[test]
fn an_eighty_percent_sparse_network_takes_well_under_half_the_bytes() {
    let state = pruned("resnext_small.safetensors", Stem::Imagenet, 0.8);
    let dense = state.to_safetensors_bytes().unwrap().len();
    let compressed = compressed_bytes(&state).len();
    let ratio = compressed as f64 / dense as f64;
    // 0.2 of the values (4 bytes each) and a mask bit for every one: about 0.23.
    assert!(ratio < 0.3, "{compressed} / {dense} bytes = {ratio:.3}");

    // A dense network stays dense: no value is zero.
    let dense_net = read("resnext_small.safetensors");
    let bytes = compressed_bytes(&dense_net);
    assert!(!Raw::of(&bytes)
        .entries
        .keys()
        .any(|k| k.ends_with(".bitmask")));
    assert_eq!(
        StateDict::from_safetensors_bytes(&bytes).unwrap(),
        dense_net
    );
}

#[test]
fn negative_zero_reads_back_as_positive_zero() {
    let mut state = small();
    let mut fc = state.get("fc.weight").unwrap().clone();
    let TensorData::F32(values) = &mut fc.data else {
        unreachable!()
    };
    let zero = values.iter().position(|v| *v == 0.0).unwrap();
    values[zero] = -0.0;
    state.insert("fc.weight", fc);
    let back = StateDict::from_safetensors_bytes(&compressed_bytes(&state)).unwrap();
    let read = back.get("fc.weight").unwrap().as_f32().unwrap();
    assert_eq!(read[zero].to_bits(), 0.0f32.to_bits());
    assert_eq!(back, state, "equal as numbers");
}

#[test]
fn dense_files_read_as_before() {
    // Names that end like a compressed tensor's entries are tensors of their own
    // when the file holds no mask.
    let mut state = small();
    state.insert(
        "pos.shape",
        StoredTensor::f32(vec![2], vec![1.0, 2.0]).unwrap(),
    );
    state.insert(
        "x.row_offsets",
        StoredTensor::i64(vec![1], vec![4]).unwrap(),
    );
    let bytes = state.to_safetensors_bytes().unwrap();
    assert_eq!(StateDict::from_safetensors_bytes(&bytes).unwrap(), state);
    // The compressed writer refuses them: they would read back as entries.
    let err = state
        .to_safetensors_bytes_as(SaveFormat::Compressed)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert!(err.to_string().contains("\"pos.shape\""), "{err}");
}

/// compressed-tensors' own output (`scripts/make_compressed_fixtures.py`): every rank
/// its `BitmaskCompressor` writes (masks along the last dimension of 4-D
/// convolutions, a 1-D batch-norm weight), float16 values, no metadata.
#[test]
fn files_compressed_by_compressed_tensors_read_as_their_dense_values() {
    let raw = Raw::of(&std::fs::read(fixture("compressed_tensors_bitmask.safetensors")).unwrap());
    assert!(raw.metadata.is_none());
    assert_eq!(raw.shape("features.0.bitmask"), [8, 3, 3, 1]);
    assert_eq!(raw.shape("features.0.row_offsets"), [8, 3, 3]);
    assert_eq!(raw.shape("features.1.row_offsets"), Vec::<usize>::new());
    assert_eq!(raw.entries["head.compressed"].0, Dtype::F16);
    assert!(!raw.entries.contains_key("classifier.weight"));

    let compressed = read("compressed_tensors_bitmask.safetensors");
    let dense = read("compressed_tensors_bitmask.dense.safetensors");
    assert_eq!(compressed.len(), 10);
    assert_eq!(compressed, dense);
    assert_eq!(
        compressed.get("features.0.weight").unwrap().shape,
        [8, 3, 3, 3]
    );
    assert_eq!(compressed.get("features.1.weight").unwrap().shape, [8]);
    assert_eq!(
        compressed
            .get("features.1.num_batches_tracked")
            .unwrap()
            .data,
        TensorData::I64(vec![11])
    );
    // The -0.0 the compressor's mask dropped.
    let fc = compressed
        .get("classifier.weight")
        .unwrap()
        .as_f32()
        .unwrap();
    assert_eq!(fc[0].to_bits(), 0.0f32.to_bits());
    // And reflow writes them back in its own layout, read back the same.
    let again = StateDict::from_safetensors_bytes(&compressed_bytes(&compressed)).unwrap();
    assert_eq!(again, dense);
}

/// Reads `bytes` and expects a [`Error::CompressedTensor`] naming `key` whose one-line
/// message contains `needle`.
fn fails_naming(bytes: &[u8], key: &str, needle: &str) {
    let err = StateDict::from_safetensors_bytes(bytes).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, Error::CompressedTensor { key: k, .. } if k == key),
        "{needle}: {err:?}"
    );
    assert!(text.contains(&format!("\"{key}\"")), "{text}");
    assert!(text.contains(needle), "{needle} not in: {text}");
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[test]
fn a_corrupt_bitmask_names_the_tensor() {
    let raw = Raw::of(&compressed_bytes(&small()));
    assert_eq!(raw.shape("conv.bitmask"), [6, 4]);

    // One byte short a row.
    let mut short = Raw::of(&raw.bytes());
    let bytes: Vec<u8> = raw.entries["conv.bitmask"]
        .2
        .chunks(4)
        .flat_map(|row| row[..3].to_vec())
        .collect();
    short
        .entries
        .insert("conv.bitmask".into(), (Dtype::U8, vec![6, 3], bytes));
    fails_naming(
        &short.bytes(),
        "conv.weight",
        "\"conv.bitmask\" has shape [6, 3], expected [6, 4]",
    );

    // A bit past the 27th column.
    let mut past = Raw::of(&raw.bytes());
    past.bytes_mut("conv.bitmask")[3] |= 0x80;
    fails_naming(
        &past.bytes(),
        "conv.weight",
        "marks row 0 past its last column (26)",
    );

    // One bit more than there are values.
    let mut flipped = Raw::of(&raw.bytes());
    let first_zero_bit = {
        let row = &flipped.entries["conv.bitmask"].2[..4];
        (0..27).find(|c| row[c / 8] >> (c % 8) & 1 == 0).unwrap()
    };
    flipped.bytes_mut("conv.bitmask")[first_zero_bit / 8] |= 1 << (first_zero_bit % 8);
    let values = raw.shape("conv.compressed")[0];
    fails_naming(
        &flipped.bytes(),
        "conv.weight",
        &format!(
            "\"conv.compressed\" holds {values} values, \"conv.bitmask\" marks {}",
            values + 1
        ),
    );

    // Not bytes.
    let mut wide = Raw::of(&raw.bytes());
    let entry = wide.entries.get_mut("conv.bitmask").unwrap();
    entry.0 = Dtype::I16;
    entry.1 = vec![6, 2];
    let err = StateDict::from_safetensors_bytes(&wide.bytes()).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedDtype { key, .. } if key == "conv.bitmask"),
        "{err}"
    );
}

#[test]
fn a_wrong_row_offset_names_the_tensor() {
    let raw = Raw::of(&compressed_bytes(&small()));
    let offsets = raw.i64s("fc.row_offsets");
    assert_eq!(offsets.len(), 5);
    assert_eq!(offsets[0], 0);
    // Row 1 is all zero: rows 1 and 2 start at the same value.
    assert_eq!(offsets[1], offsets[2]);
    let total = raw.shape("fc.compressed")[0] as i64;
    let cases: [(&str, Vec<i64>, String); 4] = {
        let mut decreasing = offsets.clone();
        decreasing.swap(2, 3);
        let mut off_by_one = offsets.clone();
        off_by_one[4] += 1;
        let mut past_the_end = offsets.clone();
        past_the_end[4] = total + 100;
        let mut negative = offsets.clone();
        negative[0] = -1;
        [
            (
                "not monotone",
                decreasing,
                format!("row 2 offset {}, expected {}", offsets[3], offsets[2]),
            ),
            (
                "off by one",
                off_by_one,
                format!("row 4 offset {}, expected {}", offsets[4] + 1, offsets[4]),
            ),
            (
                "out of range",
                past_the_end,
                format!("row 4 offset {}", total + 100),
            ),
            ("negative", negative, "row 0 offset -1, expected 0".into()),
        ]
    };
    for (what, values, needle) in cases {
        let mut broken = Raw::of(&raw.bytes());
        broken.set_i64s("fc.row_offsets", vec![5], &values);
        let err = StateDict::from_safetensors_bytes(&broken.bytes()).unwrap_err();
        assert!(err.to_string().contains(&needle), "{what}: {err}");
        fails_naming(&broken.bytes(), "fc.weight", "\"fc.row_offsets\" gives");
    }
    // One offset short.
    let mut short = Raw::of(&raw.bytes());
    short.set_i64s("fc.row_offsets", vec![4], &offsets[..4]);
    fails_naming(
        &short.bytes(),
        "fc.weight",
        "\"fc.row_offsets\" has shape [4], expected [5]",
    );
}

#[test]
fn a_values_count_that_does_not_match_the_mask_names_the_tensor() {
    let raw = Raw::of(&compressed_bytes(&small()));
    let n = raw.shape("fc.compressed")[0];
    for count in [n - 1, n + 1] {
        let mut broken = Raw::of(&raw.bytes());
        let entry = broken.entries.get_mut("fc.compressed").unwrap();
        entry.2.resize(4 * count, 0);
        entry.1 = vec![count];
        fails_naming(
            &broken.bytes(),
            "fc.weight",
            &format!("\"fc.compressed\" holds {count} values, \"fc.bitmask\" marks {n}"),
        );
    }
    let mut two_d = Raw::of(&raw.bytes());
    two_d.entries.get_mut("fc.compressed").unwrap().1 = vec![1, n];
    fails_naming(&two_d.bytes(), "fc.weight", "\"fc.compressed\" must be 1-D");
}

#[test]
fn a_shape_that_disagrees_names_the_tensor() {
    let raw = Raw::of(&compressed_bytes(&small()));
    assert_eq!(raw.i64s("fc.shape"), [5, 20]);
    for (shape, needle) in [
        (
            vec![4, 20],
            "\"fc.bitmask\" has shape [5, 3], expected [4, 3]",
        ),
        (
            vec![5, 40],
            "\"fc.bitmask\" has shape [5, 3], expected [5, 5]",
        ),
        (vec![5, -20], "\"fc.shape\" holds a negative dimension"),
        (
            vec![1 << 40, 1 << 40],
            "\"fc.shape\" [1099511627776, 1099511627776] is too large",
        ),
    ] {
        let mut broken = Raw::of(&raw.bytes());
        broken.set_i64s("fc.shape", vec![2], &shape);
        fails_naming(&broken.bytes(), "fc.weight", needle);
    }
    let mut empty = Raw::of(&raw.bytes());
    empty.set_i64s("fc.shape", vec![0], &[]);
    fails_naming(
        &empty.bytes(),
        "fc.weight",
        "\"fc.shape\" must list the dense dimensions",
    );

    // The 4-D shape in the metadata must hold the 2-D view's values.
    let mut metadata = Raw::of(&raw.bytes());
    metadata.metadata.as_mut().unwrap().insert(
        "reflow.shapes".into(),
        r#"{"conv.weight": [6, 3, 3, 4]}"#.into(),
    );
    fails_naming(
        &metadata.bytes(),
        "conv.weight",
        "gives shape [6, 3, 3, 4], which does not hold the 162 values",
    );
    let mut stray = Raw::of(&raw.bytes());
    stray
        .metadata
        .as_mut()
        .unwrap()
        .insert("reflow.shapes".into(), r#"{"bn.weight": [6]}"#.into());
    let err = StateDict::from_safetensors_bytes(&stray.bytes()).unwrap_err();
    assert!(
        matches!(err, Error::Safetensors { .. }) && err.to_string().contains("\"bn.weight\""),
        "{err}"
    );
}

#[test]
fn a_missing_entry_names_the_tensor_and_the_entry() {
    let raw = Raw::of(&compressed_bytes(&small()));
    for part in ["compressed", "bitmask", "shape", "row_offsets"] {
        let mut broken = Raw::of(&raw.bytes());
        broken.entries.remove(&format!("fc.{part}")).unwrap();
        fails_naming(
            &broken.bytes(),
            "fc.weight",
            &format!("without \"fc.{part}\""),
        );
    }
    // A mask alone.
    let mut alone = Raw::of(&raw.bytes());
    alone
        .entries
        .retain(|k, _| !k.starts_with("fc.") || k == "fc.bitmask");
    fails_naming(
        &alone.bytes(),
        "fc.weight",
        "\"fc.bitmask\" without \"fc.compressed\", \"fc.shape\", \"fc.row_offsets\"",
    );
    // Dense and compressed at once.
    let mut twice = Raw::of(&raw.bytes());
    let bytes = vec![0u8; 4 * 100];
    twice
        .entries
        .insert("fc.weight".into(), (Dtype::F32, vec![5, 20], bytes));
    fails_naming(&twice.bytes(), "fc.weight", "dense as well");
}

#[test]
fn another_compressed_tensors_format_is_refused() {
    let mut raw = Raw::of(&compressed_bytes(&small()));
    raw.metadata.as_mut().unwrap().insert(
        "quantization_config".into(),
        r#"{"sparsity_config": {"format": "sparse-24-bitmask"}}"#.into(),
    );
    let err = StateDict::from_safetensors_bytes(&raw.bytes()).unwrap_err();
    assert!(matches!(err, Error::Safetensors { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("\"sparse-24-bitmask\" is not supported"),
        "{err}"
    );
}

#[test]
fn a_non_finite_value_is_refused_at_load_naming_the_tensor() {
    // As in a dense file: read as stored, refused by the strict load (and loaded by
    // `load_into_as_stored`).
    let state = pruned("resnet20_cifar.safetensors", Stem::Cifar, 0.8);
    let mut raw = Raw::of(&compressed_bytes(&state));
    raw.bytes_mut("layer2.1.conv1.compressed")[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    let read = StateDict::from_safetensors_bytes(&raw.bytes()).unwrap();
    let err = ResNet::from_state_dict(&read).unwrap_err();
    assert!(
        matches!(&err, Error::BadValue { key, .. } if key == "layer2.1.conv1.weight"),
        "{err}"
    );
    assert!(err.to_string().contains("NaN"), "{err}");
}

#[test]
fn every_error_is_a_value_never_a_panic() {
    // Every byte of a small compressed file changed in turn: a state dict or an
    // error, and never a dense tensor larger than the mask allows.
    let bytes = compressed_bytes(&small());
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut broken = bytes.clone();
            broken[i] ^= flip;
            if let Ok(state) = StateDict::from_safetensors_bytes(&broken) {
                let values: usize = state.iter().map(|(_, t)| t.numel()).sum();
                assert!(values <= 8 * broken.len(), "byte {i}");
            }
        }
    }
}

#[test]
fn the_convert_example_rewrites_either_way_and_never_its_input() {
    let convert = common::example_binary("convert");
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let state = pruned("resnet20_cifar.safetensors", Stem::Cifar, 0.8);
    state.write_safetensors(path("dense.safetensors")).unwrap();
    let run = |args: &[&std::path::Path], format: &str| {
        std::process::Command::new(&convert)
            .args(args)
            .arg(format)
            .output()
            .unwrap()
    };
    let out = run(
        &[&path("dense.safetensors"), &path("c.safetensors")],
        "compressed",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[&path("c.safetensors"), &path("d.safetensors")], "dense");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(path("d.safetensors")).unwrap(),
        std::fs::read(path("dense.safetensors")).unwrap(),
        "dense → compressed → dense gives the same bytes"
    );
    assert!(Raw::of(&std::fs::read(path("c.safetensors")).unwrap())
        .entries
        .contains_key("fc.bitmask"));

    let before = std::fs::read(path("c.safetensors")).unwrap();
    let out = run(&[&path("c.safetensors"), &path("c.safetensors")], "dense");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("it would be overwritten"), "{stderr}");
    assert_eq!(std::fs::read(path("c.safetensors")).unwrap(), before);
}
