"""Generate the parity fixtures of the model families beyond ResNet in tests/fixtures/.

Each fixture is one small configuration built from torchvision's own classes, so its
state-dict keys are exactly torchvision's, with seeded random weights and non-trivial
batch-norm statistics and gamma/beta (`torch_resnet.randomize_`):

    vgg_small         torchvision VGG (make_layers(batch_norm=True) features
                      [8, M, 16, M, 16, 16, M]); avgpool to 7x7 from a 4x4 map and a
                      32-wide classifier, 5 classes; input [2, 3, 32, 32]
    regnet_x_small    torchvision RegNet, BlockParams depths [1, 2, 1], widths
                      [16, 32, 48], group width 8, stem 16, 6 classes; input [2, 3, 32, 32]
    regnet_y_small    the same with squeeze-excitation (se_ratio 0.25)
    mobilenet_v2_small   torchvision mobilenet_v2(width_mult=0.25), 10 classes; input [2, 3, 40, 40]
    mobilenet_v3_small   torchvision MobileNetV3 with the mobilenet_v3_small setting at
                         width_mult 0.25, 10 classes (BN eps 1e-3); input [2, 3, 40, 40]
    efficientnet_small   torchvision EfficientNet with the b0 setting at width 0.25,
                         depth 0.5, 10 classes; input [2, 3, 40, 40]
    shufflenet_v2_small  torchvision ShuffleNetV2, stages_repeats [2, 3, 2],
                         stages_out_channels [8, 16, 32, 64, 96], 7 classes; input [2, 3, 48, 48]

For each, `<name>.safetensors` is the state dict and `<name>.io.safetensors` holds
`input`, `logits` and every BatchNorm2d's eval-mode output as `bn/<module name>`,
computed in float64 from the stored float32 values (see make_fixtures.py). The io
file's metadata `config` records the torchvision constructor arguments.

Usage: ~/venvs/ref/bin/python scripts/make_family_fixtures.py [--out DIR] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file
from torchvision.models import regnet

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import forward_with_bn_outputs  # noqa: E402
from torch_resnet import randomize_  # noqa: E402
from families import (  # noqa: E402
    small_efficientnet, small_mobilenet_v2, small_mobilenet_v3, small_regnet, small_shufflenet_v2,
    small_vgg,
)

REPO = Path(__file__).resolve().parent.parent


@torch.no_grad()
def randomized(model: nn.Module, seed: int) -> nn.Module:
    randomize_(model, seed=seed)
    # Keep the residual sums O(1): the last convolution of every RegNet branch halved.
    for m in model.modules():
        if isinstance(m, regnet.ResBottleneckBlock):
            m.f.c[0].weight.mul_(0.5)
        # Inverted residuals: the projection halved where its output is added.
        if getattr(m, "use_res_connect", False):
            body = getattr(m, "conv", None) or m.block
            convs = [c for c in body.modules() if isinstance(c, nn.Conv2d)]
            convs[-1].weight.mul_(0.5)
    return model.eval()


FIXTURES = {
    "vgg_small": (small_vgg, dict(features=[8, "M", 16, "M", 16, 16, "M"], pool=7, hidden=32, num_classes=5), (2, 3, 32, 32), 11),
    "regnet_x_small": (small_regnet, dict(depths=[1, 2, 1], widths=[16, 32, 48], group_width=8, se_ratio=None, stem_width=16, num_classes=6), (2, 3, 32, 32), 12),
    "regnet_y_small": (small_regnet, dict(depths=[1, 2, 1], widths=[16, 32, 48], group_width=8, se_ratio=0.25, stem_width=16, num_classes=6), (2, 3, 32, 32), 13),
    "mobilenet_v2_small": (small_mobilenet_v2, dict(width_mult=0.25, num_classes=10), (2, 3, 40, 40), 14),
    "mobilenet_v3_small": (small_mobilenet_v3, dict(arch="mobilenet_v3_small", width_mult=0.25, num_classes=10), (2, 3, 40, 40), 15),
    "efficientnet_small": (small_efficientnet, dict(width_mult=0.25, depth_mult=0.5, num_classes=10), (2, 3, 40, 40), 16),
    "shufflenet_v2_small": (small_shufflenet_v2, dict(stages_repeats=[2, 3, 2], stages_out_channels=[8, 16, 32, 64, 96], num_classes=7), (2, 3, 48, 48), 17),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures")
    ap.add_argument("--only", nargs="*", choices=sorted(FIXTURES), help="just these fixtures")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name, (build, cfg, shape, seed) in FIXTURES.items():
        if args.only and name not in args.only:
            continue
        model = randomized(build(cfg), seed)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1))
        logits64, bn64 = forward_with_bn_outputs(copy.deepcopy(model).double(), x.double())
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(args.out / f"{name}.safetensors"))
        io = {"input": x.contiguous(), "logits": logits64.float().contiguous()}
        io.update({f"bn/{k}": v.float().contiguous() for k, v in bn64.items()})
        save_file(io, str(args.out / f"{name}.io.safetensors"), metadata={"config": json.dumps(cfg)})
        n = sum(p.numel() for p in model.parameters())
        top = max(v.abs().max().item() for v in bn64.values())
        print(f"{name}: {n:,} parameters, {len(bn64)} BatchNorm2d outputs, max |logit| "
              f"{logits64.abs().max().item():.3g}, max |bn| {top:.3g}")


if __name__ == "__main__":
    main()
