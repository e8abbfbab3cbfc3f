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
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import make_wanda_fixtures as wanda

REPO = Path(__file__).resolve().parent.parent
PATTERNS = {"0.5": (0.5, 0, 0), "0.8": (0.8, 0, 0), "2:4": (0.0, 2, 4)}


def unfolded(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Per group, the unfolded input columns [R, columns] (float64)."""
    x = x.double()
    if isinstance(module, nn.Linear):
        return [x.t()]
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation,
                    padding=module.padding, stride=module.stride)  # [N, C*kh*kw, L]
    r = cols.shape[1] // module.groups
    return [cols[:, g * r:(g + 1) * r, :].permute(1, 0, 2).flatten(1) for g in range(module.groups)]


@torch.no_grad()
def fasterprune(W: torch.Tensor, H: torch.Tensor, sparsity: float, prunen: int = 0, prunem: int = 0,
                blocksize: int = 128, percdamp: float = 0.01) -> torch.Tensor:
    """SparseGPT.fasterprune (IST-DASLab/sparsegpt, sparsegpt.py), float64."""
    W = W.clone().double()
    H = H.clone()
    columns = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H
    mask = None
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            if mask is not None:
                mask1 = mask[:, i1:i2]
            else:
                tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
                thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
                mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(W1) == 1
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i:(i + prunem)] ** 2 / (torch.diag(Hinv1)[i:(i + prunem)].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


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
