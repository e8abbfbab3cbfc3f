"""Times the pruners' own work in PyTorch and in reflow, side by side on the same
checkpoint, calibration images and threads, and prints the ratios
(docs/results.md, "What each method costs").

The work timed, per method (layer scope): the pass over the calibration images that
measures the method's statistics (Wanda's input norms, SparseGPT's input Hessians;
magnitude pruning has none), then the pruning (SparseGPT's includes its weight update).
Evaluation and REFLOW are not part of it: they are the same for every method.

PyTorch runs two ways:
- `reference`: scripts/reference.py's port (float64 statistics, float64 fasterprune),
  the one reflow's counts are checked against;
- `float32`: the published code's precision (IST-DASLab/sparsegpt's add_batch and
  fasterprune in float32; locuslab/wanda's scaler_row in float32).
reflow runs the `bench_pruners` example (float64 statistics, float64 pruning), built
first with `cargo build --release --features npy --example bench_pruners`.

Usage:
    ~/venvs/ref/bin/python scripts/bench_pruners.py --weights W.safetensors \
        --images IMAGES.npy [--count 128] [--batch 16] [--methods sparsegpt] \
        [--sparsity 0.5] [--threads 2] [--exclude fc] [--skip reference]

IMAGES.npy: float32 [N, C, H, W], already normalised (make_bench_checkpoints.py writes
one); or an IDX file (.gz), normalised with --mean/--std and written to a temporary
.npy for reflow.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference  # noqa: E402
from sparsegpt_reference import fasterprune, unfolded  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def prunable(model: nn.Module, exclude: list[str]) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in reference.prunable_params(model) if not reference.is_excluded(n, exclude)]


@torch.no_grad()
def float32_hessians(model: nn.Module, calib: torch.Tensor, batch: int) -> dict:
    """IST-DASLab/sparsegpt's SparseGPT.add_batch for every layer: H scaled to the mean
    over the columns so far, 2/n · X Xᵀ added, float32 (groups as reference.unfolded)."""
    state: dict[str, tuple[list[torch.Tensor], int]] = {}

    def record(name: str):
        def hook(module, args):
            cols = unfolded(module, args[0], torch.float32)
            hs, n = state.get(name, ([], 0))
            tmp = args[0].shape[0]
            scale = n / (n + tmp)
            n += tmp
            for g, x in enumerate(cols):
                x = math.sqrt(2 / n) * x
                if g < len(hs):
                    hs[g] *= scale
                    hs[g] += x.matmul(x.t())
                else:
                    hs.append(x.matmul(x.t()))
            state[name] = (hs, n)
        return hook

    reference.run_with_input_hooks(model, calib, batch, record)
    return {name: hs for name, (hs, _) in state.items()}


@torch.no_grad()
def float32_wanda(model: nn.Module, calib: torch.Tensor, batch: int) -> dict:
    """locuslab/wanda's WrappedGPT.add_batch (scaler_row, float32), on each layer's
    unfolded input columns."""
    state: dict[str, tuple[torch.Tensor, int]] = {}

    def record(name: str):
        def hook(module, args):
            x = args[0].float()
            if isinstance(module, nn.Linear):
                cols = x.t()
            else:
                cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                                stride=module.stride).permute(1, 0, 2).flatten(1)
            tmp = x.shape[0]
            row, n = state.get(name, (torch.zeros(cols.shape[0]), 0))
            row *= n / (n + tmp)
            n += tmp
            row += torch.norm(cols, p=2, dim=1) ** 2 / n
            state[name] = (row, n)
        return hook

    reference.run_with_input_hooks(model, calib, batch, record)
    return {name: row for name, (row, _) in state.items()}


@torch.no_grad()
def sparsegpt_prune(model: nn.Module, hessians: dict, sparsity: float, nm, exclude: list[str], dtype) -> None:
    for name, module in prunable(model, exclude):
        w = module.weight.detach().flatten(1)
        out, row = w.shape
        if nm is not None and row % nm[1]:
            continue
        hs = hessians[name]
        per = out // len(hs)
        prunen, prunem = (nm[1] - nm[0], nm[1]) if nm is not None else (0, 0)
        parts = [fasterprune(w[g * per:(g + 1) * per], h, sparsity, prunen, prunem, dtype=dtype)
                 for g, h in enumerate(hs)]
        module.weight.copy_(torch.cat(parts).reshape(module.weight.shape).to(module.weight.dtype))


def torch_run(args, way: str, method: str, calib: torch.Tensor, nm) -> tuple[float, float]:
    model, _ = reference.load_model(args.weights, args.stem)
    started = time.perf_counter()
    if method == "magnitude":
        statistics = time.perf_counter() - started
        started = time.perf_counter()
        if nm is not None:
            reference.prune_nm(model, nm[0], nm[1], args.exclude)
        else:
            reference.prune_model(model, args.sparsity, "layer", args.exclude)
    elif method == "wanda":
        if way == "reference":
            sums = reference.wanda_sums(model, calib, args.batch)
        else:
            sums = float32_wanda(model, calib, args.batch)
        statistics = time.perf_counter() - started
        started = time.perf_counter()
        reference.prune_wanda(model, sums, args.sparsity, nm, args.exclude)
    else:
        if way == "reference":
            hessians = reference.sparsegpt_hessians(model, calib, args.batch)
            dtype = torch.float64
        else:
            hessians = float32_hessians(model, calib, args.batch)
            dtype = torch.float32
        statistics = time.perf_counter() - started
        started = time.perf_counter()
        sparsegpt_prune(model, hessians, args.sparsity, nm, args.exclude, dtype)
    return statistics, time.perf_counter() - started


def reflow_run(args, method: str, images: str) -> tuple[float, float]:
    binary = ROOT / "target" / "release" / "examples" / "bench_pruners"
    amount = args.pattern if args.pattern else str(args.sparsity)
    cmd = [str(binary), args.weights, images, method, amount, str(args.count), str(args.batch)]
    for e in args.exclude:
        cmd += ["--exclude", e]
    env = {**os.environ, "RAYON_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bench_pruners failed: {out.stderr.strip() or out.stdout.strip()}")
    line = out.stdout.strip().splitlines()[-1]
    found = re.search(r"statistics ([0-9.]+) s, prune ([0-9.]+) s", line)
    if not found:
        sys.exit(f"bench_pruners printed {line!r}")
    print(f"  {line}")
    return float(found.group(1)), float(found.group(2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--stem", default=None, help="cifar or imagenet (default: from the image size)")
    ap.add_argument("--mean", default="0.2860", help="IDX images only")
    ap.add_argument("--std", default="0.3530", help="IDX images only")
    ap.add_argument("--count", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--methods", default="sparsegpt")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--pattern", default=None, help="N:M instead of --sparsity, e.g. 2:4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--exclude", action="append", default=[])
    ap.add_argument("--skip", action="append", default=[], help="reflow, reference or float32: not timed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    nm = tuple(int(v) for v in args.pattern.split(":")) if args.pattern else None

    with tempfile.TemporaryDirectory() as tmp:
        if args.images.endswith(".npy"):
            images = args.images
            calib = torch.from_numpy(np.load(images)[: args.count].copy())
        else:
            calib = reference.load_images(args.images, reference.float_list(args.mean),
                                          reference.float_list(args.std))[: args.count]
            images = str(Path(tmp) / "calib.npy")
            np.save(images, calib.numpy().astype(np.float32))
        if len(calib) < args.count:
            sys.exit(f"{args.images} holds {len(calib)} images, fewer than --count {args.count}")
        if args.stem is None:
            args.stem = "cifar" if calib.shape[-1] <= 64 else "imagenet"
        print(f"{Path(args.weights).name}: {args.count} images {list(calib.shape[1:])}, batch {args.batch}, "
              f"{args.threads} threads, {args.pattern or args.sparsity}, exclude {args.exclude or 'nothing'}")
        for method in args.methods.split(","):
            ours = (math.nan, math.nan) if "reflow" in args.skip else reflow_run(args, method, images)
            print(f"  reflow   {method:9} statistics {ours[0]:8.2f} s  prune {ours[1]:8.2f} s  total {sum(ours):8.2f} s")
            for way in ("reference", "float32"):
                if way in args.skip or (method == "magnitude" and way == "float32"):
                    continue
                theirs = torch_run(args, way, method, calib, nm)
                print(f"  PyTorch {way:9} {method:9} statistics {theirs[0]:8.2f} s  prune {theirs[1]:8.2f} s  "
                      f"total {sum(theirs):8.2f} s  reflow is {sum(theirs) / sum(ours):.2f}x as fast")


if __name__ == "__main__":
    main()
