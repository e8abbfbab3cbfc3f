//! Pruned networks on the sparse kernel: the same logits as on the dense kernels, in
//! every family, at every kernel level; NaN reaches the same logits; REFLOW's
//! calibration (on NCHW activations) the same statistics.
//!
//! The sparse policy is process-wide: this binary's one test sets it.

mod common;

use common::{array, read, relative_error, PARITY};
use ndarray::{Array4, Ix4};
use reflow::layer::{Layer, Params};
use reflow::models::{EfficientNet, MobileNetV2, MobileNetV3, RegNet, ResNet, Vgg};
use reflow::nn::{set_sparse_policy, SparsePolicy, Tensor2, Tensor4};
use reflow::prune::{MagnitudePruner, Pruner};
use reflow::StateDict;

/// How far the sparse kernel's logits may be from the dense kernels': both sum the
/// same products in different orders.
const KERNELS: f64 = 1e-5;

/// A network of the bundled fixtures, as `Layer`, `Params` and what a rescaler takes.
trait Network:
    Layer<Input = Tensor4, Output = Tensor2> + Params + reflow::layer::Network<Tensor4>
{
}
impl<N: Layer<Input = Tensor4, Output = Tensor2> + Params> Network for N {}

/// Every batch norm's running statistics of `net` after REFLOW (cumulative) on
/// `input` under `policy`.
fn recalibrated(net: &mut dyn Network, input: &Tensor4, policy: SparsePolicy) -> Vec<f32> {
    use reflow::rescale::{Reflow, Rescaler};
    set_sparse_policy(policy);
    let batches = vec![input.clone()];
    Reflow::cumulative().rescale(net, &batches).unwrap();
    let mut stats = vec![];
    net.visit_params(&mut |p| {
        if p.name.ends_with("running_mean") || p.name.ends_with("running_var") {
            stats.extend_from_slice(p.data);
        }
    });
    stats
}

fn load(name: &str) -> (Box<dyn Network>, Tensor4) {
    let state = read(&format!("{name}.safetensors"));
    let net: Box<dyn Network> = match name {
        "resnet20_cifar" => Box::new(ResNet::from_state_dict(&state).unwrap()),
        "resnext_small" => Box::new(ResNet::from_state_dict(&state).unwrap()),
        "vgg_small" => Box::new(Vgg::from_state_dict(&state).unwrap()),
        "regnet_y_small" => Box::new(RegNet::from_state_dict(&state).unwrap()),
        "mobilenet_v2_small" => Box::new(MobileNetV2::from_state_dict(&state).unwrap()),
        "mobilenet_v3_small" => Box::new(MobileNetV3::from_state_dict(&state).unwrap()),
        "efficientnet_small" => Box::new(EfficientNet::from_state_dict(&state).unwrap()),
        _ => unreachable!("a fixture"),
    };
    let io: StateDict = read(&format!("{name}.io.safetensors"));
    let input = array(&io, "input").into_dimensionality::<Ix4>().unwrap();
    (net, input)
}

/// The logits of `net` on `input` under `policy`.
fn logits(net: &dyn Network, input: &Tensor4, policy: SparsePolicy) -> Vec<f32> {
    set_sparse_policy(policy);
    net.forward(input).unwrap().into_raw_vec_and_offset().0
}

#[test]
fn pruned_networks_compute_the_same_logits_on_the_sparse_kernel() {
    /// Restores the default policy, also when the test panics.
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            set_sparse_policy(SparsePolicy::Measured);
        }
    }
    let _restore = Restore;
    let names = [
        "resnet20_cifar",
        "resnext_small",
        "vgg_small",
        "regnet_y_small",
        "mobilenet_v2_small",
        "mobilenet_v3_small",
        "efficientnet_small",
    ];
    common::at_every_level(|_| {
        // A pruned classifier alone: a wide one (VGG's are 25,088 × 4,096), any batch.
        let mut fc = reflow::nn::Linear::new(300, 37, true);
        fc.visit_params_mut(&mut |p| {
            for (k, v) in p.data.iter_mut().enumerate() {
                *v = if k % 5 == 0 {
                    (k % 7) as f32 - 3.0
                } else {
                    0.0
                };
            }
        });
        for n in [1, 3, 70] {
            let x = ndarray::Array2::from_shape_fn((n, 300), |(r, c)| ((r * 31 + c) % 11) as f32);
            set_sparse_policy(SparsePolicy::Never);
            let dense = fc.forward(&x).unwrap();
            set_sparse_policy(SparsePolicy::Always);
            let sparse = fc.forward(&x).unwrap();
            let err = relative_error(sparse.as_slice().unwrap(), dense.as_slice().unwrap());
            assert!(err <= KERNELS, "linear, batch {n}: {err:e}");
        }
        for name in names {
            let (dense_net, input) = load(name);
            for sparsity in [0.5, 0.9] {
                let (mut net, _) = load(name);
                MagnitudePruner::new(sparsity).prune(&mut *net).unwrap();
                let dense = logits(&*net, &input, SparsePolicy::Never);
                let sparse = logits(&*net, &input, SparsePolicy::Always);
                let err = relative_error(&sparse, &dense);
                eprintln!("{name} at {sparsity}: sparse against dense {err:.2e}");
                assert!(err <= KERNELS, "{name} at {sparsity}: {err:e}");
                // The measured choice, whichever it is, computes the same.
                let measured = logits(&*net, &input, SparsePolicy::Measured);
                let err = relative_error(&measured, &dense);
                assert!(err <= KERNELS, "{name} at {sparsity}, measured: {err:e}");
                // NaN in one image reaches that image's logits as on the dense kernels
                // (the sparse kernel declines it), the other images' not.
                let mut poisoned: Array4<f32> = input.clone();
                poisoned[[0, 0, 1, 1]] = f32::NAN;
                let dense = logits(&*net, &poisoned, SparsePolicy::Never);
                let sparse = logits(&*net, &poisoned, SparsePolicy::Always);
                let nan = |v: &[f32]| v.iter().map(|x| x.is_nan()).collect::<Vec<_>>();
                assert_eq!(nan(&sparse), nan(&dense), "{name} at {sparsity}: NaN");
                assert!(dense.iter().any(|v| v.is_nan()), "{name}: NaN reaches");
                // REFLOW's statistics, gathered on NCHW activations: the pruned
                // convolutions on the sparse kernel (always; at most 40 % dense, by
                // rule, when measured) give those of the dense paths.
                let want = recalibrated(&mut *net, &input, SparsePolicy::Never);
                for policy in [SparsePolicy::Always, SparsePolicy::Measured] {
                    let got = recalibrated(&mut *net, &input, policy);
                    let err = relative_error(&got, &want);
                    eprintln!("{name} at {sparsity}: REFLOW {policy} against never {err:.2e}");
                    // Each batch norm normalises by the statistics before it: the
                    // sums' rounding compounds through the layers (up to 1.5e-5 here),
                    // so the parity tolerance of REFLOW against PyTorch.
                    assert!(
                        err <= PARITY,
                        "{name} at {sparsity}, {policy} REFLOW: {err:e}"
                    );
                }
            }
            // An intact network gives the same logits under every policy.
            let dense = logits(&*dense_net, &input, SparsePolicy::Never);
            let sparse = logits(&*dense_net, &input, SparsePolicy::Always);
            let err = relative_error(&sparse, &dense);
            assert!(err <= KERNELS, "{name} intact: {err:e}");
        }
    });
}
