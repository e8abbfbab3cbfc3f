"""Time single layers in ONNX Runtime, OpenVINO and reflow's engine candidates, side by side.

The layers are those that decide the engine's activation layout (docs/engine.md): the
1x1 convolutions of MobileNetV2 and ResNet-50 on 7x7, 14x14 and 56x56 maps, the
depthwise 3x3 and 5x5 convolutions at strides 1 and 2, and ResNet-50's 3x3
convolutions. Each is a PyTorch `Conv2d` (with bias, as a batch norm folds into one)
followed by ReLU, exported to ONNX (opset 17) and run by ONNX Runtime (sequential,
every graph optimisation: it fuses the ReLU and reorders to its blocked NCHWc layout
inside) and OpenVINO (latency hint, f32); reflow's side is `examples/bench_layouts`
(today's NCHW engine, and the channel-blocked candidate kernels with and without the
reorders a lone layer would need, and for 1x1 layers the sparse blocked kernel with 80 %
and 90 % of the weights zeroed by magnitude). Per round each side is timed in turn (median of
--runs); the table gives medians over the rounds, in milliseconds per batch.

The peers' times include copying the input in and the output out of their runtime
(ONNX Runtime's and OpenVINO's own reorders to and from their blocked layouts too),
like reflow's NCHW column; the blocked column assumes its input is already blocked.

Usage, from the repository root:
    cargo build --release --example bench_layouts
    ~/venvs/ref/bin/python scripts/bench_layers.py [--batches 1,8] [--threads 1,2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import cpu_model, median_seconds, openvino_runner, ort_runner  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
warnings.filterwarnings("ignore", category=DeprecationWarning)


def reflow(batch: int, threads: int, runs: int) -> dict[str, tuple[float, float, float, float]]:
    """Per layer: GFLOP, NCHW ms, blocked ms, reorder ms, sparse ms at 80 % and 90 %."""
    exe = ROOT / "target" / "release" / "examples" / "bench_layouts"
    if not exe.exists():
        sys.exit(f"{exe} not found: run `cargo build --release --example bench_layouts` first")
    out = subprocess.run(
        [str(exe), "--threads", str(threads), "--batch", str(batch), "--runs", str(runs), "--tsv"],
        check=True, capture_output=True, text=True,
    ).stdout
    rows = {}
    for line in out.splitlines():
        name, _, _, *numbers = line.split("\t")
        rows[name] = tuple(float(v) for v in numbers)
    return rows


def parse(name: str) -> tuple[int, int, int, int, int, int]:
    """(in, out, size, kernel, stride, groups) from the bench's layer name."""
    kind, *rest = name.split()
    size = int(rest[-1].lstrip("@"))
    if kind == "pw":
        c, o = map(int, rest[1].split("-"))
        return c, o, size, 1, 1, 1
    if kind.startswith("dw"):
        k, s, c = int(kind[2:]), int(rest[0][1:]), int(rest[1])
        return c, c, size, k, s, c
    c = int(rest[1])
    return c, c, size, 3, 1, 1


def export(name: str, batch: int, folder: Path) -> Path:
    path = folder / (name.replace(" ", "_").replace("@", "") + f"_b{batch}.onnx")
    if path.exists():
        return path
    c, o, size, k, s, g = parse(name)
    model = torch.nn.Sequential(torch.nn.Conv2d(c, o, k, s, k // 2, groups=g, bias=True), torch.nn.ReLU()).eval()
    folder.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(model, (torch.randn(batch, c, size, size),), str(path), opset_version=17,
                          input_names=["input"], output_names=["y"], dynamo=False)
    return path


def peers(path: Path, x: np.ndarray, threads: int, runs: int) -> tuple[float, float]:
    """ONNX Runtime's and OpenVINO's median ms on `x`."""
    return tuple(1e3 * median_seconds(runner(path, x, threads), runs) for runner in (ort_runner, openvino_runner))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--onnx-dir", default="/tmp/reflow-layers")
    args = parser.parse_args()
    import onnxruntime as ort
    import openvino as ov

    cpu = cpu_model()
    print(f"CPU: {cpu}; onnxruntime {ort.__version__}, openvino {ov.__version__}; ms per batch, "
          f"median of {args.runs} runs, median of {args.rounds} alternated rounds")
    header = (f"{'layer':<22} {'b':>2} {'t':>2} {'GFLOP':>6} {'ORT':>8} {'OV':>8} {'NCHW':>8} {'blocked':>8} "
              f"{'+reord':>8} {'best/NCHW':>9} {'best/blk':>8} {'sp80':>7} {'sp90':>7} {'blk/sp80':>8} {'blk/sp90':>8}")
    print(header)
    print("-" * len(header))
    folder = Path(args.onnx_dir)
    for threads in map(int, args.threads.split(",")):
        for batch in map(int, args.batches.split(",")):
            ours: dict[str, list] = {}
            theirs: dict[str, list] = {}
            for _ in range(args.rounds):
                for name, row in reflow(batch, threads, args.runs).items():
                    ours.setdefault(name, []).append(row)
                    c, _, size, *_ = parse(name)
                    x = np.random.default_rng(0).standard_normal((batch, c, size, size), dtype=np.float32)
                    theirs.setdefault(name, []).append(peers(export(name, batch, folder), x, threads, args.runs))
            for name in ours:
                gflop = ours[name][0][0]
                nchw, blk, reorder, sp80, sp90 = (statistics.median(r[i] for r in ours[name]) for i in (1, 2, 3, 4, 5))
                t_ort, t_ov = (statistics.median(r[i] for r in theirs[name]) for i in (0, 1))
                best = min(t_ort, t_ov)
                print(f"{name:<22} {batch:>2} {threads:>2} {gflop:>6.3f} {t_ort:>8.3f} {t_ov:>8.3f} {nchw:>8.3f} "
                      f"{blk:>8.3f} {blk + reorder:>8.3f} {best / nchw:>9.2f} {best / blk:>8.2f} {sp80:>7.3f} {sp90:>7.3f} "
                      f"{blk / sp80:>8.2f} {blk / sp90:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
