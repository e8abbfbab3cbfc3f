//! The `reflow` command (feature `cli`): `reflow inspect` and `reflow prune`, and one
//! line on stderr for bad input. `.ci/run` runs it with `--features cli`.
#![cfg(feature = "cli")]

mod common;

use serde_json::Value;
use std::process::{Command, Output};

fn reflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reflow"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn inspect_shows_the_architecture_counts_and_sparsity() {
    let weights = common::fixture("resnext_small.safetensors");
    let out = reflow(&["inspect", weights.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("bottleneck blocks") && text.contains("groups 4"),
        "{text}"
    );
    assert!(text.contains("layer4.0.conv2.weight"), "{text}");

    let out = reflow(&["inspect", "--json", weights.to_str().unwrap()]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let state = common::read("resnext_small.safetensors");
    let net = reflow::models::ResNet::from_state_dict(&state).unwrap();
    assert_eq!(report["params"], reflow::layer::count_parameters(&net));
    assert_eq!(report["family"], "resnet");
    assert_eq!(report["sparsity"], 0.0);
}

#[test]
fn inspect_reads_compressed_checkpoints_as_their_dense_twins() {
    use reflow::io::SaveFormat;
    use reflow::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let mut net = ResNet::from_state_dict(&common::read("resnext_small.safetensors")).unwrap();
    MagnitudePruner::new(0.8).prune(&mut net).unwrap();
    let state = StateDict::from_layer(&net);
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    state
        .write_safetensors_as(path("dense.safetensors"), SaveFormat::Dense)
        .unwrap();
    state
        .write_safetensors_as(path("compressed.safetensors"), SaveFormat::Compressed)
        .unwrap();
    let inspect = |name: &str| {
        let out = reflow(&["inspect", "--json", &path(name)]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let report = inspect("compressed.safetensors");
    assert_eq!(report, inspect("dense.safetensors"));
    let sparsity = report["sparsity"].as_f64().unwrap();
    assert!((sparsity - 0.8).abs() < 1e-3, "{sparsity}");

    // A broken file, and a NaN weight: one line naming the tensor.
    let bytes = std::fs::read(path("compressed.safetensors")).unwrap();
    let mut missing = common::Raw::of(&bytes);
    missing.entries.remove("layer2.0.conv2.bitmask").unwrap();
    std::fs::write(path("missing.safetensors"), missing.bytes()).unwrap();
    let mut nan = common::Raw::of(&bytes);
    nan.bytes_mut("fc.compressed")[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(path("nan.safetensors"), nan.bytes()).unwrap();
    for (name, needle) in [
        (
            "missing.safetensors",
            "compressed tensor \"layer2.0.conv2.weight\": \"layer2.0.conv2.compressed\"",
        ),
        ("nan.safetensors", "key \"fc.weight\": NaN at index"),
    ] {
        let out = reflow(&["inspect", &path(name)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.contains(needle), "{name}: {stderr}");
    }
}

#[test]
fn prune_runs_as_the_example_does() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let mut args = vec!["prune".to_string()];
    args.extend(common::bundled_prune_args());
    args.extend(["--pattern", "2:4", "--json", json.to_str().unwrap()].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = reflow(&args);
    let report = common::report(&out, &json);
    // scripts/reference.py's counts for the same flags.
    assert_eq!(report["runs"][0]["pruned_correct"], 8672);
    assert_eq!(report["runs"][0]["reflow_correct"], 9340);
}

#[test]
fn bad_input_is_one_line() {
    for (args, needle, code) in [
        (
            vec!["inspect", "/nonexistent.safetensors"],
            "No such file",
            1,
        ),
        (
            vec!["frobnicate"],
            "unrecognized subcommand 'frobnicate'",
            2,
        ),
        (
            vec!["prune", "--pattern", "2:4"],
            "required arguments were not provided",
            2,
        ),
        (
            vec!["inspect", "x", "--stem", "mobile"],
            "expected \"cifar\" or \"imagenet\"",
            1,
        ),
    ] {
        let out = reflow(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// `values` as a `.npy` file of `shape` in `dir`.
fn npy<T: ndarray_npy::WritableElement>(
    dir: &std::path::Path,
    name: &str,
    shape: &[usize],
    values: Vec<T>,
) -> String {
    let path = dir.join(name);
    let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), values).unwrap();
    ndarray_npy::write_npy(&path, &a).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn npy_arrays_count_as_the_same_pixels_in_idx_files() {
    let dir = tempfile::tempdir().unwrap();
    let (test, calib) = (common::pixels(40, 1), common::pixels(24, 2));
    let labels: Vec<i64> = (0..40).map(|i| i % 10).collect();
    let x = npy(dir.path(), "x.npy", &[40, 3, 16, 16], test.clone());
    let y = npy(dir.path(), "y.npy", &[40], labels.clone());
    let c = npy(dir.path(), "c.npy", &[24, 3, 16, 16], calib.clone());
    let idx = |name: &str, dims: &[u32], data: &[u8]| {
        let path = dir.path().join(name);
        common::write_idx(&path, dims, data, false);
        path.to_string_lossy().into_owned()
    };
    let xi = idx("x.idx", &[40, 3, 16, 16], &test);
    let yi = idx(
        "y.idx",
        &[40],
        &labels.iter().map(|&l| l as u8).collect::<Vec<_>>(),
    );
    let ci = idx("c.idx", &[24, 3, 16, 16], &calib);
    let raw = npy(
        dir.path(),
        "raw.npy",
        &[40, 3, 16, 16],
        test.iter().map(|&v| f32::from(v)).collect(),
    );
    let weights = common::fixture("resnet20_cifar.safetensors");
    let common_args = [
        "prune",
        "--weights",
        weights.to_str().unwrap(),
        "--stem",
        "cifar",
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.25,0.25,0.25",
        "--calib-count",
        "16",
        "--calib-batch",
        "8",
        "--signal-images",
        "10",
        "--sparsity",
        "0.5,0.9",
    ];
    let report = |extra: &[&str], name: &str| -> Value {
        let json = dir.path().join(name);
        let mut args: Vec<&str> = common_args.to_vec();
        args.extend(extra);
        let json_s = json.to_string_lossy().into_owned();
        args.extend(["--json", &json_s]);
        let out = reflow(&args);
        common::report(&out, &json)
    };
    let from_npy = report(
        &["--test-npy", &x, "--test-labels-npy", &y, "--calib-npy", &c],
        "n.json",
    );
    let from_idx = report(
        &[
            "--test-images",
            &xi,
            "--test-labels",
            &yi,
            "--calib-images",
            &ci,
        ],
        "i.json",
    );
    let counts = |r: &Value| -> Vec<Value> {
        let mut v = vec![r["dense"]["correct"].clone()];
        for run in r["runs"].as_array().unwrap() {
            v.push(run["pruned_correct"].clone());
            v.push(run["reflow_correct"].clone());
        }
        v
    };
    assert_eq!(counts(&from_npy), counts(&from_idx));
    // Mixed: npy test images with IDX calibration.
    let mixed = report(
        &[
            "--test-npy",
            &x,
            "--test-labels-npy",
            &y,
            "--calib-images",
            &ci,
        ],
        "m.json",
    );
    assert_eq!(counts(&mixed), counts(&from_idx));

    // Bad arrays: one line naming the file.
    let f64s = npy(
        dir.path(),
        "d.npy",
        &[40, 3, 16, 16],
        vec![0.0f64; 40 * 768],
    );
    let big = npy(
        dir.path(),
        "big.npy",
        &[40],
        (0..40).map(|i| i % 11).collect::<Vec<i64>>(),
    );
    for (extra, needle) in [
        (
            vec![
                "--test-npy",
                &f64s,
                "--test-labels-npy",
                &y,
                "--calib-npy",
                &c,
            ],
            "d.npy: dtype '<f8'",
        ),
        (
            vec![
                "--test-npy",
                &x,
                "--test-labels-npy",
                &big,
                "--calib-npy",
                &c,
            ],
            "invalid --test-labels-npy: label 10 of sample 10, but the model has 10 classes",
        ),
        (
            // Pixels saved as float32: taken as normalised, they would be wrong.
            vec![
                "--test-npy",
                &raw,
                "--test-labels-npy",
                &y,
                "--calib-npy",
                &c,
            ],
            "look like pixels, but float32 images are taken as normalised already",
        ),
    ] {
        let mut args: Vec<&str> = common_args.to_vec();
        args.extend(extra);
        let out = reflow(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{needle}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    // Test images without labels: the fidelity to the dense network, no accuracy.
    let mut args: Vec<&str> = common_args.to_vec();
    args.extend(["--test-npy", &x, "--calib-npy", &c]);
    let out = reflow(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("without labels (fidelity only)"),
        "{stdout}"
    );
}

/// The top-1 class torchvision's pipeline gives a fixture image under network `net`
/// (`scripts/make_image_fixtures.py`).
fn torchvision_top1(net: &str, image: &str) -> usize {
    let bytes = std::fs::read(common::fixture("image_transforms.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let logits: Vec<f32> = tensors
        .tensor(&format!("logits/{net}/{image}"))
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (0..logits.len())
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
        .unwrap()
}

/// How many fixture images torchvision's pipeline classifies right under `net`: class
/// 0 is `jpeg/` (21 images), class 1 `png/` (8), as torchvision labels them.
fn torchvision_correct(net: &str) -> usize {
    let mut correct = 0;
    for class in ["jpeg", "png"] {
        for f in std::fs::read_dir(common::fixture("images").join(class)).unwrap() {
            let name = format!("{class}/{}", f.unwrap().file_name().to_string_lossy());
            correct += usize::from(torchvision_top1(net, &name) == usize::from(class == "png"));
        }
    }
    correct
}

#[test]
fn the_imagenet_preset_is_torchvisions() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let (weights, images) = (
        common::fixture("resnet20_cifar.safetensors"),
        common::fixture("images"),
    );
    let (weights, images) = (weights.to_str().unwrap(), images.to_str().unwrap());
    let out = reflow(&[
        "prune",
        "--weights",
        weights,
        "--stem",
        "cifar",
        "--preset",
        "imagenet",
        "--test-dir",
        images,
        "--calib-dir",
        images,
        "--calib-count",
        "8",
        "--calib-batch",
        "4",
        "--signal-images",
        "4",
        "--sparsity",
        "0.5",
        "--json",
        json.to_str().unwrap(),
    ]);
    let report = common::report(&out, &json);
    let want = torchvision_correct("resnet20_cifar_imagenet");
    assert_eq!(report["dense"]["correct"], want);
    println!("ImageNet preset: {want}/29 correct, as torchvision");
}

/// Images straight in a folder, no class sub-folder, for test and calibration: no
/// labels, so the report has the fidelity to the dense network and no accuracy.
#[test]
fn a_folder_without_classes_gives_fidelity_without_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let flat = dir.path().join("flat");
    std::fs::create_dir(&flat).unwrap();
    for entry in std::fs::read_dir(common::fixture("images/png")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, flat.join(path.file_name().unwrap())).unwrap();
    }
    let flat = flat.to_string_lossy().into_owned();
    let weights = common::fixture("resnet20_cifar.safetensors");
    let json = dir.path().join("r.json");
    let out = reflow(&[
        "prune",
        "--weights",
        weights.to_str().unwrap(),
        "--stem",
        "cifar",
        "--preset",
        "imagenet",
        "--resize",
        "32",
        "--crop",
        "32",
        "--test-dir",
        &flat,
        "--calib-dir",
        &flat,
        "--calib-count",
        "8",
        // No --signal-images: the default, 1,000, becomes the 8 test images.
        "--sparsity",
        "0.5",
        "--json",
        json.to_str().unwrap(),
    ]);
    let report = common::report(&out, &json);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("8 test images without labels"), "{stdout}");
    assert_eq!(report["dense"]["images"], 8);
    assert_eq!(report["dense"]["top1"], Value::Null);
    let run = &report["runs"][0];
    assert_eq!(run["reflow_top1"], Value::Null);
    assert!(run["agreement_repaired"].as_f64().unwrap() <= 1.0);
    assert!(run["kl_pruned"].as_f64().unwrap() > 0.0);
    assert_eq!(run["calibration_check"]["images"], 8);
}

#[test]
fn image_folders_run_end_to_end_with_torchvisions_counts() {
    let dir = tempfile::tempdir().unwrap();
    let images = common::fixture("images");
    let images = images.to_str().unwrap();
    // The RGB ResNet-20 fixture: its predictions on these images vary by class.
    let weights = common::fixture("resnet20_cifar.safetensors");
    let args: Vec<String> = [
        "--weights",
        weights.to_str().unwrap(),
        "--stem",
        "cifar",
        "--mean",
        "0.485,0.456,0.406",
        "--std",
        "0.229,0.224,0.225",
    ]
    .map(String::from)
    .to_vec();
    let json = dir.path().join("r.json");
    let json_s = json.to_string_lossy().into_owned();
    let extra = [
        "--test-dir",
        images,
        "--calib-dir",
        images,
        "--resize",
        "36",
        "--crop",
        "32",
        "--calib-count",
        "16",
        "--calib-batch",
        "8",
        "--calib-seed",
        "3",
        "--signal-images",
        "29",
        "--sparsity",
        "0.5",
        "--json",
        &json_s,
    ];
    let mut all: Vec<&str> = vec!["prune"];
    all.extend(args.iter().map(String::as_str));
    all.extend(extra);
    let out = reflow(&all);
    let report = common::report(&out, &json);
    assert_eq!(
        report["dense"]["correct"],
        torchvision_correct("resnet20_cifar")
    );
    assert_eq!(report["calibration"]["source"], images);
    assert_eq!(
        report["calibration"]["indices"].as_array().unwrap().len(),
        16
    );

    // Bad folders and flags: one line, naming the problem.
    let empty_class = dir.path().join("empty");
    std::fs::create_dir_all(empty_class.join("a")).unwrap();
    std::fs::create_dir_all(empty_class.join("b")).unwrap();
    std::fs::copy(
        common::fixture("images/png/gray_101x67.png"),
        empty_class.join("a/1.png"),
    )
    .unwrap();
    let empty_s = empty_class.to_string_lossy().into_owned();
    // A calibration folder whose drawn image is a 16-bit PNG: found before any work.
    let deep = dir.path().join("deep");
    std::fs::create_dir_all(deep.join("a")).unwrap();
    std::fs::copy(common::fixture("gray16.png"), deep.join("a/deep.png")).unwrap();
    let deep_s = deep.to_string_lossy().into_owned();
    let many = dir.path().join("many");
    for class in "abcdefghijkl".chars() {
        let folder = many.join(class.to_string());
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::copy(
            common::fixture("images/png/rgb_37x53.png"),
            folder.join("1.png"),
        )
        .unwrap();
    }
    let many_s = many.to_string_lossy().into_owned();
    let bundled = common::bundled_prune_args();
    let bundled: Vec<&str> = bundled.iter().map(String::as_str).collect();
    let folder_args: Vec<&str> = args.iter().map(String::as_str).collect();
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [&["prune"][..], base, extra].concat()
    }
    for (argv, needle) in [
        (
            with(
                &folder_args,
                &[
                    "--test-dir",
                    &empty_s,
                    "--calib-dir",
                    images,
                    "--crop",
                    "28",
                ],
            ),
            "b: no JPEG or PNG image in this class folder",
        ),
        (
            with(
                &folder_args,
                &[
                    "--test-dir",
                    images,
                    "--calib-dir",
                    &deep_s,
                    "--crop",
                    "32",
                    "--signal-images",
                    "8",
                    "--calib-count",
                    "1",
                ],
            ),
            "deep.png: a 16-bit image",
        ),
        (
            with(
                &folder_args,
                &["--test-dir", "/nonexistent", "--calib-dir", images],
            ),
            "invalid --test-dir: /nonexistent is not a folder",
        ),
        (
            // 12 class folders for a 10-class network.
            with(&folder_args, &["--test-dir", &many_s, "--calib-dir", images, "--crop", "32"]),
            "invalid --test-dir: 12 class folders, but the model has 10 classes (the first without one: \"k\")",
        ),
        (
            with(&folder_args, &["--test-dir", images, "--calib-dir", images]),
            "every image must come out the same size",
        ),
        (
            [&["prune"][..], &bundled, &["--resize", "32"]].concat(),
            "invalid --resize: applies to image folders",
        ),
        (
            [&["prune"][..], &bundled, &["--preset", "cifar"]].concat(),
            "invalid --preset: \"cifar\" (expected imagenet)",
        ),
        (
            with(
                &folder_args,
                &["--test-dir", images, "--calib-dir", images, "--crop", "0"],
            ),
            "invalid --crop: the size must be positive",
        ),
    ] {
        let out = reflow(&argv);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{needle}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
}

/// `reflow bench` with `args` after the checkpoint, and `REFLOW_SPARSE` = `policy`.
fn bench(weights: &std::path::Path, args: &[&str], policy: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_reflow"))
        .arg("bench")
        .arg(weights)
        .args(["--stem", "cifar", "--input", "3x16x16", "--batch", "2"])
        .args(["--runs", "2", "--warmup", "1"])
        .args(args)
        .env("REFLOW_SPARSE", policy)
        .output()
        .unwrap()
}

/// The bundled ResNet-20 pruned by global magnitude to 0.9, written to `dir`.
fn pruned_resnet20(dir: &std::path::Path) -> std::path::PathBuf {
    use reflow::prune::{MagnitudePruner, Pruner};
    let weights = dir.join("s0.9.safetensors");
    let state = common::read("resnet20_cifar.safetensors");
    let mut net = reflow::models::ResNet::from_state_dict(&state).unwrap();
    MagnitudePruner::new(0.9).prune(&mut net).unwrap();
    reflow::StateDict::from_layer(&net)
        .write_safetensors(&weights)
        .unwrap();
    weights
}

#[test]
fn bench_times_each_convolution_on_its_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let weights = pruned_resnet20(dir.path());
    let blocked = reflow::cpu::level() != reflow::cpu::Level::Portable;
    for (policy, dense, sparse_layers) in [("always", false, 21), ("measured", true, 0)] {
        let json = dir.path().join(format!("{policy}.json"));
        let mut args = vec!["--json", json.to_str().unwrap()];
        if dense {
            args.push("--dense");
        }
        let out = bench(&weights, &args, policy);
        let report = common::report(&out, &json);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("images/s"), "{text}");
        assert!(report["images_per_second"].as_f64().unwrap() > 0.0);
        assert_eq!(report["batch"], 2);
        let layers = report["layers"].as_array().unwrap();
        if !blocked {
            assert!(layers.is_empty());
            continue;
        }
        // The stem and two per block, the two downsampling shortcuts, the classifier.
        assert_eq!(layers.len(), 22, "{text}");
        assert_eq!(layers[0]["name"], "conv1");
        assert_eq!(layers[21]["name"], "fc");
        assert!(layers.iter().all(|l| l["ms"].as_f64().unwrap() > 0.0));
        let on_sparse = layers.iter().filter(|l| l["path"] == "sparse").count();
        // Always: everything but the stem, which reads the NCHW images (the classifier
        // too); dense: none.
        assert_eq!(on_sparse, sparse_layers, "{policy}: {text}");
        assert!(layers[1]["density"].as_f64().unwrap() < 0.5);
    }
    // `reflow inspect` says which tensors may run sparse.
    let checkpoint = weights.to_str().unwrap();
    let out = reflow(&["inspect", "--json", "--stem", "cifar", checkpoint]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = report["layers"].as_array().unwrap();
    let kernels = |name: &str| {
        let layer = layers.iter().find(|l| l["name"] == name).unwrap();
        layer["kernels"].as_str().unwrap().to_string()
    };
    // A convolution at most `MEASURED_DENSITY` dense may run sparse; a denser one,
    // not: both kinds are in a 0.9 global pruning of ResNet-20.
    let mut seen = (0, 0);
    for layer in layers.iter().filter(|l| l["name"] != "fc.weight") {
        let density = 1.0 - layer["sparsity"].as_f64().unwrap();
        let may = density <= reflow::nn::SparsePolicy::MEASURED_DENSITY;
        let want = if may { "dense or sparse" } else { "dense" };
        assert_eq!(layer["kernels"], want, "{layer}");
        if may {
            seen.0 += 1
        } else {
            seen.1 += 1
        }
    }
    assert!(seen.0 > 0 && seen.1 > 0, "{seen:?}");
    assert_eq!(
        kernels("fc.weight"),
        "dense",
        "the classifier has no sparse kernel"
    );
    // Bad arguments are refused before any work, in one line naming the flag.
    let input = ["--input", "3x16x16"];
    for (args, needle) in [
        (vec!["--input", "3x16"], "--input"),
        (vec!["--input", "1x16x16"], "the network takes 3"),
        (
            [&input[..], &["--json", checkpoint]].concat(),
            "would be overwritten",
        ),
        ([&input[..], &["--batch", "0"]].concat(), "--batch"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_reflow"))
            .args(["bench", checkpoint, "--stem", "cifar"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(needle) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    assert!(
        weights.metadata().unwrap().len() > 0,
        "the checkpoint is intact"
    );
}

/// CRC-32 (PNG's), bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// A 100-odd-byte PNG whose header says `width × height`.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (
            *b"IHDR",
            [
                &width.to_be_bytes()[..],
                &height.to_be_bytes(),
                &[8, 0, 0, 0, 0],
            ]
            .concat(),
        ),
        (
            *b"IDAT",
            vec![0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        ),
        (*b"IEND", vec![]),
    ] {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(&data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    out
}

/// Issue 26: a size a header or a flag declares is checked before it is allocated,
/// every file of a folder is checked before work, and no folder is walked twice. Each
/// case runs under an 8 GiB address-space cap, so that an allocation of what a header
/// claims fails the run (an abort, not the one-line error).
#[test]
fn sizes_in_headers_and_flags_are_checked_before_anything_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p).to_string_lossy().into_owned();
    let png = std::fs::read(common::fixture("images/png/rgb_37x53.png")).unwrap();
    let jpeg = std::fs::read(common::fixture("images/jpeg/rocket_q90_420.jpg")).unwrap();
    let folder = |name: &str, files: &[(&str, &[u8])]| -> String {
        for (file, bytes) in files {
            let p = dir.path().join(name).join(file);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        path(name)
    };
    let good = folder("good", &[("a/x.png", &png), ("b/y.png", &png)]);
    let bomb = folder(
        "bomb",
        &[
            ("a/x.png", &png),
            ("b/big.png", &png_claiming(100_000, 100_000)),
        ],
    );
    let cut = folder(
        "cut",
        &[("a/x.png", &png), ("b/cut.jpg", &jpeg[..jpeg.len() - 100])],
    );
    let looped = folder("looped", &[("a/x.png", &png)]);
    std::os::unix::fs::symlink(dir.path().join("looped"), dir.path().join("looped/a/up")).unwrap();
    let selfish = folder("selfish", &[("a/x.png", &png)]);
    for link in ["s1", "s2"] {
        std::os::unix::fs::symlink(
            dir.path().join("selfish/a"),
            dir.path().join("selfish/a").join(link),
        )
        .unwrap();
    }
    // `.npy` images whose header claims [100000000, 28, 28] over a few bytes.
    let mut header =
        "{'descr': '|u1', 'fortran_order': False, 'shape': (100000000, 28, 28), }".to_string();
    // Padded with spaces to a multiple of 64 bytes and ended by a newline, as NumPy writes it.
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend((header.len() as u16).to_le_bytes());
    npy.extend(header.as_bytes());
    npy.extend([0u8; 1568]);
    std::fs::write(path("bomb.npy"), npy).unwrap();

    let weights = common::fixture("resnet20_cifar.safetensors");
    let weights = weights.to_str().unwrap();
    let base = |test: &[&str], extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "prune",
            "--weights",
            weights,
            "--stem",
            "cifar",
            "--preset",
            "imagenet",
        ];
        for (flag, size) in [("--resize", "32"), ("--crop", "32")] {
            if !extra.contains(&flag) {
                args.extend([flag, size]);
            }
        }
        args.extend(["--calib-dir", &good, "--calib-count", "2"]);
        args.extend(test);
        args.extend(extra);
        args.into_iter().map(String::from).collect()
    };
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            base(&["--test-dir", &bomb], &[]),
            format!("{bomb}/b/big.png: 100000x100000 pixels"),
        ),
        (
            base(&["--test-dir", &cut], &[]),
            format!("{cut}/b/cut.jpg: truncated JPEG"),
        ),
        (
            base(&["--test-dir", &looped], &[]),
            "looped/a/up: this folder is".into(),
        ),
        (
            base(&["--test-dir", &selfish], &[]),
            "selfish/a/s1: this folder is".into(),
        ),
        (
            base(&["--test-npy", &path("bomb.npy")], &[]),
            "needs 78400000000 bytes after the header".into(),
        ),
        (
            base(&["--test-dir", &good], &["--crop", "100000"]),
            "invalid --crop: 100000x100000".into(),
        ),
        (
            base(&["--test-dir", &good], &["--resize", "200000"]),
            "invalid --resize: 200000x200000".into(),
        ),
    ];
    for (args, needle) in cases {
        let out = Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 8388608 && exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_reflow"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{needle}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&needle), "{needle}: {stderr}");
    }
    // The good folder runs under the same cap.
    let json = path("r.json");
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 8388608 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_reflow"))
        .args(base(
            &["--test-dir", &good],
            &["--sparsity", "0.5", "--signal-images", "2", "--json", &json],
        ))
        .output()
        .unwrap();
    assert_eq!(common::report(&out, &json)["dense"]["images"], 2);
}

#[test]
fn bench_times_the_calibration_pass_and_leaves_the_checkpoint_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let weights = pruned_resnet20(dir.path());
    let before = std::fs::read(&weights).unwrap();
    for policy in ["measured", "never"] {
        let json = dir.path().join(format!("{policy}.json"));
        let args = ["--calibration", "--json", json.to_str().unwrap()];
        let out = bench(&weights, &args, policy);
        let report = common::report(&out, &json);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("calibration passes"), "{text}");
        assert_eq!(report["pass"], "calibration");
        assert_eq!(report["sparse_policy"], policy);
        assert!(report["images_per_second"].as_f64().unwrap() > 0.0);
        assert!(report["layers"].as_array().unwrap().is_empty());
    }
    // The statistics the passes changed stay in memory.
    assert_eq!(std::fs::read(&weights).unwrap(), before);
}
