#!/usr/bin/env bash
# The `prune` example against scripts/reference.py for the structured patterns, on the
# bundled ResNet-20, a bottleneck ResNet and a VGG-BN (resnet_bottleneck_fmnist and
# vgg_fmnist, trained by train_families_fmnist.py into target/families/ when missing): --pattern 2:4,
# --pattern channel --sparsity 0.3,0.5, and unstructured 0.5 (global and layer) next
# to them, and --method wanda and sparsegpt at 0.5 and 2:4; REFLOW cumulative on 1,024
# images. The reports are compared count by count
# (and the skipped tensors and compact parameter counts), and every checkpoint reflow
# saved is loaded into PyTorch with strict=True — the compact ones built from their
# shapes — and evaluated. Exits non-zero on any difference.
#
# Usage, from the repository root: bash scripts/compare_patterns.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/root/venvs/ref/bin/python}
A=assets/fashion-mnist
OUT=target/patterns
DATA=(--test-images $A/t10k-images-idx3-ubyte.gz --test-labels $A/t10k-labels-idx1-ubyte.gz
      --calib-images $A/calib-images-idx3-ubyte.gz --mean 0.2860 --std 0.3530 --stem cifar)
cargo build --release --quiet --features cli --bin reflow
for name in resnet_bottleneck_fmnist vgg_fmnist; do
  [ -f target/families/$name.safetensors ] ||
    $PY scripts/train_families_fmnist.py --only $name --out target/families
done
for weights in $A/resnet20_fmnist.safetensors target/families/resnet_bottleneck_fmnist.safetensors \
               target/families/vgg_fmnist.safetensors; do
  name=$(basename "$weights" .safetensors)
  rm -rf "$OUT/$name" && mkdir -p "$OUT/$name/saved"
  for run in "2:4" "channel 0.3,0.5" "unstructured 0.5" "unstructured 0.5 layer" \
             "unstructured 0.5 layer wanda" "2:4 - - wanda" \
             "unstructured 0.5 layer sparsegpt" "2:4 - - sparsegpt"; do
    set -- $run
    pattern=$1 flags=(--pattern "$1")
    [ $# -ge 2 ] && [ "$2" != - ] && flags+=(--sparsity "$2")
    [ $# -ge 3 ] && [ "$3" != - ] && flags+=(--scope "$3")
    [ $# -ge 4 ] && flags+=(--method "$4")
    tag=$(echo "$run" | tr ' :,' '-_+')
    echo "== $name $run"
    ./target/release/reflow prune --weights "$weights" "${DATA[@]}" "${flags[@]}" \
        --json "$OUT/$name/$tag.reflow.json" --save-dir "$OUT/$name/saved/$tag" 2>/dev/null |
        grep -E '^(dense|global|layer|2:4|channel|wanda|sparsegpt) '
    $PY scripts/reference.py --weights "$weights" "${DATA[@]}" "${flags[@]}" \
        --json "$OUT/$name/$tag.reference.json" >/dev/null 2>&1
    $PY scripts/compare_reports.py "$OUT/$name/$tag.reflow.json" "$OUT/$name/$tag.reference.json" \
        --tolerance 0 | tail -1
    $PY scripts/check_family_saved.py --like "$weights" --saved "$OUT/$name/saved/$tag" \
        --report "$OUT/$name/$tag.reflow.json" "${DATA[@]:0:4}" --mean 0.2860 --std 0.3530 --stem cifar
  done
done
