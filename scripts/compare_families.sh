#!/usr/bin/env bash
# The `prune` example against scripts/reference.py on one Fashion-MNIST network of each
# family (trained by train_families_fmnist.py into target/families/ when missing): the
# full protocol (sparsities 0.5, 0.7, 0.8, 0.9; REFLOW cumulative on 1,024 images), the
# two reports compared count by count, and the checkpoints reflow saved loaded into
# the torchvision model with strict=True and evaluated. Exits non-zero on any
# difference.
#
# Usage, from the repository root: bash scripts/compare_families.sh [NAME ...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/root/venvs/ref/bin/python}
A=assets/fashion-mnist
OUT=target/families
DATA=(--test-images $A/t10k-images-idx3-ubyte.gz --test-labels $A/t10k-labels-idx1-ubyte.gz
      --mean 0.2860 --std 0.3530)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(vgg_fmnist regnet_x_fmnist regnet_y_fmnist mobilenet_v2_fmnist
                                 mobilenet_v3_fmnist efficientnet_fmnist)
cargo build --release --quiet --features cli --bin reflow
for name in "${names[@]}"; do
  [ -f $OUT/$name.safetensors ] || $PY scripts/train_families_fmnist.py --only $name --out $OUT
  rm -rf $OUT/$name.saved && mkdir -p $OUT/$name.saved
  echo "== $name"
  ./target/release/reflow prune --weights $OUT/$name.safetensors "${DATA[@]}" \
      --calib-images $A/calib-images-idx3-ubyte.gz --json $OUT/$name.reflow.json \
      --save-dir $OUT/$name.saved 2>/dev/null
  $PY scripts/reference.py --weights $OUT/$name.safetensors "${DATA[@]}" \
      --calib-images $A/calib-images-idx3-ubyte.gz --json $OUT/$name.reference.json >/dev/null 2>&1
  $PY scripts/compare_reports.py $OUT/$name.reflow.json $OUT/$name.reference.json --tolerance 0
  $PY scripts/check_family_saved.py --like $OUT/$name.safetensors --saved $OUT/$name.saved \
      --report $OUT/$name.reflow.json "${DATA[@]}"
done
