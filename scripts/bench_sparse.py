"""Pruned networks on reflow's sparse kernels against the same networks dense, side by
side in one run (issue 19's targets; docs/performance.md, "Sparse execution").

For each checkpoint (pruned by `reflow prune`, e.g. from make_bench_checkpoints.py),
batch size and thread count, it runs `reflow bench` on the checkpoint as stored (each
pruned convolution on the faster of its kernels, measured at the first pass) and with
`--dense`, alternating over --rounds, and PyTorch's eval pass on the same weights
(torchvision's architecture, `torch.set_num_threads(T)`, no_grad). It prints the
processor, then per case the median images/s of each over the rounds, the speedup of
sparse over reflow dense (with its range over the rounds), the ratio to PyTorch, and
how many convolutions ran sparse.

Usage, from the repository root (the venv of scripts/README.md):
    cargo build --release --features cli
    ~/venvs/ref/bin/python scripts/bench_sparse.py DIR/resnet50.safetensors \
        DIR/resnet50/s0.8.safetensors ... [--batches 1,8] [--threads 1,2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file

from peers import cpu_model, median_seconds

REFLOW = Path(__file__).resolve().parent.parent / "target" / "release" / "reflow"


def reflow_bench(path: Path, arch: str, batch: int, threads: int, dense: bool, runs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [str(REFLOW), "bench", str(path), "--input", "3x224x224",
               "--batch", str(batch), "--threads", str(threads), "--runs", str(runs),
               "--json", str(out)]
        if dense:
            cmd.append("--dense")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def torch_images_per_second(path: Path, arch: str, batch: int, threads: int, runs: int) -> float:
    torch.set_num_threads(threads)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    model.load_state_dict(load_file(str(path)))
    x = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        return batch / median_seconds(lambda: model(x), runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{cpu_model()}; reflow at {REFLOW}; torch {torch.__version__}")
    print(f"{'checkpoint':<34} {'b':>2} {'t':>2} {'dense/s':>8} {'stored/s':>8} "
          f"{'speedup':>8} {'range':>11} {'torch/s':>8} {'÷torch':>7} {'sparse':>6}")
    for path in args.checkpoints:
        for batch in map(int, args.batches.split(",")):
            for threads in map(int, args.threads.split(",")):
                dense, stored, speedups, torch_ips = [], [], [], []
                sparse_layers = 0
                for _ in range(args.rounds):
                    d = reflow_bench(path, args.arch, batch, threads, True, args.runs)
                    s = reflow_bench(path, args.arch, batch, threads, False, args.runs)
                    t = torch_images_per_second(path, args.arch, batch, threads, args.runs)
                    dense.append(d["images_per_second"])
                    stored.append(s["images_per_second"])
                    speedups.append(stored[-1] / dense[-1])
                    torch_ips.append(t)
                    sparse_layers = sum(1 for l in s["layers"] if l["path"] == "sparse")
                name = f"{path.parent.name}/{path.name}"[-34:]
                d, s, t = (statistics.median(v) for v in (dense, stored, torch_ips))
                print(f"{name:<34} {batch:>2} {threads:>2} {d:>8.2f} {s:>8.2f} "
                      f"{s / d:>7.2f}x {min(speedups):>5.2f}-{max(speedups):<5.2f} "
                      f"{t:>8.2f} {s / t:>6.2f}x {sparse_layers:>6}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
