"""REFLOW's wall time on regnet_x_32gf, PyTorch next to reflow, in the same run.

The protocol of issue "Beyond ResNet": 1,024 calibration images at 224 x 224 in batches
of 64, cumulative statistics (momentum=None), every BatchNorm2d in train mode and
everything else in eval mode, no gradients. Both sides run on synthetic images made
batch by batch (the time to make them is included on both sides, and is small).

    /root/venvs/ref/bin/python scripts/bench_reflow.py [--threads 1,2] [--count 1024] [--batch 64]

Needs `cargo build --release --example bench`. Run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_torch import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@torch.no_grad()
def torch_reflow(threads: int, count: int, batch: int) -> float:
    torch.set_num_threads(threads)
    model = torchvision.models.regnet_x_32gf().eval()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    t = time.perf_counter()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    gen = torch.Generator().manual_seed(0)
    for start in range(0, count, batch):
        n = min(batch, count - start)
        model(torch.rand((n, 3, 224, 224), generator=gen) * 2 - 1)
    return time.perf_counter() - t


def reflow_reflow(threads: int, count: int, batch: int) -> float:
    exe = ROOT / "target" / "release" / "examples" / "bench"
    out = subprocess.run(
        [str(exe), "--threads", str(threads), "--model", "reflow_regnet_x_32gf",
         "--calib-count", str(count), "--calib-batch", str(batch)],
        check=True, capture_output=True, text=True,
    ).stdout
    return float(out.strip().split("\t")[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--count", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; REFLOW (cumulative) on regnet_x_32gf, "
          f"{args.count} images at 224, batch {args.batch}")
    for threads in [int(t) for t in args.threads.split(",")]:
        ours = reflow_reflow(threads, args.count, args.batch)
        theirs = torch_reflow(threads, args.count, args.batch)
        print(f"threads {threads}: PyTorch {theirs:.1f} s, reflow {ours:.1f} s, "
              f"reflow {theirs / ours:.2f}x as fast", flush=True)


if __name__ == "__main__":
    main()
