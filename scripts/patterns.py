"""The structured pruning patterns of method.md in PyTorch: the reference of reflow's
`NmPruner` and `ChannelPruner` (importable; used by reference.py and the fixture
scripts).

N:M ("N:M (semi-structured) sparsity"): `nm_mask(w, n, m, convention)` is the mask
(1 = pruned) of one weight, or None when its grouped axis is not a multiple of M.

Channel pruning ("Channel pruning"), for torchvision-layout ResNets and VGGs:
`channel_couplings(sd)` lists (conv, bn, next, per_channel) whose channels can go —
each block's conv1 and, in an ungrouped bottleneck, conv2; every convolution of a VGG,
the last one's channels feeding per_channel (pool²) inputs of `classifier.0` each;
`channel_prune(sd,
fraction, norm, exclude)` returns the compact state dict and what was removed. In each
coupled convolution the round(s * C) channels (Python round, half to even; at most
C - 1) of smallest filter norm — L1 sum |w| or L2, in float64, over the dense weights —
are removed, ties to the lower index (a stable sort); so are their BN entries and the
next convolution's input slices. `torch_resnet.build_from_shapes` (ResNet) and
`families.vgg_from_shapes` (VGG) build the result.
"""

from __future__ import annotations

import re

import torch


def nm_mask(w: torch.Tensor, n: int, m: int, convention: str) -> torch.Tensor | None:
    """1 where N:M pruning removes a weight; groups along the input channels
    ("channels") or the flattened rows ("rows"); None when the axis does not divide."""
    if convention == "channels":
        # [O, I, kh, kw] -> [O, kh, kw, I]: each run is the input channels of one position.
        runs = w.permute(0, *range(2, w.dim()), 1).reshape(-1, w.shape[1])
    else:
        runs = w.reshape(w.shape[0], -1)
    if runs.shape[1] % m:
        return None
    groups = runs.abs().reshape(-1, m)
    order = torch.sort(groups, dim=1, stable=True).indices
    pruned = torch.zeros_like(groups, dtype=torch.bool)
    pruned.scatter_(1, order[:, : m - n], True)
    pruned = pruned.reshape(runs.shape)
    if convention == "channels":
        shape = (w.shape[0], *w.shape[2:], w.shape[1])
        pruned = pruned.reshape(shape).permute(0, w.dim() - 1, *range(1, w.dim() - 1))
    return pruned.reshape(w.shape).to(torch.uint8).contiguous()


def channel_couplings(sd: dict[str, torch.Tensor]) -> tuple[list[tuple[str, str, str, int]], list[tuple[str, str]]]:
    """(conv, bn, next, inputs of next per channel) of every prunable convolution, and
    (conv, reason) of the skipped: a ResNet's conv1 (and an ungrouped bottleneck's
    conv2), or every convolution of a VGG (the last one feeding `classifier.0`)."""
    if "features.0.weight" in sd and "classifier.0.weight" in sd:
        convs = sorted(int(k.split(".")[1]) for k in sd
                       if re.fullmatch(r"features\.\d+\.weight", k) and sd[k].dim() == 4)
        couplings = [(f"features.{i}", f"features.{i + 1}", f"features.{j}", 1) for i, j in zip(convs, convs[1:])]
        last = convs[-1]
        per_channel = sd["classifier.0.weight"].shape[1] // sd[f"features.{last}.weight"].shape[0]
        return couplings + [(f"features.{last}", f"features.{last + 1}", "classifier.0", per_channel)], []
    couplings, skipped = [], []
    bottleneck = "layer1.0.conv3.weight" in sd
    found = (re.fullmatch(r"layer(\d+)\.(\d+)\.conv1\.weight", k) for k in sd)
    blocks = sorted((int(f[1]), int(f[2])) for f in found if f)
    for stage, block in blocks:
        at = f"layer{stage}.{block}"
        if not bottleneck:
            couplings.append((f"{at}.conv1", f"{at}.bn1", f"{at}.conv2", 1))
            continue
        groups = sd[f"{at}.conv1.weight"].shape[0] // sd[f"{at}.conv2.weight"].shape[1]
        if groups == 1:
            couplings += [(f"{at}.conv1", f"{at}.bn1", f"{at}.conv2", 1), (f"{at}.conv2", f"{at}.bn2", f"{at}.conv3", 1)]
        else:
            skipped += [(f"{at}.conv1", f"feeds a grouped convolution ({groups} groups)"),
                        (f"{at}.conv2", f"a grouped convolution ({groups} groups)")]
    return couplings, skipped


def _excluded(conv: str, exclude: list[str]) -> bool:
    return any(conv == e or conv.startswith(e + ".") or f"{conv}.weight" == e for e in exclude)


def channel_prune(sd: dict[str, torch.Tensor], fraction: float, norm: str = "l1",
                  exclude: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], list[dict], list[tuple[str, str]]]:
    """The compact state dict, one {"conv", "channels", "removed"} per pruned conv, and the skipped."""
    couplings, skipped = channel_couplings(sd)
    out = dict(sd)
    removals = []
    for conv, bn, nxt, per_channel in couplings:
        if _excluded(conv, list(exclude)):
            continue
        w = sd[f"{conv}.weight"].double()
        c = w.shape[0]
        flat = w.reshape(c, -1)
        scores = flat.abs().sum(1) if norm == "l1" else (flat * flat).sum(1).sqrt()
        count = min(round(fraction * c), c - 1)
        order = torch.sort(scores, stable=True).indices
        removed = sorted(int(i) for i in order[:count])
        keep = torch.tensor([i for i in range(c) if i not in set(removed)], dtype=torch.long)
        for key in (f"{conv}.weight", f"{conv}.bias", f"{bn}.weight", f"{bn}.bias",
                    f"{bn}.running_mean", f"{bn}.running_var"):
            if key in out:
                out[key] = out[key].index_select(0, keep).contiguous()
        w_next = out[f"{nxt}.weight"]
        runs = w_next.reshape(w_next.shape[0], c, -1)  # each channel's inputs of next
        kept = runs.index_select(1, keep).reshape(w_next.shape[0], len(keep) * per_channel, *w_next.shape[2:])
        out[f"{nxt}.weight"] = kept.contiguous()
        removals.append({"conv": conv, "channels": c, "removed": removed})
    return out, removals, skipped
