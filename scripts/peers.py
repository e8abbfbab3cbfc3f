"""What the side-by-side timing scripts share: the processor's name, a median timer,
and ONNX Runtime and OpenVINO set up as a new user would (bench_peers.py,
bench_layers.py)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path


def cpu_model() -> str:
    """The processor's model name, as the kernel reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown processor"


def median_seconds(run, runs: int) -> float:
    """The median time of `runs` calls of `run`, after two warm-up calls."""
    run()
    run()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ort_runner(path: Path, x, threads: int):
    """A call that runs the ONNX model at `path` on `x` in ONNX Runtime: CPU provider,
    `threads` intra-op threads, sequential, every graph optimisation."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


def openvino_runner(path: Path, x, threads: int):
    """A call that runs the ONNX model at `path` on `x` in OpenVINO's CPU plugin:
    `threads` inference threads, the latency hint, f32."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    })
    request = compiled.create_infer_request()
    return lambda: request.infer({0: x})
