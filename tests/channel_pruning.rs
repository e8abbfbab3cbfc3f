//! Channel pruning against PyTorch (`scripts/make_channel_fixtures.py`): the removed
//! channels, and the compact network's logits at every kernel level; the compact
//! checkpoint's round trip; bad input.

mod common;

use common::{array, at_every_level, read, relative_error, PARITY};
use ndarray::Ix4;
use reflow::layer::{count_parameters, Layer};
use reflow::models::{Arch, Architecture, Model, ResNet, ResNetConfig, Stem};
use reflow::prune::{ChannelPrunable, ChannelPruner, ChannelScope, FilterNorm};
use reflow::StateDict;

fn dense(net: &str, fixtures: &StateDict) -> Model {
    let state = match net {
        "resnet20_cifar" | "vgg_small" => read(&format!("{net}.safetensors")),
        _ => {
            let mut state = StateDict::new();
            for (k, t) in fixtures.iter() {
                if let Some(key) = k.strip_prefix(&format!("{net}/state/")) {
                    state.insert(key, t.clone());
                }
            }
            state
        }
    };
    Model::from_state_dict(&state, Arch::AUTO, Stem::Cifar).unwrap()
}

fn resnet(model: &Model) -> &ResNet {
    match model.downcast_ref::<ResNet>() {
        Some(r) => r,
        None => panic!("{:?} is no ResNet", model.arch()),
    }
}

const CASES: [(&str, f64, FilterNorm); 6] = [
    ("resnet20_cifar", 0.3, FilterNorm::L1),
    ("resnet20_cifar", 0.5, FilterNorm::L2),
    ("bottleneck_small", 0.5, FilterNorm::L1),
    ("bottleneck_small", 0.3, FilterNorm::L2),
    ("vgg_small", 0.3, FilterNorm::L1),
    ("vgg_small", 0.5, FilterNorm::L2),
];

#[test]
fn removed_channels_and_logits_equal_pytorch() {
    let fixtures = read("channel_pruning.safetensors");
    for (net, fraction, norm) in CASES {
        let case = format!("{net}/{fraction}/{norm}");
        let model = dense(net, &fixtures);
        let (compact, report) = ChannelPruner::new(fraction)
            .unwrap()
            .norm(norm)
            .prune(&model)
            .unwrap();

        let prefix = format!("{case}/removed/");
        let want: Vec<(String, Vec<usize>)> = fixtures
            .iter()
            .filter_map(|(k, t)| {
                let conv = k.strip_prefix(&prefix)?;
                let removed = match &t.data {
                    reflow::state_dict::TensorData::I64(v) => {
                        v.iter().map(|&i| i as usize).collect()
                    }
                    _ => panic!("{k} is not int64"),
                };
                Some((conv.to_string(), removed))
            })
            .collect();
        let mut got: Vec<(String, Vec<usize>)> = report
            .removals
            .iter()
            .map(|r| (r.conv.clone(), r.removed.clone()))
            .collect();
        got.sort();
        assert_eq!(got, want, "{case}: removed channels");
        assert_eq!(report.params.0, count_parameters(&model));
        assert_eq!(report.params.1, count_parameters(&compact));

        let input = array(&fixtures, &format!("input/{net}"))
            .into_dimensionality::<Ix4>()
            .unwrap();
        let want = array(&fixtures, &format!("{case}/logits"));
        at_every_level(|level| {
            let logits = compact.forward(&input).unwrap();
            let err = relative_error(logits.as_slice().unwrap(), want.as_slice().unwrap());
            assert!(
                err <= PARITY,
                "{case} at {level}: logits relative error {err:e}"
            );
        });
    }
}

#[test]
fn a_compact_checkpoint_reads_back_as_the_same_network() {
    let fixtures = read("channel_pruning.safetensors");
    for (net, fraction, norm) in CASES {
        let model = dense(net, &fixtures);
        let (compact, _) = ChannelPruner::new(fraction)
            .unwrap()
            .norm(norm)
            .prune(&model)
            .unwrap();
        let state = StateDict::from_layer(&compact);
        let back = Model::from_state_dict(&state, Arch::AUTO, Stem::Cifar).unwrap();
        assert_eq!(StateDict::from_layer(&back), state, "{net} {fraction}");
        if net == "vgg_small" {
            continue;
        }
        let compact = resnet(&compact);
        let cfg = ResNetConfig::infer(&state).unwrap();
        assert_eq!(&cfg, compact.config(), "{net} {fraction}");
        // A bottleneck network pruned by one fraction everywhere may still follow a
        // width_per_group (0.5 of 64: 32); a basic one cannot.
        if net == "resnet20_cifar" {
            assert!(
                cfg.block_widths.is_some(),
                "{net} {fraction}: per-block widths"
            );
        }
        assert_eq!(cfg.num_parameters(), count_parameters(compact));
    }
}

#[test]
fn nothing_removed_at_zero_and_one_channel_always_stays() {
    let model = dense("resnet20_cifar", &StateDict::new());
    let model = resnet(&model);
    let (same, report) = ChannelPruner::new(0.0).unwrap().prune(model).unwrap();
    assert!(report.removals.iter().all(|r| r.removed.is_empty()));
    assert_eq!(StateDict::from_layer(&same), StateDict::from_layer(model));
    assert_eq!(same.config(), model.config());

    let (thin, report) = ChannelPruner::new(0.999).unwrap().prune(model).unwrap();
    assert!(report.removals.iter().all(|r| r.kept() == 1));
    assert_eq!(thin.config().branch_widths(0, 0), (1, 16));
    assert!(report.channel_fraction() > 0.9);
}

#[test]
fn bad_input_is_a_named_error() {
    for bad in [1.0, 1.5, -0.1, f64::NAN] {
        let err = ChannelPruner::new(bad).unwrap_err().to_string();
        assert!(err.contains("outside [0, 1)"), "{bad}: {err}");
    }
    let model = dense("resnet20_cifar", &StateDict::new());
    let model = resnet(&model);
    let err = ChannelPruner::new(0.5)
        .unwrap()
        .exclude("layer9")
        .prune(model)
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"layer9\" matches no parameter"), "{err}");

    // Excluding a stage keeps its convolutions whole.
    let (compact, report) = ChannelPruner::new(0.5)
        .unwrap()
        .exclude("layer1")
        .prune(model)
        .unwrap();
    assert_eq!(report.removals.len(), 6);
    assert_eq!(compact.config().branch_widths(0, 2), (16, 16));
    assert_eq!(compact.config().branch_widths(1, 0), (16, 32));

    // A ResNeXt's convolutions are grouped, or feed grouped ones: nothing to prune.
    let next = ResNet::new(ResNetConfig::resnext50_32x4d()).unwrap();
    let scope = next.channel_scope();
    assert!(scope.couplings.is_empty());
    assert_eq!(scope.skipped.len(), 32);
    let err = ChannelPruner::new(0.3)
        .unwrap()
        .prune(&next)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no convolution whose channels can be removed"),
        "{err}"
    );
    assert!(err.contains("grouped"), "{err}");

    // NaN in a filter: no ranking.
    let mut state = StateDict::from_layer(model);
    let key = "layer2.1.conv1.weight";
    let mut t = state.get(key).unwrap().clone();
    if let reflow::state_dict::TensorData::F32(v) = &mut t.data {
        v[7] = f32::NAN;
    }
    state.insert(key, t);
    let scope: ChannelScope = model.channel_scope();
    let err = ChannelPruner::new(0.5)
        .unwrap()
        .select(&state, &scope)
        .unwrap_err()
        .to_string();
    assert!(err.contains(key) && err.contains("NaN"), "{err}");

    // A coupling whose tensors do not fit: named.
    let mut state = StateDict::from_layer(model);
    state.remove("layer3.2.bn1.running_var");
    let err = ChannelPruner::new(0.5)
        .unwrap()
        .select(&state, &scope)
        .unwrap_err()
        .to_string();
    assert!(err.contains("layer3.2.bn1.running_var"), "{err}");
}
