//! The execution context is a value the probe carries: the kernel cap, the threads
//! and the sparse policy of a pass come from it, not from process state.

mod common;

use ndarray::Array4;
use reflow::cpu::{self, Level};
use reflow::exec::{Exec, Par, SparsePolicy};
use reflow::layer::{Layer, Probe};
use reflow::models::ResNet;
use reflow::nn::Profile;
use reflow::prelude::{MagnitudePruner, Pruner};

fn net() -> ResNet {
    ResNet::from_state_dict(&common::read("resnet20_cifar.safetensors")).unwrap()
}

/// The kernels each convolution of one profiled pass ran on.
fn kernels(net: &ResNet, x: &Array4<f32>, exec: Exec) -> (Vec<String>, Array4<f32>) {
    let profile = Profile::new();
    let mut probe = Probe::none().with_exec(exec).with_profile(&profile);
    let y = net.forward_with(x, &mut probe).unwrap();
    let names = profile
        .layers()
        .into_iter()
        .map(|l| l.kernel.to_string())
        .collect();
    (
        names,
        y.insert_axis(ndarray::Axis(2))
            .insert_axis(ndarray::Axis(3)),
    )
}

#[test]
fn the_probes_exec_decides_the_kernels_and_the_result_does_not_change() {
    let best = cpu::detected();
    if best == Level::Portable {
        eprintln!("no vector level on this processor: the blocked pass never runs");
        return;
    }
    let mut net = net();
    let x = Array4::from_shape_fn((4, 3, 16, 16), |(n, c, h, w)| {
        ((n * 7 + c * 5 + h * 3 + w) % 11) as f32 / 5.0 - 1.0
    });
    let defaults = Exec::defaults().with_level(best);
    let (vector, y) = kernels(&net, &x, defaults);
    // The blocked convolutions record their kernel; the classifier its product.
    let blocked = |ks: &[String]| ks.iter().filter(|k| *k != "gemm").count();
    assert!(
        blocked(&vector) > 0,
        "the blocked pass ran at {best}: {vector:?}"
    );
    // Capped at Portable by the probe alone (the process's cap untouched): the NCHW
    // engine, whose convolutions the profile does not record, and the same logits.
    let (portable, y_portable) = kernels(&net, &x, defaults.with_level(Level::Portable));
    assert_eq!(blocked(&portable), 0, "{portable:?}");
    let err = y
        .iter()
        .zip(&y_portable)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0f32, f32::max);
    assert!(err <= 1e-4, "{err}");
    // One thread: the same kernels and logits.
    let (serial, y_serial) = kernels(&net, &x, defaults.with_par(Par::Seq));
    assert_eq!(serial, vector);
    let err = y
        .iter()
        .zip(&y_serial)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0f32, f32::max);
    assert!(err <= 1e-5, "{err}");
    // The sparse policy of the probe: pruned to 90 %, `Always` runs sparse kernels,
    // `Never` none.
    MagnitudePruner::new(0.9).prune(&mut net).unwrap();
    let (always, _) = kernels(&net, &x, defaults.with_sparse(SparsePolicy::Always));
    assert!(always.iter().any(|k| k == "sparse"), "{always:?}");
    let (never, _) = kernels(&net, &x, defaults.with_sparse(SparsePolicy::Never));
    assert!(never.iter().all(|k| k != "sparse"), "{never:?}");
}

/// Deterministic weights, small enough to keep activations in range.
fn fill(net: &mut dyn reflow::layer::Params) {
    let mut i = 0u32;
    net.visit_params_mut(&mut |p| {
        if p.role.is_prunable() {
            p.data.iter_mut().for_each(|v| {
                i = i.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *v = ((i >> 9) as f32 / (1 << 23) as f32 - 0.5) * 0.2;
            })
        }
    });
}

#[test]
fn one_image_on_several_threads_equals_one_thread_bit_for_bit() {
    // A batch smaller than the thread count runs whole, each layer's work split
    // between the threads of a team that stays awake for the pass: every output
    // value is still computed by one task, in the same order, as on one thread.
    use reflow::models::{EfficientNet, EfficientNetConfig, MobileNetV2, MobileNetV2Config};
    use reflow::models::{Model, RegNet, RegNetConfig};
    if cpu::detected() == Level::Portable {
        eprintln!("no vector level on this processor: the blocked pass never runs");
        return;
    }
    let nets: Vec<(&str, Model)> = vec![
        ("resnet20", Model::new(net())),
        (
            "mobilenet_v2",
            Model::new(MobileNetV2::new(MobileNetV2Config::mobilenet_v2()).unwrap()),
        ),
        (
            "regnet_x_400mf",
            Model::new(RegNet::new(RegNetConfig::regnet_x_400mf()).unwrap()),
        ),
        (
            "efficientnet_b0",
            Model::new(EfficientNet::new(EfficientNetConfig::b(0).unwrap()).unwrap()),
        ),
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    for (name, mut net) in nets {
        fill(&mut net);
        for size in [32, 45] {
            let x = Array4::from_shape_fn((1, 3, size, size), |(n, c, h, w)| {
                ((n * 7 + c * 5 + h * 3 + w) % 11) as f32 / 5.0 - 1.0
            });
            let serial = net
                .forward_with(
                    &x,
                    &mut Probe::none().with_exec(Exec::defaults().with_par(Par::Seq)),
                )
                .unwrap();
            // Twice: the next pass takes the team the first one gave back.
            for _ in 0..2 {
                let parallel = pool.install(|| net.forward(&x).unwrap());
                assert_eq!(parallel, serial, "{name} at {size}x{size}");
            }
        }
    }
}
