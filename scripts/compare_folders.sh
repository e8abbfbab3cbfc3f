#!/usr/bin/env bash
# `reflow prune` against scripts/reference.py on image folders and .npy arrays, with a
# torchvision ResNet-18 (ImageNet stem) trained on Fashion-MNIST served as files
# (scripts/make_jpeg_folders.py, into target/jpeg-fmnist/ when missing):
#   1. JPEG folders (--test-dir, --calib-dir): the decoders differ (reflow's `image`
#      crate, zune-jpeg, against Pillow's libjpeg-turbo), so counts may differ by a few;
#   2. the same images as PNG folders: identical counts;
#   3. the .npy pair torchvision preprocessed (float32 test images, uint8 calibration
#      images): identical counts.
# Each: Resize(36), CenterCrop(32), mean/std 0.2860/0.3530 on three channels,
# global sparsities 0.5,0.7,0.8, REFLOW cumulative on 1,024 calibration images drawn
# with --calib-seed 7. Exits non-zero when a count differs by more than the tolerance.
#
# Usage, from the repository root: bash scripts/compare_folders.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/root/venvs/ref/bin/python}
D=target/jpeg-fmnist
OUT=target/folders
[ -f $D/resnet18_fmnist.safetensors ] || $PY scripts/make_jpeg_folders.py --out $D
cargo build --release --quiet --features cli --bin reflow
mkdir -p $OUT
COMMON=(--weights $D/resnet18_fmnist.safetensors --mean 0.2860,0.2860,0.2860 --std 0.3530,0.3530,0.3530
        --sparsity 0.5,0.7,0.8 --calib-seed 7)
FOLDER=(--resize 36 --crop 32)
run() {  # name tolerance flags...
  local name=$1 tolerance=$2
  shift 2
  echo "== $name"
  /usr/bin/time -f "reflow: %e s" ./target/release/reflow prune "${COMMON[@]}" "$@" --json $OUT/$name.reflow.json 2>&1 >/dev/null | grep -v '^\[' || true
  /usr/bin/time -f "reference.py: %e s" $PY scripts/reference.py "${COMMON[@]}" "$@" --json $OUT/$name.reference.json 2>&1 >/dev/null | grep -v '^\[' || true
  $PY scripts/compare_reports.py $OUT/$name.reflow.json $OUT/$name.reference.json --tolerance "$tolerance"
}
run jpeg 3 --test-dir $D/test --calib-dir $D/calib "${FOLDER[@]}"
run png 0 --test-dir $D/test_png --calib-dir $D/calib_png "${FOLDER[@]}"
run npy 0 --test-npy $D/x_test.npy --test-labels-npy $D/y_test.npy --calib-npy $D/x_calib_u8.npy
