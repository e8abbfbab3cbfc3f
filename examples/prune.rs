//! Prune a torchvision-layout checkpoint (ResNet, RegNet, MobileNetV2/V3, EfficientNet
//! or VGG-BN) at several sparsities, evaluate it, recalibrate it with REFLOW, evaluate
//! again, and report: the `reflow prune` command, run from a clone.
//!
//! ```sh
//! cargo run --release --example prune -- \
//!     --weights assets/fashion-mnist/resnet20_fmnist.safetensors --stem cifar \
//!     --test-images assets/fashion-mnist/t10k-images-idx3-ubyte.gz \
//!     --test-labels assets/fashion-mnist/t10k-labels-idx1-ubyte.gz \
//!     --calib-images assets/fashion-mnist/calib-images-idx3-ubyte.gz \
//!     --mean 0.2860 --std 0.3530 --json report.json
//! ```
//!
//! The flags and the JSON report are specified in `docs/prune-example.md`.

#[macro_use]
#[path = "../src/bin/reflow/protocol.rs"]
mod protocol;
#[path = "../src/bin/reflow/prune/mod.rs"]
mod prune;

fn main() -> std::process::ExitCode {
    prune::main(std::env::args_os())
}
