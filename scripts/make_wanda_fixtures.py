"""Wanda masks, the PyTorch reference of reflow's `WandaPruner` (method.md,
"Activation-aware pruners"): tests/fixtures/wanda_masks.safetensors holds a small
network's seeded weights `weights/<name>`, calibration batches `inputs/<k>` (float32
NCHW), the squared input-column norms the pruner scores with `norms/<layer>` (float64,
indexed `(c * kh + ky) * kw + kx`), and per weight a float16 mask of the weight's shape,
1 where the weight is pruned: `unstructured/<s>/<name>` and `nm/<n>:<m>/<name>`.

The network (torchvision-style indices, as an `nn.Sequential`):
  0  Conv2d(8, 16, 3, padding=1, groups=2)            grouped
  1  ReLU
  2  Conv2d(16, 16, 3, stride=2, padding=2, dilation=2) strided, dilated
  3  ReLU
  4  Conv2d(16, 24, 1, bias=True)                     1x1
  5  AdaptiveAvgPool2d(1)
  6  Flatten
  7  Linear(24, 10)                                    linear

Wanda's score (Sun et al. 2024; locuslab/wanda `prune_wanda`) for a weight row
W[o, :] = weight.flatten(1)[o] is |W[o, j]| * ||X_j||_2, X_j the j-th row of the
layer's unfolded input (torch.nn.functional.unfold with the layer's padding, stride and
dilation; of a grouped convolution, the columns of the output's group) over every
calibration position. Unstructured: per row, the round(s * row) smallest (Python's
round, halves to even) are pruned; N:M: of every M consecutive weights of a row, the
M - N smallest. Ties: the lower index first (`torch.sort(stable=True)`).

Usage: /root/venvs/ref/bin/python scripts/make_wanda_fixtures.py
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

REPO = Path(__file__).resolve().parent.parent
SPARSITIES = (0.3, 0.5, 0.9)
NM = ((2, 4), (1, 4))


def network() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1, groups=2, bias=False),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=2, dilation=2, bias=False),
        nn.ReLU(),
        nn.Conv2d(16, 24, 1, bias=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 10),
    )


def column_sums(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Sum over the batch and positions of the squared unfolded input columns, per
    column (c, ky, kx) over all input channels (a linear layer: per feature)."""
    x = x.double()
    if isinstance(module, nn.Linear):
        return (x**2).sum(0)
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation,
                    padding=module.padding, stride=module.stride)
    return (cols**2).sum((0, 2))


def scores(module: nn.Module, sums: torch.Tensor) -> torch.Tensor:
    w = module.weight.detach().double().flatten(1)
    out, row = w.shape
    groups = sums.numel() // row
    per_group = out // groups
    norms = torch.stack([sums[(o // per_group) * row:(o // per_group + 1) * row]
                         for o in range(out)]).sqrt()
    return w.abs() * norms


def unstructured(score: torch.Tensor, s: float) -> torch.Tensor:
    row = score.shape[1]
    k = round(s * row)
    order = torch.sort(score, dim=1, stable=True).indices[:, :k]
    mask = torch.zeros_like(score, dtype=torch.bool)
    mask.scatter_(1, order, True)
    return mask


def nm(score: torch.Tensor, n: int, m: int) -> torch.Tensor | None:
    out, row = score.shape
    if row % m:
        return None
    groups = score.reshape(out, row // m, m)
    order = torch.sort(groups, dim=2, stable=True).indices[:, :, : m - n]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, order, True)
    return mask.reshape(out, row)


def main() -> None:
    gen = torch.Generator().manual_seed(11)
    net = network()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    inputs = [torch.randn((16, 8, 9, 11), generator=gen), torch.randn((16, 8, 9, 11), generator=gen)]
    layers = {name: m for name, m in net.named_children() if isinstance(m, (nn.Conv2d, nn.Linear))}
    sums: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(module, args):
            s = column_sums(module, args[0])
            sums[name] = sums[name] + s if name in sums else s
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in layers.items()]
    with torch.no_grad():
        for x in inputs:
            net(x)
    for h in hooks:
        h.remove()
    out = {f"weights/{k}": v.detach().contiguous() for k, v in net.state_dict().items()}
    out.update({f"inputs/{k}": x.contiguous() for k, x in enumerate(inputs)})
    out.update({f"norms/{name}": s.contiguous() for name, s in sums.items()})
    count = 0
    for name, module in layers.items():
        score = scores(module, sums[name])
        shape = module.weight.shape
        for s in SPARSITIES:
            out[f"unstructured/{s}/{name}.weight"] = unstructured(score, s).reshape(shape).half()
            count += 1
        for n, m in NM:
            mask = nm(score, n, m)
            if mask is not None:
                out[f"nm/{n}:{m}/{name}.weight"] = mask.reshape(shape).half()
                count += 1
    save_file(out, str(REPO / "tests/fixtures/wanda_masks.safetensors"))
    print(f"{count} masks of {len(layers)} layers")


if __name__ == "__main__":
    main()
