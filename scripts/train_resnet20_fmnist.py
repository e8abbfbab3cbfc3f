"""Train a CIFAR-style ResNet-20 on Fashion-MNIST and export it for `reflow`.

The network is `build_resnet("basic", [3, 3, 3], [16, 32, 64], 16, "cifar", 1, 10)`
from `torch_resnet.py` (torchvision state-dict layout, one input channel, 28x28
input, 10 classes). It is trained from scratch on all 60,000 training images,
read directly from the IDX .gz files (no torchvision dataset download), and the
eval-mode state dict is written with safetensors, together with a MODEL.md that
records how it was made.

Everything is seeded and runs on the CPU with one thread, so a rerun with the
same torch version reproduces the same weights:

    OMP_NUM_THREADS=1 /root/venvs/ref/bin/python scripts/train_resnet20_fmnist.py

Recipe: SGD (momentum 0.9, Nesterov), weight decay 5e-4, batch 128, peak lr 0.1
with a one-epoch linear warm-up followed by a cosine decay to zero (stepped per
iteration); augmentation = random 28x28 crop of the image zero-padded by 2 px,
plus a random horizontal flip. Input normalisation: x = (u8/255 - 0.2860)/0.3530.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_resnet import build_resnet  # noqa: E402

MEAN, STD = 0.2860, 0.3530
DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "assets" / "fashion-mnist"


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally .gz) into a numpy array (u8 data only)."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    magic = int.from_bytes(raw[0:4], "big")
    # Magic: two zero bytes, a type code (0x08 = unsigned byte), the number of dims.
    if magic >> 16 != 0 or (magic >> 8) & 0xFF != 0x08:
        raise ValueError(f"{path}: not a u8 IDX file (magic 0x{magic:08x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(raw) - offset != count:
        raise ValueError(f"{path}: header says {dims} ({count} bytes) but {len(raw) - offset} bytes follow")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as u8 [N, 28, 28] and labels as int64 [N]."""
    images = read_idx(DATA_DIR / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(DATA_DIR / f"{split}-labels-idx1-ubyte.gz")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def normalize(u8: torch.Tensor) -> torch.Tensor:
    """u8 [N, H, W] -> float32 [N, 1, H, W], (u8/255 - mean)/std."""
    return ((u8.float() / 255.0 - MEAN) / STD).unsqueeze(1)


def augment(u8: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop (zero padding of `pad` px on each side) + random horizontal flip.

    Works on a whole u8 batch [N, H, W] at once. Padding is done on the raw
    pixels, so the border is black (u8 = 0), like the image background.
    """
    n, h, w = u8.shape
    padded = F.pad(u8, (pad, pad, pad, pad))  # [N, H+2p, W+2p], zeros
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = oy[:, None] + torch.arange(h)  # [N, H]
    cols = ox[:, None] + torch.arange(w)  # [N, W]
    flip = torch.rand(n, generator=gen) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # reversed columns = horizontal flip
    batch_idx = torch.arange(n)[:, None, None]
    return padded[batch_idx, rows[:, :, None], cols[:, None, :]]


# ---------------------------------------------------------------------------
# Training / evaluation
# ---------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, channels_last: bool) -> int:
    """Number of correct top-1 predictions, eval mode, batches of 500."""
    model.eval()
    correct = 0
    for i in range(0, len(images), 500):
        x = normalize(images[i: i + 500])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        correct += int((model(x).argmax(1) == labels[i: i + 500]).sum())
    return correct


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up from peak/10 over `warmup` steps, then cosine decay to 0."""
    if step < warmup:
        return peak * (0.1 + 0.9 * step / warmup)
    t = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * t))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-channels-last", action="store_true",
                    help="use NCHW (channels_last was ~15%% faster on one thread here)")
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    ap.add_argument("--train-limit", type=int, default=0,
                    help="smoke test only: train on the first N images (0 = all)")
    args = ap.parse_args()

    # --- determinism and a single thread ------------------------------------
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)
    channels_last = not args.no_channels_last
    gen = torch.Generator().manual_seed(args.seed)  # shuffling + augmentation

    train_x, train_y = load_split("train")
    test_x, test_y = load_split("t10k")
    if args.train_limit:
        train_x, train_y = train_x[: args.train_limit], train_y[: args.train_limit]
    print(f"train {tuple(train_x.shape)}  test {tuple(test_x.shape)}  torch {torch.__version__}", flush=True)

    model = build_resnet("basic", [3, 3, 3], [16, 32, 64], 16, "cifar", 1, 10)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                          nesterov=True, weight_decay=args.weight_decay)

    n = len(train_x)
    steps_per_epoch = math.ceil(n / args.batch)
    total_steps = steps_per_epoch * args.epochs
    warmup = int(args.warmup_epochs * steps_per_epoch)
    step = 0
    history = []
    t_start = time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        t0 = time.time()
        perm = torch.randperm(n, generator=gen)
        loss_sum, seen, correct = 0.0, 0, 0
        for i in range(0, n, args.batch):
            idx = perm[i: i + args.batch]
            x = normalize(augment(train_x[idx], gen))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = train_y[idx]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup, args.lr)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
            correct += int((logits.argmax(1) == y).sum())
        train_secs = time.time() - t0
        test_correct = evaluate(model, test_x, test_y, channels_last)
        epoch_secs = time.time() - t0
        rec = dict(epoch=epoch, train_loss=loss_sum / seen, train_top1=correct / seen,
                   test_top1=test_correct / len(test_x), train_secs=train_secs, epoch_secs=epoch_secs)
        history.append(rec)
        print(f"epoch {epoch:2d}/{args.epochs}  loss {rec['train_loss']:.4f}  train top-1 {rec['train_top1']:.4f}  "
              f"test top-1 {rec['test_top1']:.4f}  ({train_secs:.0f}s train, {epoch_secs:.0f}s total, "
              f"elapsed {time.time() - t_start:.0f}s)", flush=True)
    total_secs = time.time() - t_start

    # --- export -------------------------------------------------------------
    from safetensors.torch import save_file

    model.eval()
    # contiguous(): channels_last parameters are stored in plain row-major (NCHW) order.
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    for k, v in sd.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = args.out_dir / "resnet20_fmnist.safetensors"
    save_file(sd, str(weights_path), metadata={"config": json.dumps(dict(
        block="basic", layers=[3, 3, 3], planes=[16, 32, 64], stem_width=16, stem="cifar",
        in_channels=1, num_classes=10)), "mean": str(MEAN), "std": str(STD)})

    # Re-check the exported file: fresh model, strict load, same test accuracy.
    from safetensors.torch import load_file
    check = build_resnet("basic", [3, 3, 3], [16, 32, 64], 16, "cifar", 1, 10)
    check.load_state_dict(load_file(str(weights_path)), strict=True)
    final_correct = evaluate(check, test_x, test_y, channels_last=False)
    final = final_correct / len(test_x)
    print(f"saved {weights_path} ({weights_path.stat().st_size} bytes); reloaded test top-1 {final:.4f} "
          f"({final_correct}/{len(test_x)}); total {total_secs / 60:.1f} min", flush=True)

    write_model_md(args, history, final, final_correct, total_secs, sum(p.numel() for p in check.parameters()))


def write_model_md(args, history, final, final_correct, total_secs, params) -> None:
    cmd = "OMP_NUM_THREADS=1 /root/venvs/ref/bin/python scripts/train_resnet20_fmnist.py"
    defaults = dict(epochs=15, batch=128, lr=0.1, momentum=0.9, weight_decay=5e-4, warmup_epochs=1.0, seed=0)
    extra = [f"--{k.replace('_', '-')} {getattr(args, k)}" for k, v in defaults.items() if getattr(args, k) != v]
    if args.no_channels_last:
        extra.append("--no-channels-last")
    if extra:
        cmd += " " + " ".join(extra)
    rows = "\n".join(
        f"| {h['epoch']} | {h['train_loss']:.4f} | {h['train_top1']:.4f} | {h['test_top1']:.4f} | {h['epoch_secs']:.0f} |"
        for h in history)
    text = f"""# ResNet-20 trained on Fashion-MNIST

`resnet20_fmnist.safetensors` is a CIFAR-style ResNet-20 (torchvision state-dict layout)
trained from scratch on the full Fashion-MNIST training set (60,000 images) by
`scripts/train_resnet20_fmnist.py`. It is the real-data checkpoint for the `prune`
example. The data is described in `LICENSE-DATA.md`.

## Model

- `build_resnet("basic", [3, 3, 3], [16, 32, 64], 16, "cifar", 1, 10)` from
  `scripts/torch_resnet.py`: 3x3 stride-1 stem (16 channels, no max-pool), three stages
  of three BasicBlocks (16, 32, 64 channels; 1x1-conv + BN downsample at the start of
  stages 2 and 3), global average pooling, `fc` 64 -> 10. {params:,} parameters.
- Use with `--stem cifar`. Input: one channel, 28x28, x = (u8/255 - 0.2860) / 0.3530.
- Stored: the eval-mode `state_dict()` (float32 tensors, int64 `num_batches_tracked`),
  written with `safetensors.torch.save_file`. The safetensors metadata holds the
  build configuration (`config`) and the normalisation (`mean`, `std`).

## Result

**Test top-1: {final:.4f} ({final_correct} / 10,000)** on the Fashion-MNIST t10k set
(checked after reloading the saved file into a fresh model with a strict load).

## How it was trained

Command (from the repository root):

```sh
{cmd}
```

- Seed {args.seed} (`torch.manual_seed`, `random`, `numpy`, and one `torch.Generator`
  for shuffling and augmentation); `torch.use_deterministic_algorithms(True)`; CPU,
  `torch.set_num_threads(1)`; channels_last memory format: {not args.no_channels_last}.
- Data: the IDX .gz files in `/usr/share/datasets/fashion-mnist/` (Debian package
  `dataset-fashion-mnist`), read with gzip + numpy; all 60,000 training images,
  reshuffled every epoch.
- Augmentation: random 28x28 crop from the image zero-padded by 2 px (black border),
  random horizontal flip (p = 0.5).
- Optimiser: SGD, momentum {args.momentum}, Nesterov, weight decay {args.weight_decay} (all
  parameters), batch {args.batch}, cross-entropy loss.
- Learning rate: peak {args.lr}; linear warm-up from {args.lr / 10:g} over the first
  {args.warmup_epochs:g} epoch(s), then cosine decay to 0, updated every iteration.
- Epochs: {args.epochs}. BatchNorm: PyTorch defaults (momentum 0.1, eps 1e-5).
- Training time: {total_secs / 60:.1f} min on one CPU thread ({platform.processor() or platform.machine()},
  shared with other work), torch {torch.__version__}, numpy {np.__version__},
  Python {platform.python_version()}.

| epoch | train loss | train top-1 | test top-1 | secs |
|------:|-----------:|------------:|-----------:|-----:|
{rows}

(Train loss/top-1 are running averages over the augmented epoch in train mode.)
"""
    path = args.out_dir / "MODEL.md"
    path.write_text(text)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
