"""SparseGPT, the PyTorch reference of reflow's `SparseGptPruner` (method.md,
"Activation-aware pruners"): on the network and calibration batches of
tests/fixtures/wanda_masks.safetensors (make_wanda_fixtures.py), writes
tests/fixtures/sparsegpt.safetensors with each layer's input Hessians
`hessians/<layer>` (float64, [groups, R, R]: sum over the unfolded input columns of
x x^T, per group of a grouped convolution) and the pruned, updated weights
`<pattern>/<name>` (float32) for unstructured 0.5 and 0.8 and for 2:4.

The sequential mode (`prune_sequential`): each layer in order measured on the network
with the layers before it already pruned (float32 weights, as the network holds
them), then pruned: `sequential/sparsegpt/<pattern>/<name>` (the updated weights) and
`sequential/wanda/<pattern>/<name>` (the weights with Wanda's zeros; its scores as
make_wanda_fixtures.py computes them), for 0.5 and 2:4.

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
SEQUENTIAL = ("0.5", "2:4")


def layer_inputs(net: nn.Module, module: nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The inputs `module` sees in an eval pass of `net` over each batch."""
    seen = []
    hook = module.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    with torch.no_grad():
        for x in inputs:
            net(x)
    hook.remove()
    return seen


def hessian(module: nn.Module, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per group, the sum of x x^T over the unfolded columns of every batch in `xs`."""
    per_batch = [[x @ x.t() for x in unfolded(module, x)] for x in xs]
    return [sum(b[g] for b in per_batch) for g in range(len(per_batch[0]))]


def sparsegpt_weights(module: nn.Module, hs: list[torch.Tensor], tag: str) -> torch.Tensor:
    s, n, m = PATTERNS[tag]
    w = module.weight.detach().flatten(1)
    per = w.shape[0] // len(hs)
    parts = [fasterprune(w[g * per:(g + 1) * per], h, s, m - n if m else 0, m) for g, h in enumerate(hs)]
    return torch.cat(parts).reshape(module.weight.shape).float().contiguous()


def wanda_weights(module: nn.Module, sums: torch.Tensor, tag: str) -> torch.Tensor:
    s, n, m = PATTERNS[tag]
    score = wanda.scores(module, sums)
    mask = wanda.nm(score, n, m) if m else wanda.unstructured(score, s)
    if mask is None:
        return module.weight.detach().clone()
    return (module.weight.detach() * ~mask.reshape(module.weight.shape)).contiguous()


def sequential(net: nn.Module, layers: dict[str, nn.Module], inputs: list[torch.Tensor],
               method: str, tag: str) -> dict[str, torch.Tensor]:
    """Each layer in order: its statistics on `net` as pruned so far, then pruned."""
    out = {}
    for name, module in layers.items():
        xs = layer_inputs(net, module, inputs)
        if method == "sparsegpt":
            w = sparsegpt_weights(module, hessian(module, xs), tag)
        else:
            w = wanda_weights(module, sum(wanda.column_sums(module, x) for x in xs), tag)
        with torch.no_grad():
            module.weight.copy_(w)
        out[f"sequential/{method}/{tag}/{name}.weight"] = w
    return out


def main() -> None:
    fixture = load_file(str(REPO / "tests/fixtures/wanda_masks.safetensors"))
    net = wanda.network()
    net.load_state_dict({k[len("weights/"):]: v for k, v in fixture.items() if k.startswith("weights/")})
    net.eval()
    inputs = [fixture[f"inputs/{k}"] for k in range(2)]
    layers = {name: m for name, m in net.named_children() if isinstance(m, (nn.Conv2d, nn.Linear))}
    hessians = {name: hessian(module, layer_inputs(net, module, inputs)) for name, module in layers.items()}
    out = {f"hessians/{name}": torch.stack(hs).contiguous() for name, hs in hessians.items()}
    for tag in PATTERNS:
        for name, module in layers.items():
            out[f"{tag}/{name}.weight"] = sparsegpt_weights(module, hessians[name], tag)
    dense = {k: v.clone() for k, v in net.state_dict().items()}
    for method in ("sparsegpt", "wanda"):
        for tag in SEQUENTIAL:
            net.load_state_dict(dense)
            seq = sequential(net, layers, inputs, method, tag)
            last = list(layers)[-1]
            if method == "sparsegpt":
                assert not torch.equal(seq[f"sequential/{method}/{tag}/{last}.weight"], out[f"{tag}/{last}.weight"])
            out.update(seq)
    save_file(out, str(REPO / "tests/fixtures/sparsegpt.safetensors"))
    print(f"{len(out)} tensors")


if __name__ == "__main__":
    main()
