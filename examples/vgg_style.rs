//! A network that no model family of reflow describes — a VGG-style CNN whose batch
//! norms follow the activation (conv → ReLU → BN), with a classifier head — composed
//! from the crate's layers, loaded by name from a PyTorch checkpoint, pruned and
//! recalibrated.
//!
//! ```sh
//! cargo run --release --example vgg_style
//! ```
//!
//! The checkpoint (`assets/fashion-mnist/small_cnn_fmnist.safetensors`) was trained on
//! Fashion-MNIST by `scripts/train_families_fmnist.py --only small_cnn_fmnist`
//! (`families.small_cnn` in PyTorch: the same modules under the same names).

use reflow::nn::{Activation, AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, Dropout};
use reflow::nn::{Flatten, Linear, MaxPool2d, Sequential, Tensor2, Tensor4};
use reflow::prelude::*;

const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/fashion-mnist");

/// PyTorch's `nn.Sequential` numbering: `features.{0..10}`, `avgpool`,
/// `classifier.{0..3}`; the model code is this function.
fn small_cnn() -> reflow::Result<Sequential<Tensor4, Tensor2>> {
    let conv = |i, o| Conv2d::new(Conv2dConfig::new(i, o, 3).padding(1).bias(true));
    let bn = |c| BatchNorm2d::new(c, 1e-5);
    let features = Sequential::new()
        .push("0", conv(1, 16)?)
        .push("1", Activation::Relu)
        .push("2", bn(16))
        .push("3", conv(16, 32)?)
        .push("4", Activation::Relu)
        .push("5", bn(32))
        .push("6", MaxPool2d::new(2, 2, 0)?)
        .push("7", conv(32, 64)?)
        .push("8", Activation::Relu)
        .push("9", bn(64))
        .push("10", MaxPool2d::new(2, 2, 0)?);
    let classifier = Sequential::with_input::<Tensor2>()
        .push("0", Linear::new(64 * 3 * 3, 64, true))
        .push("1", Activation::Relu)
        .push("2", Dropout::new(0.5)?)
        .push("3", Linear::new(64, 10, true));
    Ok(Sequential::new()
        .push("features", features)
        .push("avgpool", AdaptiveAvgPool2d::new(3, 3)?)
        .push("flatten", Flatten)
        .push("classifier", classifier))
}

fn main() -> reflow::Result<()> {
    let mut net = small_cnn()?;
    // Strict, by name: every key of the checkpoint must fit a parameter and back.
    StateDict::read_safetensors(format!("{ASSETS}/small_cnn_fmnist.safetensors"))?
        .load_into(&mut net)?;
    let norm = Normalization::fashion_mnist();
    let test = Dataset::new(
        IdxImages::read(format!("{ASSETS}/t10k-images-idx3-ubyte.gz"))?,
        IdxLabels::read(format!("{ASSETS}/t10k-labels-idx1-ubyte.gz"))?,
    )?;
    let calib_images = IdxImages::read(format!("{ASSETS}/calib-images-idx3-ubyte.gz"))?;
    let calibration = ImageBatches::new(&calib_images, 1024, 128, &norm)?;
    let top1 = |net: &Sequential<Tensor4, Tensor2>| -> reflow::Result<f64> {
        Ok(accuracy(net, &test.labelled(256, &norm)?)?.top1())
    };
    println!(
        "small CNN (conv → ReLU → BN): {} parameters, {} prunable; dense top-1 {:.4}",
        count_parameters(&net),
        count_prunable(&net),
        top1(&net)?
    );
    let dense = StateDict::from_layer(&net);
    println!(
        "{:>8} {:>13} {:>13}",
        "sparsity", "pruned top-1", "REFLOW top-1"
    );
    for sparsity in [0.5, 0.7, 0.8, 0.9] {
        dense.load_into(&mut net)?;
        MagnitudePruner::new(sparsity).prune(&mut net)?;
        let pruned = top1(&net)?;
        Reflow::cumulative().rescale(&mut net, &calibration)?;
        println!("{sparsity:>8} {pruned:>13.4} {:>13.4}", top1(&net)?);
    }
    Ok(())
}
