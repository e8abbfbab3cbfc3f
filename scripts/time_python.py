"""Times the Python package's import plus one ResNet-18 prune against the same
through the `reflow` command, in alternated rounds: the medians and their ratio.

Both: torchvision's ResNet-18 with seeded random weights (check_python.randomised),
N normalised 224x224 images that are the calibration and the evaluation images (what
reflow.prune does), global magnitude 0.8, REFLOW (cumulative), batch 64.
    python: a fresh interpreter: import reflow; load_safetensors; reflow.prune(...)
    cli:    reflow prune --weights W --calib-npy C --test-npy C --sparsity 0.8
            --save-dir D ... (the pruned checkpoint written, as Python gets it back)

Needs torch, safetensors, numpy and the reflow wheel in this interpreter, and a
release build of the command (cargo build --release --features cli):
    python scripts/time_python.py --reflow target/release/reflow --rounds 5
"""
import argparse, resource, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_python import randomised  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--reflow", default="target/release/reflow")
ap.add_argument("--images", type=int, default=64)
ap.add_argument("--rounds", type=int, default=3)
args = ap.parse_args()
tmp = Path(tempfile.mkdtemp())
state = {k: v.contiguous() for k, v in randomised("resnet18").state_dict().items()}
save_file(state, tmp / "resnet18.safetensors")
torch.manual_seed(1)
np.save(tmp / "calib.npy", torch.randn(args.images, 3, 224, 224).numpy())
py = f"""
import numpy as np, reflow
state = reflow.load_safetensors({str(tmp / 'resnet18.safetensors')!r})
calib = np.load({str(tmp / 'calib.npy')!r})
reflow.prune(state, calib, 0.8, batch_size=64, progress=False)
"""
cli = [args.reflow, "prune", "--weights", str(tmp / "resnet18.safetensors"),
       "--calib-npy", str(tmp / "calib.npy"), "--test-npy", str(tmp / "calib.npy"),
       "--calib-count", str(args.images), "--calib-batch", "64", "--sparsity", "0.8",
       "--mean", "0,0,0", "--std", "1,1,1", "--json", str(tmp / "r.json")]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"CPU: {cpu}; {args.images} images, {args.rounds} rounds", flush=True)
times = {"python": [], "cli": []}
cpu_times = {"python": [], "cli": []}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


for round in range(args.rounds):
    # The command writes the pruned checkpoint, as the package gives it back.
    saved = ["--save-dir", str(tmp / f"pruned{round}")]
    for name, cmd in (("python", [sys.executable, "-c", py]), ("cli", cli + saved)):
        t, c = time.perf_counter(), children_cpu()
        subprocess.run(cmd, check=True, capture_output=True)
        times[name].append(time.perf_counter() - t)
        cpu_times[name].append(children_cpu() - c)
    print(
        f"round: python {times['python'][-1]:.2f} s ({cpu_times['python'][-1]:.1f} s CPU), "
        f"cli {times['cli'][-1]:.2f} s ({cpu_times['cli'][-1]:.1f} s CPU)",
        flush=True,
    )
m = {k: statistics.median(v) for k, v in times.items()}
c = {k: statistics.median(v) for k, v in cpu_times.items()}
paired = statistics.median(p / q for p, q in zip(times["python"], times["cli"]))
print(
    f"medians: python {m['python']:.2f} s, reflow prune {m['cli']:.2f} s: "
    f"python / cli = {m['python'] / m['cli']:.3f} (median of the rounds' ratios {paired:.3f}); "
    f"CPU time python / cli = {c['python'] / c['cli']:.3f}"
)
