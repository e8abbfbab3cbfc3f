"""Train one small network of each family beyond ResNet on Fashion-MNIST, for the
end-to-end comparison of reflow's `prune` example with `reference.py`.

Each network is built by `families.build` from torchvision's own classes (one input
channel, 10 classes, 28x28 input), trained from scratch on the 60,000 training images
(read from the IDX .gz files of the Debian package dataset-fashion-mnist), and saved
in eval mode with safetensors; its spec travels in the file's metadata so that
`reference.py` and `check_saved.py` rebuild it. Seeded; CPU.

    /root/venvs/ref/bin/python scripts/train_families_fmnist.py [--out DIR] [--epochs N] [--only NAME]

Recipe: Adam (lr 2e-3, weight decay 1e-4), batch 128, cosine decay per iteration,
random 28x28 crops of the 2-px zero-padded image and horizontal flips;
x = (u8/255 - 0.2860)/0.3530.
"""

from __future__ import annotations

import argparse
import gzip
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import families  # noqa: E402

MEAN, STD = 0.2860, 0.3530
DATA = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parent.parent

SPECS = {
    "vgg_fmnist": {"family": "vgg", "config": {"features": [16, "M", 32, "M", 64, 64, "M"], "pool": 3, "hidden": 128, "num_classes": 10}},
    "regnet_x_fmnist": {"family": "regnet", "config": {"depths": [1, 2, 2], "widths": [24, 48, 96], "group_width": 8, "se_ratio": None, "stem_width": 16, "num_classes": 10}},
    "regnet_y_fmnist": {"family": "regnet", "config": {"depths": [1, 2, 2], "widths": [24, 48, 96], "group_width": 8, "se_ratio": 0.25, "stem_width": 16, "num_classes": 10}},
    "mobilenet_v2_fmnist": {"family": "mobilenet_v2", "config": {"width_mult": 0.5, "num_classes": 10}},
    "mobilenet_v3_fmnist": {"family": "mobilenet_v3", "config": {"arch": "mobilenet_v3_small", "width_mult": 0.75, "num_classes": 10}},
    "small_cnn_fmnist": {"family": "small_cnn", "config": {"widths": [16, 32, 64], "hidden": 64, "num_classes": 10}},
    "resnet_bottleneck_fmnist": {"family": "resnet", "config": {"block": "bottleneck", "layers": [2, 2, 2], "planes": [16, 32, 64], "stem_width": 16, "stem": "cifar", "num_classes": 10}},
    "efficientnet_fmnist": {"family": "efficientnet", "config": {"width_mult": 0.5, "depth_mult": 0.5, "num_classes": 10}},
}


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def tensors(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(read_idx(DATA / f"{prefix}-images-idx3-ubyte.gz").copy()).float()
    y = torch.from_numpy(read_idx(DATA / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))
    return ((x / 255.0 - MEAN) / STD)[:, None], y


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2))
    i, j = torch.randint(0, 5, (2,), generator=gen).tolist()
    out = padded[:, :, i: i + 28, j: j + 28]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor,
        epochs: int, augment, name: str) -> None:
    """Adam (lr 2e-3, weight decay 1e-4) with a one-cycle schedule, batches of 128 drawn
    by a generator seeded with 1, each through `augment(batch, generator)`; prints the
    top-1 on (tx, ty) after each epoch."""
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(len(x) / 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for k in range(0, len(x), 128):
            idx = order[k: k + 128]
            loss = F.cross_entropy(model(augment(x[idx], gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(tx[i: i + 500]).argmax(1) == ty[i: i + 500]).sum()) for i in range(0, len(tx), 500))
        print(f"{name} epoch {epoch + 1}: test top-1 {correct / len(tx):.4f} ({time.time() - t0:.0f}s)", flush=True)


def train(name: str, spec: dict, epochs: int, out: Path) -> None:
    torch.manual_seed(0)
    spec = {**spec, "in_channels": 1}
    model = families.build(spec)
    x, y = tensors("train")
    tx, ty = tensors("t10k")
    fit(model, x, y, tx, ty, epochs, augment, name)
    n = sum(p.numel() for p in model.parameters())
    families.save(model.eval(), spec, out / f"{name}.safetensors")
    print(f"{name}: {n:,} parameters -> {out / (name + '.safetensors')}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "target" / "families")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--only")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    for name, spec in SPECS.items():
        if args.only in (None, name):
            train(name, spec, args.epochs, args.out)


if __name__ == "__main__":
    main()
