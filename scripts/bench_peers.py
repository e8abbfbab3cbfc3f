"""Time reflow next to the runtimes people deploy CNNs with: ONNX Runtime and OpenVINO.

Each torchvision model (random weights: a forward pass costs the same whatever they
are) is exported once with `torch.onnx.export` (opset 17) at each batch size and run
as a new user would run it:

- ONNX Runtime: CPU execution provider, `intra_op_num_threads` = T, sequential
  execution, every graph optimisation (`ORT_ENABLE_ALL`);
- OpenVINO: the CPU plugin, `INFERENCE_NUM_THREADS` = T, the latency hint, f32
  inference precision;
- reflow: the `bench` example (`--threads T --batch B`), the model built from reflow's
  preset of the same architecture.

Per round and case, each side is warmed up and timed --runs times (median); the rounds
alternate the three sides so that all see the same machine state. It prints the
processor, reflow's kernel level and the machine's multiply-add peak as the bench
example measures it, then per case the median images/s of each side over the rounds
and reflow's ratio to each peer and to the faster of the two (with its range over the
rounds).

Usage, from the repository root (the venv of scripts/README.md, with onnx,
onnxruntime and openvino installed from the package registry):
    cargo build --release --example bench
    ~/venvs/ref/bin/python scripts/bench_peers.py [--models resnet50,mobilenet_v2]
        [--batches 1,8] [--threads 1,2] [--runs 5] [--rounds 3] [--level avx2]

--level caps reflow's kernels (REFLOW_KERNEL); the peers run at their own widest
level (ONNX Runtime has no such cap; OpenVINO's would need a different build).
"""

from __future__ import annotations

import argparse
import warnings
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import cpu_model, median_seconds, openvino_runner, ort_runner  # noqa: E402
from torch_resnet import build_resnet  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# The TorchScript exporter is what `dynamo=False` asks for: it says it is legacy.
warnings.filterwarnings("ignore", category=DeprecationWarning)

# name -> (torch model factory, input [C, H, W], the bench example's --model prefix)
MODELS = {
    "resnet50": (lambda: torchvision.models.resnet50(), (3, 224, 224), "resnet50@"),
    "regnet_x_400mf": (lambda: torchvision.models.regnet_x_400mf(), (3, 224, 224), "regnet_x_400mf@"),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(), (3, 224, 224), "mobilenet_v2@"),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(), (3, 224, 224), "efficientnet_b0@"),
    "resnet20": (
        lambda: build_resnet("basic", [3, 3, 3], [16, 32, 64], 16, "cifar", 1, 10),
        (1, 28, 28),
        "resnet20@",
    ),
}


def export(name: str, batch: int, folder: Path) -> Path:
    """The model exported to ONNX at this batch size (made once, kept in `folder`)."""
    path = folder / f"{name}_b{batch}.onnx"
    if path.exists():
        return path
    factory, chw, _ = MODELS[name]
    model = factory().eval()
    x = torch.randn(batch, *chw)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with torch.inference_mode():
        torch.onnx.export(model, (x,), str(tmp), opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamo=False)
    tmp.rename(path)
    return path


def time_ort(path: Path, x: np.ndarray, threads: int, runs: int) -> float:
    return x.shape[0] / median_seconds(ort_runner(path, x, threads), runs)


def time_openvino(path: Path, x: np.ndarray, threads: int, runs: int) -> float:
    return x.shape[0] / median_seconds(openvino_runner(path, x, threads), runs)


def time_reflow(name: str, batch: int, threads: int, runs: int) -> tuple[float, str, float]:
    """images/s, the kernel level and the peak (GFLOP/s on `threads` threads)."""
    exe = ROOT / "target" / "release" / "examples" / "bench"
    if not exe.exists():
        sys.exit(f"{exe} not found: run `cargo build --release --example bench` first")
    out = subprocess.run(
        [str(exe), "--threads", str(threads), "--runs", str(runs), "--batch", str(batch),
         "--model", MODELS[name][2], "--tsv"],
        check=True, capture_output=True, text=True,
    ).stdout
    ips, level, peak = None, "?", float("nan")
    for line in out.splitlines():
        fields = line.split("\t")
        if fields[0] == "level":
            level = fields[2]
        elif fields[0] == "peak":
            peak = float(fields[2])
        else:
            ips = float(fields[2])
    if ips is None:
        sys.exit(f"the bench example printed no case for {name}:\n{out}")
    return ips, level, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, of: " + ", ".join(MODELS))
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per side, case and round (median)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--level", help="cap reflow's kernels (REFLOW_KERNEL)")
    parser.add_argument("--onnx-dir", default="/tmp/reflow-peers", help="where the exported models are kept")
    args = parser.parse_args()
    models = args.models.split(",")
    for m in models:
        if m not in MODELS:
            sys.exit(f"--models: no model {m!r} (one of {', '.join(MODELS)})")
    if args.level:
        os.environ["REFLOW_KERNEL"] = args.level
    import onnxruntime as ort
    import openvino as ov

    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, openvino {ov.__version__}; "
          f"median of {args.runs} runs per side after 2 warm-ups; median of {args.rounds} alternated rounds")
    folder = Path(args.onnx_dir)
    header = (f"{'model':<16} {'batch':>5} {'thr':>3} {'ORT img/s':>10} {'OV img/s':>9} {'reflow':>8} "
              f"{'÷ORT':>5} {'÷OV':>5} {'÷best':>6} {'(range)':>11}")
    print(header)
    print("-" * len(header))
    peaks: dict[int, list[float]] = {}
    levels = set()
    for threads in [int(t) for t in args.threads.split(",")]:
        for batch in [int(b) for b in args.batches.split(",")]:
            for name in models:
                path = export(name, batch, folder)
                chw = MODELS[name][1]
                x = np.random.default_rng(0).standard_normal((batch, *chw), dtype=np.float32)
                ours, ort_ips, ov_ips = [], [], []
                for _ in range(args.rounds):
                    ips, level, peak = time_reflow(name, batch, threads, args.runs)
                    peaks.setdefault(threads, []).append(peak)
                    levels.add(level)
                    ours.append(ips)
                    ort_ips.append(time_ort(path, x, threads, args.runs))
                    ov_ips.append(time_openvino(path, x, threads, args.runs))
                best = [max(a, b) for a, b in zip(ort_ips, ov_ips)]
                ratios = [r / b for r, b in zip(ours, best)]
                r, o, v = (statistics.median(s) for s in (ours, ort_ips, ov_ips))
                print(f"{name:<16} {batch:>5} {threads:>3} {o:>10.1f} {v:>9.1f} {r:>8.1f} "
                      f"{r / o:>5.2f} {r / v:>5.2f} {statistics.median(ratios):>6.2f} "
                      f"{min(ratios):.2f}-{max(ratios):.2f}", flush=True)
    print(f"reflow's kernel level: {', '.join(sorted(levels))}")
    for threads, p in sorted(peaks.items()):
        print(f"multiply-add peak on {threads} thread(s), as the bench example measures it: median "
              f"{statistics.median(p):.0f} GFLOP/s ({min(p):.0f}-{max(p):.0f} over the runs)")


if __name__ == "__main__":
    main()
