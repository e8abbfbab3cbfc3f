"""N:M masks, the PyTorch reference of reflow's `NmPruner` (method.md, "N:M"):
tests/fixtures/nm_masks.safetensors holds seeded weights `weights/<name>` (float32,
quantised to multiples of 1/4 so that equal |w| occur and the tie rule matters) of
convolutions and a linear layer, and per weight and convention a float16 tensor of the
weight's shape, 1 where the weight is pruned: `<convention>/<n>:<m>/<name>` for conventions `channels` (groups of M along
the input-channel axis, for each output channel and kernel position) and `rows`
(groups of M along the flattened row). Tensors whose grouped axis is not a multiple of
M are absent (skipped). Within a group the M - N smallest |w| are pruned, among equal
|w| the lower index first (`torch.sort(stable=True)`).

Usage: /root/venvs/ref/bin/python scripts/make_nm_fixtures.py
"""

from __future__ import annotations

from pathlib import Path

import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from patterns import nm_mask  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


SHAPES = {
    "a.weight": (32, 16, 3, 3),
    "b.weight": (24, 32, 1, 1),
    "c.weight": (16, 3, 3, 3),   # a 3-channel stem: skipped
    "d.weight": (8, 1, 3, 3),    # depthwise: skipped
    "e.weight": (10, 64),        # linear
    "f.weight": (12, 12, 3, 3),  # 12 channels: 4:8 skipped along the channels only
}


def main() -> None:
    gen = torch.Generator().manual_seed(7)
    weights = {k: (torch.randn(s, generator=gen) * 4).round() / 4 for k, s in SHAPES.items()}
    out = {f"weights/{k}": v.contiguous() for k, v in weights.items()}
    for convention in ("channels", "rows"):
        for n, m in ((2, 4), (1, 4), (4, 8)):
            for name, w in weights.items():
                mask = nm_mask(w, n, m, convention)
                if mask is not None:
                    out[f"{convention}/{n}:{m}/{name}"] = mask.half().contiguous()
    save_file(out, str(REPO / "tests/fixtures/nm_masks.safetensors"))
    print(f"{len(out) - len(weights)} masks of {len(weights)} weights")


if __name__ == "__main__":
    main()
