"""Dense torchvision checkpoints and a few images, for timing pruned networks with
`reflow prune` and `reflow bench` (docs/performance.md, "Sparse execution").

Writes to OUT (default /tmp/reflow-bench):

- <model>.safetensors for each of --models: torchvision's architecture with seeded
  random weights (`torch_resnet.randomize_`: non-trivial batch-norm statistics; a
  forward pass costs the same whatever the weights are);
- images.npy (float32 [N, 3, 224, 224], normalised-looking values) and labels.npy
  (int64 [N]): enough for `reflow prune` to evaluate and recalibrate.

Then, e.g.:
    reflow prune --weights OUT/resnet50.safetensors --test-npy OUT/images.npy \
        --test-labels-npy OUT/labels.npy --calib-npy OUT/images.npy --calib-count 16 \
        --signal-images 8 --sparsity 0.8,0.9 --save-dir OUT/resnet50
    reflow bench OUT/resnet50/s0.80.safetensors --input 3x224x224 --batch 8

Usage: ~/venvs/ref/bin/python scripts/make_bench_checkpoints.py [--out DIR]
    [--models resnet50,mobilenet_v2] [--images 16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torchvision
from safetensors.torch import save_file

from torch_resnet import randomize_


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="/tmp/reflow-bench")
    parser.add_argument("--models", default="resnet50,mobilenet_v2")
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        model = getattr(torchvision.models, name)(weights=None).eval()
        randomize_(model, seed=0)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        path = out / f"{name}.safetensors"
        save_file(state, str(path))
        print(f"{path}: {path.stat().st_size} bytes")
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.images, 3, 224, 224), dtype=np.float32)
    np.save(out / "images.npy", images)
    np.save(out / "labels.npy", rng.integers(0, 1000, args.images, dtype=np.int64))
    print(f"{out / 'images.npy'}: {args.images} images")


if __name__ == "__main__":
    main()
