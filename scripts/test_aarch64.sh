#!/usr/bin/env bash
# Runs the library's unit tests, the parity tests and the image-folder tests for aarch64
# under QEMU, so that the NEON kernels (and zune-jpeg's NEON decoding) run, not only
# compile, on an x86-64 machine. Not part of CI: it needs
# the aarch64 standard library and, from Debian, a cross linker and QEMU:
#
#   rustup target add aarch64-unknown-linux-gnu
#   apt-get install -y qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
#
# Usage, from the repository root: bash scripts/test_aarch64.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
cargo test --target aarch64-unknown-linux-gnu --features image --lib \
  --test parity_layers --test parity_models --test parity_reflow --test stages \
  --test properties --test image_folder "$@"
