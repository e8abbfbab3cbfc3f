"""Time PyTorch and reflow on the same forward passes, side by side.

For each thread count (1 and 2 by default) this runs reflow's `bench` example and
PyTorch on the same model shapes and inputs (random weights; the time of a forward
pass does not depend on them), with a warm-up and the median of --runs timed runs. It
repeats that for --rounds rounds, each timing reflow then PyTorch, because this
machine's speed drifts by ±10 % over minutes, and prints the medians over the rounds
of images/s for both, the ratio reflow/PyTorch (with its range over the rounds), and
reflow's GFLOP/s as a percentage of the machine's peak (--peak, 346 GFLOP/s measured
on 2 cores here).

Usage, from the repository root:
    cargo build --release --example bench
    /root/venvs/ref/bin/python scripts/bench_torch.py [--threads 1,2] [--runs 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_resnet import build_resnet  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# name (as printed by examples/bench.rs) -> (model factory, input shape)
CASES = {
    "resnet50@224 b8": (lambda: torchvision.models.resnet50(), (8, 3, 224, 224)),
    "resnet20@28 b256": (
        lambda: build_resnet("basic", [3, 3, 3], [16, 32, 64], 16, "cifar", 1, 10),
        (256, 1, 28, 28),
    ),
}


def time_torch(name: str, threads: int, runs: int) -> float:
    """Median images/s of PyTorch's eval-mode forward pass."""
    torch.set_num_threads(threads)
    factory, shape = CASES[name]
    model = factory().eval()
    x = torch.randn(shape)
    with torch.inference_mode():
        model(x)  # warm-up
        model(x)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return shape[0] / statistics.median(times)


def time_reflow(threads: int, runs: int) -> dict[str, tuple[float, float]]:
    """images/s and GFLOP/s per case, from the bench example's TSV output."""
    exe = ROOT / "target" / "release" / "examples" / "bench"
    if not exe.exists():
        sys.exit(f"{exe} not found: run `cargo build --release --example bench` first")
    out = subprocess.run(
        [str(exe), "--threads", str(threads), "--runs", str(runs), "--tsv"],
        check=True, capture_output=True, text=True,
    ).stdout
    result = {}
    for line in out.splitlines():
        name, _, ips, gflops = line.split("\t")
        result[name] = (float(ips), float(gflops))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per case and round (median)")
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="rounds, each timing reflow then PyTorch, so that both see the same machine state",
    )
    parser.add_argument("--peak", type=float, default=346.0, help="machine peak GFLOP/s (2 cores)")
    args = parser.parse_args()

    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs; per round the median of {args.runs} "
        f"runs after warm-up; median of {args.rounds} rounds (ratio range over the rounds)"
    )
    header = (
        f"{'case':<18} {'threads':>7} {'PyTorch img/s':>14} {'reflow img/s':>13} {'ratio':>6} "
        f"{'(range)':>11} {'reflow GFLOP/s':>15} {'% of peak':>9}"
    )
    print(header)
    print("-" * len(header))
    for threads in [int(t) for t in args.threads.split(",")]:
        ours: dict[str, list[tuple[float, float]]] = {name: [] for name in CASES}
        theirs: dict[str, list[float]] = {name: [] for name in CASES}
        for _ in range(args.rounds):
            for name, result in time_reflow(threads, args.runs).items():
                ours[name].append(result)
            for name in CASES:
                theirs[name].append(time_torch(name, threads, args.runs))
        for name in CASES:
            ips = statistics.median(r[0] for r in ours[name])
            gflops = statistics.median(r[1] for r in ours[name])
            torch_ips = statistics.median(theirs[name])
            ratios = [r[0] / t for r, t in zip(ours[name], theirs[name])]
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
            peak = args.peak * threads / 2
            print(
                f"{name:<18} {threads:>7} {torch_ips:>14.1f} {ips:>13.1f} {ips / torch_ips:>6.2f} "
                f"{spread:>11} {gflops:>15.1f} {100 * gflops / peak:>8.1f}%"
            )


if __name__ == "__main__":
    main()
