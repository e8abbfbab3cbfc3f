"""Where reflow's time goes next to ONNX Runtime's, layer by layer.

`bench_peers.py` says how far reflow is from ONNX Runtime on a whole network; this
script says where. The model is exported as `bench_peers.py` exports it (opset 17,
random weights) and run by ONNX Runtime with its profiler on (`enable_profiling`: the
time of every node of the optimised graph, after the NCHWc rewrite and the fusions),
and by reflow's `bench` example with `--profile` (the time of every convolution and
linear layer). The nodes are matched to reflow's layers by torchvision's module names
(ONNX Runtime's node `/layer1/layer1.0/conv1/Conv` is reflow's `layer1.0.conv1`), each
layer classed by its weight's shape (1x1, depthwise, grouped kxk, dense kxk, linear).

It prints, per class, both sides' milliseconds per batch and reflow's time over ONNX
Runtime's (above 1: reflow is slower), then the layers where reflow loses the most
time, then what is left outside the matched layers on each side (reorders, pooling,
element-wise passes, the rest of reflow's pass). Both sides run in turn, --rounds
times, medians kept; nothing else should run on the machine.

Usage, from the repository root (the venv of scripts/README.md):
    cargo build --release --example bench
    ~/venvs/ref/bin/python scripts/profile_peers.py --model regnet_x_400mf
        [--batch 8] [--threads 1] [--runs 10] [--rounds 3] [--top 12]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peers import MODELS, ROOT, export  # noqa: E402
from peers import cpu_model  # noqa: E402


def module_name(node: str) -> str:
    """torchvision's module name of the convolution an ONNX Runtime node runs. The
    exporter names a node by its modules' scopes, each extending the one before
    (`/features/features.1/conv/conv.0/conv.0.0/Conv`: `features.1.conv.0.0`); after
    the NCHWc rewrite a node is named by its output, and a convolution fused with the
    activation after it by the activation's (`/trunk_output/block1/block1-0/f/a/a.2/
    Relu_output_0_nchwc`: the convolution `f.a.0` of the sequence `f.a`)."""
    name = node
    for suffix in ("_nchwc", "_output_0"):
        name = name.removesuffix(suffix)
    *scopes, op = [p for p in name.split("/") if p] or [""]
    path: list[str] = []
    for scope in scopes:
        if path and scope.startswith(path[-1] + "."):
            path[-1] = scope
        else:
            path.append(scope)
    if op not in ("Conv", "Gemm", "MatMul") and path and "." in path[-1]:
        head, _, index = path[-1].rpartition(".")
        if index.isdigit():
            path[-1] = head + ".0"
    return ".".join(path)


def kind(weight: list[int], in_channels: int) -> str:
    """The class of a convolution or linear layer by its weight's shape."""
    if len(weight) == 2:
        return "linear"
    out, per_group, kh, kw = weight
    if (kh, kw) == (1, 1):
        return "1x1" if per_group == in_channels else "1x1 grouped"
    if per_group == 1 and out == in_channels:
        return f"depthwise {kh}x{kw}"
    if per_group < in_channels:
        return f"grouped {kh}x{kw}"
    return f"{kh}x{kw}"


def ort_profile(path: Path, x: np.ndarray, threads: int, runs: int):
    """Per node of ONNX Runtime's optimised graph: (ms per run, op, weight shape,
    input channels), and the median wall time of a run in ms."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.gettempdir(), "reflow_ort_profile")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    for _ in range(3):
        session.run(None, feed)
    walls = []
    import time

    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feed)
        walls.append((time.perf_counter() - t) * 1e3)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    # Only the timed runs: the last `runs` runs' node events (each run's events follow
    # its model_run event; the warm-up runs come first).
    runs_seen = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first_timed = runs_seen[-runs]["ts"] if len(runs_seen) >= runs else 0
    nodes: dict[str, list] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        if e["ts"] < first_timed:
            continue
        name = e["name"][: -len("_kernel_time")]
        args = e.get("args", {})
        shapes = [list(s.values())[0] for s in args.get("input_type_shape", [])]
        entry = nodes.setdefault(name, [0.0, args.get("op_name", "?"), shapes])
        entry[0] += e["dur"] / 1e3 / runs
    return nodes, statistics.median(walls)


def reflow_profile(prefix: str, batch: int, threads: int, runs: int):
    """Per convolution and linear layer of reflow's pass: (ms per pass, kernel); and
    the median pass in ms."""
    exe = ROOT / "target" / "release" / "examples" / "bench"
    if not exe.exists():
        sys.exit(f"{exe} not found: run `cargo build --release --example bench` first")
    out = subprocess.run(
        [str(exe), "--threads", str(threads), "--runs", str(runs), "--batch", str(batch),
         "--model", prefix, "--profile"],
        check=True, capture_output=True, text=True,
    ).stdout
    layers, pass_ms = {}, float("nan")
    for line in out.splitlines():
        fields = line.split()
        if line.startswith("  convolutions and linear layers"):
            pass_ms = float(fields[-4])
        elif line.startswith("  ") and len(fields) == 6 and fields[3] == "ms":
            layers[fields[0]] = (float(fields[2]), fields[1])
    return layers, pass_ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="regnet_x_400mf", choices=sorted(MODELS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args()

    factory, chw, prefix = MODELS[a.model]
    path = export(a.model, a.batch, ROOT / "target" / "peers")
    x = np.random.default_rng(0).standard_normal((a.batch, *chw), dtype=np.float32)
    ort_rounds, reflow_rounds = [], []
    for _ in range(a.rounds):
        ort_rounds.append(ort_profile(path, x, a.threads, a.runs))
        reflow_rounds.append(reflow_profile(prefix, a.batch, a.threads, a.runs))

    def median_of(rounds, key, index):
        return statistics.median(r[0][key][index] for r in rounds if key in r[0])

    ort_nodes, reflow_layers = ort_rounds[0][0], reflow_rounds[0][0]
    ort_wall = statistics.median(r[1] for r in ort_rounds)
    reflow_pass = statistics.median(r[1] for r in reflow_rounds)
    print(f"{cpu_model()}; {a.model} batch {a.batch}, {a.threads} thread(s), "
          f"medians of {a.rounds} rounds of {a.runs} runs")
    print(f"whole pass: ONNX Runtime {ort_wall:.2f} ms, reflow {reflow_pass:.2f} ms "
          f"({reflow_pass / ort_wall:.2f}x)")

    by_kind = defaultdict(lambda: [0.0, 0.0, 0])
    matched_ort, rows = set(), []
    for node, (_, op, shapes) in ort_nodes.items():
        name = module_name(node)
        if name not in reflow_layers or len(shapes) < 2 or len(shapes[1]) not in (2, 4):
            continue
        matched_ort.add(node)
        ort_ms = median_of(ort_rounds, node, 0)
        ours = statistics.median(r[0][name][0] for r in reflow_rounds if name in r[0])
        in_channels = shapes[0][1] if len(shapes[0]) > 1 else 0
        k = kind(shapes[1], in_channels)
        by_kind[k][0] += ort_ms
        by_kind[k][1] += ours
        by_kind[k][2] += 1
        rows.append((ours - ort_ms, name, k, ort_ms, ours, reflow_layers[name][1], op))

    print(f"\n{'class':<16} {'layers':>6} {'ORT ms':>9} {'reflow ms':>10} {'ratio':>6}")
    for k, (o, r, n) in sorted(by_kind.items(), key=lambda kv: -kv[1][1]):
        print(f"{k:<16} {n:>6} {o:>9.3f} {r:>10.3f} {r / o:>6.2f}")
    total_o = sum(v[0] for v in by_kind.values())
    total_r = sum(v[1] for v in by_kind.values())
    print(f"{'matched':<16} {sum(v[2] for v in by_kind.values()):>6} {total_o:>9.3f} "
          f"{total_r:>10.3f} {total_r / total_o:>6.2f}")

    print(f"\nthe {a.top} layers where reflow loses the most time:")
    print(f"{'layer':<40} {'class':<14} {'ORT ms':>8} {'reflow':>8} {'ratio':>6}  reflow kernel / ORT op")
    for diff, name, k, o, r, kernel, op in sorted(rows, reverse=True)[: a.top]:
        print(f"{name:<40} {k:<14} {o:>8.3f} {r:>8.3f} {r / o:>6.2f}  {kernel} / {op}")

    rest = defaultdict(float)
    for node, (_, op, _) in ort_nodes.items():
        if node not in matched_ort:
            rest[op] += median_of(ort_rounds, node, 0)
    print("\noutside the matched layers:")
    print(f"  ONNX Runtime: {sum(rest.values()):.3f} ms of nodes ("
          + ", ".join(f"{op} {ms:.3f}" for op, ms in sorted(rest.items(), key=lambda kv: -kv[1]))
          + f"), {statistics.median(r[1] - sum(v[0] for v in r[0].values()) for r in ort_rounds):.3f} ms between nodes")
    unmatched = [n for n in reflow_layers if n not in {r[1] for r in rows}]
    print(f"  reflow: {reflow_pass - total_r:.3f} ms outside the matched layers"
          + (f" (unmatched layers: {', '.join(unmatched)})" if unmatched else ""))


if __name__ == "__main__":
    main()
