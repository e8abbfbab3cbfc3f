"""Time PyTorch and reflow on the same forward passes, side by side.

For each thread count (1 and 2 by default) this runs reflow's `bench` example and
PyTorch on the same model shapes and inputs (random weights; the time of a forward
pass does not depend on them), with a warm-up and the median of --runs timed runs. It
repeats that for --rounds rounds, each timing reflow then PyTorch, because this
machine's speed drifts by ±10 % over minutes, and prints the medians over the rounds
of images/s for both, the ratio reflow/PyTorch (with its range over the rounds), and
reflow's GFLOP/s as a percentage of this machine's peak, which the bench example
measures with a multiply-add loop on as many threads at the kernel level in use.

It first prints the processor's model, the kernel level reflow chose and PyTorch's
CPU capability.

--level caps both sides at an instruction set, to estimate a machine that has no
wider one: reflow through REFLOW_KERNEL, PyTorch through ATEN_CPU_CAPABILITY and
ONEDNN_MAX_CPU_ISA (set before torch is imported). `--level avx2` on an AVX-512
machine runs both as an AVX2 + FMA machine would, at this machine's clock and caches.

Usage, from the repository root:
    cargo build --release --example bench
    /root/venvs/ref/bin/python scripts/bench_torch.py [--threads 1,2] [--runs 5] [--rounds 3] [--level avx2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# PyTorch reads its caps when it loads: --level is applied before the import.
LEVELS = {
    # reflow level -> (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA)
    "avx512": ("avx512", "AVX512_CORE"),
    "avx2": ("avx2", "AVX2"),
    "portable": ("default", "SSE41"),
}
if "--level" in sys.argv:
    _level = sys.argv[sys.argv.index("--level") + 1]
    if _level not in LEVELS:
        sys.exit(f"--level: one of {', '.join(LEVELS)}")
    os.environ["REFLOW_KERNEL"] = _level
    os.environ["ATEN_CPU_CAPABILITY"], os.environ["ONEDNN_MAX_CPU_ISA"] = LEVELS[_level]

import torch  # noqa: E402
import torchvision  # noqa: E402

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from patterns import channel_prune  # noqa: E402
from peers import cpu_model  # noqa: E402
from torch_resnet import build_from_shapes, build_resnet  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def channel_pruned_resnet50(s: float) -> torch.nn.Module:
    """torchvision's ResNet-50 with the fraction s of every bottleneck's conv1 and conv2
    channels removed (patterns.channel_prune), built from the compact shapes."""
    sd, _, _ = channel_prune(torchvision.models.resnet50().state_dict(), s)
    model = build_from_shapes(sd, "imagenet")
    model.load_state_dict(sd, strict=True)
    return model


# name (as printed by examples/bench.rs) -> (model factory, input shape)
CASES = {
    "resnet50@224 b8": (lambda: torchvision.models.resnet50(), (8, 3, 224, 224)),
    "resnet50 channel 0.3@224 b8": (lambda: channel_pruned_resnet50(0.3), (8, 3, 224, 224)),
    "resnet50 channel 0.5@224 b8": (lambda: channel_pruned_resnet50(0.5), (8, 3, 224, 224)),
    "resnet20@28 b256": (
        lambda: build_resnet("basic", [3, 3, 3], [16, 32, 64], 16, "cifar", 1, 10),
        (256, 1, 28, 28),
    ),
    "mobilenet_v2@224 b8": (lambda: torchvision.models.mobilenet_v2(), (8, 3, 224, 224)),
    "efficientnet_b0@224 b8": (lambda: torchvision.models.efficientnet_b0(), (8, 3, 224, 224)),
    "regnet_x_400mf@224 b8": (lambda: torchvision.models.regnet_x_400mf(), (8, 3, 224, 224)),
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


def time_reflow(threads: int, runs: int, only: str | None = None) -> tuple[dict[str, tuple[float, float]], dict[str, str]]:
    """images/s and GFLOP/s per case, and the kernel level and measured peak, from the
    bench example's TSV output."""
    exe = ROOT / "target" / "release" / "examples" / "bench"
    if not exe.exists():
        sys.exit(f"{exe} not found: run `cargo build --release --example bench` first")
    out = subprocess.run(
        [str(exe), "--threads", str(threads), "--runs", str(runs), "--tsv"]
        + (["--model", only] if only else []),
        check=True, capture_output=True, text=True,
    ).stdout
    result, info = {}, {}
    for line in out.splitlines():
        name, _, a, b = line.split("\t")
        if name in ("level", "peak"):
            info[name], info[name + " of"] = a, b
        else:
            result[name] = (float(a), float(b))
    return result, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per case and round (median)")
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="rounds, each timing reflow then PyTorch, so that both see the same machine state",
    )
    parser.add_argument(
        "--level", choices=sorted(LEVELS),
        help="cap reflow and PyTorch at this instruction set (applied before torch loads)",
    )
    parser.add_argument("--only", help="time only the cases whose name starts with this (e.g. mobilenet_v2)")
    args = parser.parse_args()
    if args.only:
        for name in [n for n in CASES if not n.startswith(args.only)]:
            del CASES[name]
        if not CASES:
            sys.exit(f"--only {args.only}: no such case")

    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs")
    print(
        f"torch {torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()}"
        f"{', oneDNN capped at ' + os.environ['ONEDNN_MAX_CPU_ISA'] if args.level else ''}); "
        f"per round the median of {args.runs} runs after warm-up; median of {args.rounds} "
        "rounds (ratio range over the rounds)"
    )
    levels_seen = set()
    header = (
        f"{'case':<28} {'threads':>7} {'PyTorch img/s':>14} {'reflow img/s':>13} {'ratio':>6} "
        f"{'(range)':>11} {'reflow GFLOP/s':>15} {'peak':>6} {'% of peak':>9}"
    )
    print(header)
    print("-" * len(header))
    for threads in [int(t) for t in args.threads.split(",")]:
        ours: dict[str, list[tuple[float, float]]] = {name: [] for name in CASES}
        theirs: dict[str, list[float]] = {name: [] for name in CASES}
        peaks = []
        for _ in range(args.rounds):
            results, info = time_reflow(threads, args.runs, args.only)
            for name, result in results.items():
                ours[name].append(result)
            peaks.append(float(info["peak"]))
            levels_seen.add((info["level"], info["peak of"]))
            for name in CASES:
                theirs[name].append(time_torch(name, threads, args.runs))
        for name in CASES:
            ips = statistics.median(r[0] for r in ours[name])
            gflops = statistics.median(r[1] for r in ours[name])
            torch_ips = statistics.median(theirs[name])
            ratios = [r[0] / t for r, t in zip(ours[name], theirs[name])]
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
            peak = statistics.median(peaks)
            print(
                f"{name:<28} {threads:>7} {torch_ips:>14.1f} {ips:>13.1f} {ips / torch_ips:>6.2f} "
                f"{spread:>11} {gflops:>15.1f} {peak:>6.0f} {100 * gflops / peak:>8.1f}%"
            )

    for level, peak_of in sorted(levels_seen):
        print(
            f"reflow kernel level: {level}; peak: {peak_of} multiply-adds on as many threads "
            "(median over the rounds)"
        )


if __name__ == "__main__":
    main()
