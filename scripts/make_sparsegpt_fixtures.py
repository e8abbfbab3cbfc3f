"""SparseGPT, the PyTorch reference of reflow's `SparseGptPruner` (method.md,
"Activation-aware pruners"): on the network and calibration batches of
tests/fixtures/wanda_masks.safetensors (make_wanda_fixtures.py), writes
tests/fixtures/sparsegpt.safetensors with each layer's input Hessians
`hessians/<layer>` (float64, [groups, R, R]: sum over the unfolded input columns of
x x^T, per group of a grouped convolution) and the pruned, updated weights
`<pattern>/<name>` (float32) for unstructured 0.5 and 0.8 and for 2:4.

`fasterprune` is IST-DASLab/sparsegpt's `SparseGPT.fasterprune` line for line (its
`blocksize` 128, `percdamp` 0.01), in float64, on W = weight.flatten(1) per group. The
Hessian's scale (the reference's 2/n) does not change the result: the dampening is
relative and the update is invariant to it, so the sum is kept.

Usage: /root/venvs/ref/bin/python scripts/make_sparsegpt_fixtures.py
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import make_wanda_fixtures as wanda
from sparsegpt_reference import fasterprune, unfolded

REPO = Path(__file__).resolve().parent.parent
PATTERNS = {"0.5": (0.5, 0, 0), "0.8": (0.8, 0, 0), "2:4": (0.0, 2, 4)}


def main() -> None:
    fixture = load_file(str(REPO / "tests/fixtures/wanda_masks.safetensors"))
    net = wanda.network()
    net.load_state_dict({k[len("weights/"):]: v for k, v in fixture.items() if k.startswith("weights/")})
    net.eval()
    inputs = [fixture[f"inputs/{k}"] for k in range(2)]
    layers = {name: m for name, m in net.named_children() if isinstance(m, (nn.Conv2d, nn.Linear))}
    hessians: dict[str, list[torch.Tensor]] = {}

    def record(name: str):
        def hook(module, args):
            for g, x in enumerate(unfolded(module, args[0])):
                h = x @ x.t()
                hs = hessians.setdefault(name, [])
                if g < len(hs):
                    hs[g] = hs[g] + h
                else:
                    hs.append(h)
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in layers.items()]
    with torch.no_grad():
        for x in inputs:
            net(x)
    for h in hooks:
        h.remove()
    out = {f"hessians/{name}": torch.stack(hs).contiguous() for name, hs in hessians.items()}
    for tag, (s, n, m) in PATTERNS.items():
        for name, module in layers.items():
            w = module.weight.detach().flatten(1)
            groups = len(hessians[name])
            per = w.shape[0] // groups
            parts = [fasterprune(w[g * per:(g + 1) * per], hessians[name][g], s, m - n if m else 0, m)
                     for g in range(groups)]
            out[f"{tag}/{name}.weight"] = torch.cat(parts).reshape(module.weight.shape).float().contiguous()
    save_file(out, str(REPO / "tests/fixtures/sparsegpt.safetensors"))
    print(f"{len(out)} tensors")


if __name__ == "__main__":
    main()
