"""Channel pruning in PyTorch, the reference of reflow's `ChannelPruner` (method.md,
"Channel pruning"): tests/fixtures/channel_pruning.safetensors holds, per case,

    <case>/removed/<conv>   int64, the removed output channels of each coupled conv
    <case>/logits           the compact network's logits on `input/<net>`

Cases: `resnet20_cifar` (the fixture tests/fixtures/resnet20_cifar.safetensors) at
0.3 / L1 and 0.5 / L2, `vgg_small` (tests/fixtures/vgg_small.safetensors; its last
convolution feeds a flattened 7x7 map to the classifier) at 0.3 / L1 and 0.5 / L2,
and `bottleneck_small` (a bottleneck ResNet built and
randomised here, stored as `bottleneck_small/state/<key>`, with filters of
layer1.0.conv1 made the three smallest and equal, so that the tie rule decides) at 0.5 / L1 and 0.3 / L2. The compact
network is built from the pruned state dict's shapes (`torch_resnet.build_from_shapes`,
`families.vgg_from_shapes`) and loaded with strict=True; its logits are computed in float64 and stored as float32.

Usage: /root/venvs/ref/bin/python scripts/make_channel_fixtures.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import families  # noqa: E402
from patterns import channel_prune  # noqa: E402
from torch_resnet import build_from_shapes, build_resnet, randomize_  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def bottleneck_small() -> dict[str, torch.Tensor]:
    model = build_resnet("bottleneck", [1, 2], [8, 16], 8, "cifar", 3, 5)
    randomize_(model, seed=11)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    w = sd["layer1.0.conv1.weight"]
    w[0] *= 0.01  # the smallest filter ...
    w[3] = w[0]
    w[5] = -w[0]  # ... three times: at 0.3, 2 of 8 go, ties to the lower index (0 and 3)
    return sd


def main() -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(3)
    nets = {
        "resnet20_cifar": (load_file(str(FIXTURES / "resnet20_cifar.safetensors")), [(0.3, "l1"), (0.5, "l2")]),
        "bottleneck_small": (bottleneck_small(), [(0.5, "l1"), (0.3, "l2")]),
        "vgg_small": (load_file(str(FIXTURES / "vgg_small.safetensors")), [(0.3, "l1"), (0.5, "l2")]),
    }
    out: dict[str, torch.Tensor] = {}
    for net, (sd, cases) in nets.items():
        x = torch.randn(2, 3, 32 if net.startswith("vgg") else 12, 32 if net.startswith("vgg") else 12, generator=gen)
        out[f"input/{net}"] = x
        if net == "bottleneck_small":
            out.update({f"{net}/state/{k}": v.contiguous() for k, v in sd.items()})
        for fraction, norm in cases:
            case = f"{net}/{fraction}/{norm}"
            compact, removals, _ = channel_prune(sd, fraction, norm)
            model = families.vgg_from_shapes(compact) if net.startswith("vgg") else build_from_shapes(compact, "cifar")
            model.load_state_dict(compact, strict=True)
            model = model.double().eval()
            with torch.no_grad():
                out[f"{case}/logits"] = model(x.double()).float()
            for r in removals:
                out[f"{case}/removed/{r['conv']}"] = torch.tensor(r["removed"], dtype=torch.int64)
            kept = sum(p.numel() for p in model.parameters())
            print(f"{case}: {len(removals)} convolutions, {kept} parameters left")
    save_file(out, str(FIXTURES / "channel_pruning.safetensors"))
    print(f"{len(out)} tensors -> {FIXTURES / 'channel_pruning.safetensors'}")


if __name__ == "__main__":
    main()
