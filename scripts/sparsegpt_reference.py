"""IST-DASLab/sparsegpt's `SparseGPT.fasterprune`, line for line in float64, and the
unfolded layer inputs its Hessian sums: shared by make_sparsegpt_fixtures.py and
reference.py (method.md, "Activation-aware pruners")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def unfolded(module: nn.Module, x: torch.Tensor, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """Per group, the unfolded input columns [R, columns] (float64 unless `dtype`)."""
    x = x.to(dtype)
    if isinstance(module, nn.Linear):
        return [x.t()]
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation,
                    padding=module.padding, stride=module.stride)  # [N, C*kh*kw, L]
    r = cols.shape[1] // module.groups
    return [cols[:, g * r:(g + 1) * r, :].permute(1, 0, 2).flatten(1) for g in range(module.groups)]


@torch.no_grad()
def fasterprune(W: torch.Tensor, H: torch.Tensor, sparsity: float, prunen: int = 0, prunem: int = 0,
                blocksize: int = 128, percdamp: float = 0.01,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """SparseGPT.fasterprune (IST-DASLab/sparsegpt, sparsegpt.py), float64 unless
    `dtype` (the reference itself computes in float32)."""
    W = W.clone().to(dtype)
    H = H.clone().to(dtype)
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
