"""Runs torchvision models through the Python package (`python/`) and checks what
PyTorch makes of the result.

For each model (random weights and batch-norm statistics, seeded; 1000 classes):
`reflow.prune(model.state_dict(), calibration, 0.8)` with torch tensors in, then

1. the returned state dict loads into the same torchvision model with `strict=True`
   (and holds torch tensors, as the input did);
2. its weights are PyTorch's own global L1 pruning at 0.8 (`torch.nn.utils.prune`, as
   `reference.py` runs it): the same zeros, the other weights unchanged;
3. its batch-norm statistics are PyTorch's REFLOW (momentum=None, train-mode batch
   norms over the calibration images in order, batches of 16) within 1e-4 relative;
4. the network's logits on other images equal the PyTorch reference's within 1e-4, or
   (where pruning has collapsed the signal and the logits hang on the smallest
   variances: MobileNetV2 here) are no farther from the reference computed in float64
   than 4x PyTorch's own float32 logits are.

Usage, from the repository root (the venv of scripts/README.md, plus maturin):
    ~/venvs/ref/bin/pip install maturin
    (cd python && ~/venvs/ref/bin/maturin build --release -o /tmp/wheels)
    ~/venvs/ref/bin/pip install --force-reinstall /tmp/wheels/reflow-*.whl
    ~/venvs/ref/bin/python scripts/check_python.py [--models resnet18,mobilenet_v2]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import bn_layers, logits_of, prune_model, reflow_running  # noqa: E402

import reflow  # noqa: E402

SPARSITY, BATCH, SIZE = 0.8, 16, 64


def randomised(name: str) -> torch.nn.Module:
    """The torchvision model `name` with seeded weights and batch-norm statistics (a
    fresh model's are mean 0, variance 1: REFLOW would change little), its linear
    layers' weights as large as the convolutions' (torchvision's MobileNets start them
    at a standard deviation of 0.01: global pruning would remove them all, and every
    logit would be the bias)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.kaiming_normal_(m.weight)
                m.bias.normal_(0, 0.1)
        for _, bn in bn_layers(model):
            bn.running_mean.normal_(0, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.1)
    return model.eval()


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def check(name: str) -> bool:
    model = randomised(name)
    generator = torch.Generator().manual_seed(1)
    calibration = torch.randn(48, 3, SIZE, SIZE, generator=generator)
    test = torch.randn(8, 3, SIZE, SIZE, generator=generator)

    reference = copy.deepcopy(model)
    prune_model(reference, SPARSITY, "global", [])
    with torch.no_grad():
        reflow_running(reference, calibration, BATCH, None)
    want_logits = logits_of(reference, test)
    exact = copy.deepcopy(model).double()
    prune_model(exact, SPARSITY, "global", [])
    with torch.no_grad():
        reflow_running(exact, calibration.double(), BATCH, None)
    exact_logits = logits_of(exact, test.double())
    torch_error = relative(want_logits.double(), exact_logits)

    started = time.perf_counter()
    state, report = reflow.prune(model.state_dict(), calibration, SPARSITY, batch_size=BATCH)
    secs = time.perf_counter() - started
    ok = True

    def fail(what: str) -> None:
        nonlocal ok
        ok = False
        print(f"  FAIL {name}: {what}")

    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        fail("the result does not hold torch tensors")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        fail(f"strict load: {str(e).splitlines()[0]}")
        return False
    want = reference.state_dict()
    worst_stat = 0.0
    for key, value in model.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            worst_stat = max(worst_stat, relative(value, want[key]))
        elif key.endswith("num_batches_tracked"):
            if int(value) != int(want[key]):
                fail(f"{key}: {int(value)} batches tracked, PyTorch {int(want[key])}")
        elif not torch.equal(value, want[key]):
            fail(f"{key}: not PyTorch's pruned tensor")
    if worst_stat > 1e-4:
        fail(f"batch-norm statistics {worst_stat:.1e} from PyTorch's REFLOW")
    got_logits = logits_of(model, test)
    if float(got_logits.std()) < 1e-3:
        fail("the logits are (nearly) constant: the check would say nothing")
    logits = relative(got_logits, want_logits)
    from_exact = relative(got_logits.double(), exact_logits)
    if logits > 1e-4 and from_exact > 4 * torch_error:
        fail(f"logits {logits:.1e} from PyTorch's, {from_exact:.1e} from float64's "
             f"(PyTorch's {torch_error:.1e})")
    run = report["runs"][0]
    print(f"{name}: strict load ok, weights equal, statistics within {worst_stat:.1e}, "
          f"logits within {logits:.1e} ({from_exact:.1e} from float64's, PyTorch's "
          f"{torch_error:.1e}); actual sparsity {run['actual_sparsity']:.4f}, "
          f"repair {run['repair']}, {secs:.1f} s")
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2")
    a = p.parse_args()
    print(f"reflow {reflow.version()}, torch {torch.__version__}, torchvision {torchvision.__version__}")
    results = [check(name) for name in a.models.split(",")]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
