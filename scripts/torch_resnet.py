"""PyTorch reference ResNet / ResNeXt with free stage configuration.

This module is the reference implementation used to produce (and check) the
test fixtures of the `reflow` crate. It builds networks from torchvision's own
`BasicBlock` / `Bottleneck` classes, so the forward pass and the state-dict
layout are exactly torchvision's:

    conv1.weight                        stem conv (no bias)
    bn1.{weight,bias,running_mean,running_var,num_batches_tracked}
    layer{k}.{i}.conv{1,2[,3]}.weight
    layer{k}.{i}.bn{1,2[,3]}.*
    layer{k}.{i}.downsample.0.weight    1x1 conv, stride = block stride
    layer{k}.{i}.downsample.1.*         BN
    fc.weight [classes, features], fc.bias

What torchvision fixes but we leave free: the number of stages, the planes of
each stage, the stem width, the input channels, and the stem type:

    "imagenet": conv 7x7 stride 2 pad 3, then maxpool 3x3 stride 2 pad 1
    "cifar":    conv 3x3 stride 1 pad 1, no maxpool (nn.Identity)

Public API:
    build_resnet(...)               -> nn.Module
    infer_from_state_dict(sd, stem) -> nn.Module (un-initialised, load sd into it)
    build_from_shapes(sd, stem)     -> nn.Module, per-block widths too (channel-pruned)
    randomize_(model, seed)         -> deterministic non-trivial parameters/buffers

Run `python scripts/torch_resnet.py` for a self-test against torchvision.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck

BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
STEMS = ("cifar", "imagenet")


class FlexResNet(nn.Module):
    """A torchvision-compatible ResNet whose stages are configurable.

    The attribute names (conv1, bn1, relu, maxpool, layer1..layerK, avgpool,
    fc) are exactly those of `torchvision.models.ResNet`, so `state_dict()`
    keys match torchvision's key for key.
    """

    def __init__(
        self,
        block: str,
        layers: list[int],
        planes: list[int],
        stem_width: int,
        stem: str,
        in_channels: int,
        num_classes: int,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if len(layers) != len(planes) or len(layers) == 0:
            raise ValueError(f"layers {layers} and planes {planes} must be non-empty and of equal length")
        if any(n < 1 for n in layers):
            raise ValueError(f"every stage needs at least one block, got layers={layers}")
        if block == "basic" and (groups != 1 or width_per_group != 64):
            # torchvision's BasicBlock raises on this too; fail early with a clearer message.
            raise ValueError("basic blocks only support groups=1 and width_per_group=64")

        block_cls = BLOCKS[block]
        self.block_type = block
        self.stem_type = stem
        self.num_stages = len(layers)

        # --- stem -----------------------------------------------------------
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        if stem == "imagenet":
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            # Identity has no parameters, so the state dict is unaffected.
            self.maxpool = nn.Identity()

        # --- residual stages (same rules as torchvision's ResNet._make_layer) -
        inplanes = stem_width
        for k, (num_blocks, p) in enumerate(zip(layers, planes), start=1):
            stride = 1 if k == 1 else 2
            out_channels = p * block_cls.expansion
            downsample = None
            if stride != 1 or inplanes != out_channels:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, out_channels, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(out_channels),
                )
            blocks = [block_cls(inplanes, p, stride, downsample, groups, width_per_group)]
            for _ in range(1, num_blocks):
                blocks.append(block_cls(out_channels, p, groups=groups, base_width=width_per_group))
            setattr(self, f"layer{k}", nn.Sequential(*blocks))
            inplanes = out_channels

        # --- head -----------------------------------------------------------
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        for k in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{k}")(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def build_resnet(
    block: str,
    layers: list[int],
    planes: list[int],
    stem_width: int,
    stem: str,
    in_channels: int,
    num_classes: int,
    groups: int = 1,
    width_per_group: int = 64,
) -> nn.Module:
    """Build a torchvision-layout ResNet/ResNeXt (parameters: PyTorch default init)."""
    return FlexResNet(block, layers, planes, stem_width, stem, in_channels, num_classes, groups, width_per_group)


# ---------------------------------------------------------------------------
# Inferring the configuration from a state dict
# ---------------------------------------------------------------------------

_BLOCK_KEY = re.compile(r"^layer(\d+)\.(\d+)\.")


def _width_per_group_candidates(planes: int, width_per_group_conv: int) -> range:
    """All integer `w` with int(planes * (w / 64.0)) == width_per_group_conv.

    torchvision computes the grouped-conv width as
    int(planes * (base_width / 64.0)) * groups, so several base widths can give
    the same shapes. The range is a superset (float rounding is checked by the
    caller).
    """
    lo = math.floor(width_per_group_conv * 64 / planes)
    hi = math.ceil((width_per_group_conv + 1) * 64 / planes)
    return range(max(lo, 1), hi + 1)


def infer_config(sd: dict[str, torch.Tensor], stem: str, uniform: bool = True) -> dict:
    """Recover build_resnet's keyword arguments from a torchvision-layout state dict.

    With `uniform=False` a bottleneck network whose widths follow no width_per_group
    (a channel-pruned one) gets width_per_group 64; `build_from_shapes` then gives each
    block its own widths.
    """
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")

    # Stem: conv1.weight is [stem_width, in_channels, k, k].
    stem_w = sd["conv1.weight"]
    stem_width, in_channels, kh, kw = stem_w.shape
    expected_k = 7 if stem == "imagenet" else 3
    if (kh, kw) != (expected_k, expected_k):
        raise ValueError(f"conv1.weight is {kh}x{kw} but a {stem!r} stem needs {expected_k}x{expected_k}")

    # Stages and blocks per stage, from the `layer{k}.{i}.` prefixes.
    blocks_per_stage: dict[int, set[int]] = {}
    for key in sd:
        m = _BLOCK_KEY.match(key)
        if m:
            blocks_per_stage.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not blocks_per_stage:
        raise ValueError("no layer{k}.{i}.* keys in the state dict")
    num_stages = max(blocks_per_stage)
    layers = []
    for k in range(1, num_stages + 1):
        idx = blocks_per_stage.get(k)
        if not idx or idx != set(range(len(idx))):
            raise ValueError(f"stage layer{k} is missing or has non-contiguous block indices: {sorted(idx or [])}")
        layers.append(len(idx))

    # Block type: only bottlenecks have a conv3.
    block = "bottleneck" if "layer1.0.conv3.weight" in sd else "basic"

    planes = []
    groups = 1
    width_per_group = 64
    if block == "basic":
        # BasicBlock: conv2 is [planes, width, 3, 3] (conv1's outputs may be channel-pruned).
        planes = [int(sd[f"layer{k}.0.conv2.weight"].shape[0]) for k in range(1, num_stages + 1)]
    else:
        # Bottleneck: conv3 is [planes * 4, width, 1, 1]; conv2 is [width, width / groups, 3, 3].
        conv2 = sd["layer1.0.conv2.weight"]
        # conv1's outputs are conv2's inputs, width / groups per group.
        width, width_per_grp_conv = int(sd["layer1.0.conv1.weight"].shape[0]), int(conv2.shape[1])
        if width % width_per_grp_conv:
            raise ValueError(f"layer1.0.conv2.weight shape {tuple(conv2.shape)} is not a grouped 3x3 conv")
        groups = width // width_per_grp_conv
        widths = []
        for k in range(1, num_stages + 1):
            out_channels = int(sd[f"layer{k}.0.conv3.weight"].shape[0])
            if out_channels % Bottleneck.expansion:
                raise ValueError(f"layer{k}.0.conv3.weight has {out_channels} outputs, not a multiple of 4")
            planes.append(out_channels // Bottleneck.expansion)
            widths.append(int(sd[f"layer{k}.0.conv2.weight"].shape[0]))

        # Find a width_per_group reproducing every stage's width. Prefer the
        # canonical 64 (ResNet), then the smallest candidate that fits.
        def fits(wpg: int) -> bool:
            return all(int(p * (wpg / 64.0)) * groups == w for p, w in zip(planes, widths))

        candidates = [64] + list(_width_per_group_candidates(planes[0], width // groups))
        width_per_group = next((c for c in candidates if fits(c)), None)
        if width_per_group is None and not uniform:
            width_per_group = 64  # per-block widths: build_from_shapes sets them
        if width_per_group is None:
            raise ValueError(
                f"no width_per_group reproduces stage widths {widths} for planes {planes} and groups {groups}"
            )

    num_classes = int(sd["fc.weight"].shape[0])
    return dict(
        block=block,
        layers=layers,
        planes=planes,
        stem_width=int(stem_width),
        stem=stem,
        in_channels=int(in_channels),
        num_classes=num_classes,
        groups=groups,
        width_per_group=width_per_group,
    )


def build_from_shapes(sd: dict[str, torch.Tensor], stem: str) -> nn.Module:
    """Build the module a torchvision-layout state dict describes, block widths included.

    Like `infer_from_state_dict`, and then every convolution and batch norm of a
    residual branch whose stored shape differs from the stage's (a channel-pruned
    network: narrower conv1 / conv2 outputs and the next convolution's inputs) is
    replaced by one of the stored shape, with the same kernel, stride, padding and
    groups. The parameters are NOT loaded; load `sd` with strict=True.
    """
    model = build_resnet(**infer_config(sd, stem, uniform=False))
    for name, module in list(model.named_modules()):
        for child, sub in list(module.named_children()):
            key = f"{name}.{child}" if name else child
            stored = sd.get(f"{key}.weight")
            if stored is None or tuple(stored.shape) == tuple(sub.weight.shape):
                continue
            if isinstance(sub, nn.Conv2d):
                new = nn.Conv2d(stored.shape[1] * sub.groups, stored.shape[0], sub.kernel_size, sub.stride,
                                sub.padding, sub.dilation, sub.groups, sub.bias is not None)
            elif isinstance(sub, nn.BatchNorm2d):
                new = nn.BatchNorm2d(stored.shape[0], eps=sub.eps, momentum=sub.momentum)
            else:
                continue  # a misfit elsewhere: the strict load names it
            setattr(module, child, new)
    return model


def infer_from_state_dict(sd: dict[str, torch.Tensor], stem: str) -> nn.Module:
    """Build the module matching a torchvision-layout state dict.

    The parameters are NOT loaded; call `model.load_state_dict(sd, strict=True)`.
    Any mismatch the inference cannot see (e.g. a missing downsample) is then
    reported by the strict load.
    """
    return build_resnet(**infer_config(sd, stem))


# ---------------------------------------------------------------------------
# Deterministic, non-trivial parameters
# ---------------------------------------------------------------------------


def _residual_branch_last_convs(model: nn.Module) -> set[int]:
    """ids of the last conv of each residual branch (BasicBlock.conv2 / Bottleneck.conv3)."""
    ids = set()
    for m in model.modules():
        if isinstance(m, BasicBlock):
            ids.add(id(m.conv2))
        elif isinstance(m, Bottleneck):
            ids.add(id(m.conv3))
    return ids


@torch.no_grad()
def randomize_(model: nn.Module, seed: int, branch_gain: float = 0.5, num_batches_tracked: int = 7) -> nn.Module:
    """Fill every parameter and buffer with seeded, non-trivial values (in place).

    - Conv weights: N(0, 2 / fan_in) (Kaiming, fan-in, ReLU gain). With the
      BN statistics below, a conv-BN-ReLU chain then roughly preserves the
      signal's second moment.
    - The last conv of every residual branch is additionally scaled by
      `branch_gain`: `out = relu(branch + identity)` adds variances, so
      without this the activations grow ~2x in variance per block.
    - Linear: weight N(0, 1 / fan_in), bias N(0, 1).
    - BatchNorm: weight ~ U(0.5, 1.5), bias ~ N(0, 0.1), running_mean ~ N(0, 0.1),
      running_var ~ U(0.5, 2.0), num_batches_tracked = `num_batches_tracked`.

    Modules are visited in `named_modules()` order with a single
    torch.Generator, so the result depends only on the architecture and seed.
    """
    g = torch.Generator().manual_seed(seed)
    branch_last = _residual_branch_last_convs(model)

    def normal(shape, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=g, dtype=torch.float64) * std

    def uniform(shape, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)

    for _, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()  # (in_channels / groups) * kh * kw
            std = math.sqrt(2.0 / fan_in)
            if id(m) in branch_last:
                std *= branch_gain
            m.weight.copy_(normal(m.weight.shape, std))
            if m.bias is not None:
                m.bias.copy_(normal(m.bias.shape, 0.1))
        elif isinstance(m, nn.Linear):
            m.weight.copy_(normal(m.weight.shape, math.sqrt(1.0 / m.in_features)))
            if m.bias is not None:
                m.bias.copy_(normal(m.bias.shape, 1.0))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(uniform(m.weight.shape, 0.5, 1.5))
            m.bias.copy_(normal(m.bias.shape, 0.1))
            m.running_mean.copy_(normal(m.running_mean.shape, 0.1))
            m.running_var.copy_(uniform(m.running_var.shape, 0.5, 2.0))
            m.num_batches_tracked.fill_(num_batches_tracked)
    return model


# ---------------------------------------------------------------------------
# Self-test
# ---------------------------------------------------------------------------


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _self_test() -> None:
    import torchvision.models as tvm

    torch.set_num_threads(1)
    failures = 0

    def check(cond: bool, what: str) -> None:
        nonlocal failures
        print(("  ok   " if cond else "  FAIL ") + what)
        failures += not cond

    cases = [
        ("resnet18", tvm.resnet18, ("basic", [2, 2, 2, 2], {}), 11_689_512),
        ("resnet50", tvm.resnet50, ("bottleneck", [3, 4, 6, 3], {}), 25_557_032),
        (
            "resnext50_32x4d",
            tvm.resnext50_32x4d,
            ("bottleneck", [3, 4, 6, 3], dict(groups=32, width_per_group=4)),
            25_028_904,
        ),
    ]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for name, ctor, (block, layers, extra), expected_params in cases:
        print(f"{name}:")
        ref = ctor().eval()
        ours = build_resnet(block, layers, [64, 128, 256, 512], 64, "imagenet", 3, 1000, **extra).eval()
        check(list(ours.state_dict()) == list(ref.state_dict()), "state_dict keys identical (same order)")
        check(_shapes(ours) == _shapes(ref), "state_dict shapes identical")
        n = _num_params(ours)
        check(n == _num_params(ref) == expected_params, f"parameter count {n:,} == {expected_params:,}")

        # Same forward as torchvision once the same (randomized) weights are loaded.
        randomize_(ref, seed=1)
        ours.load_state_dict(ref.state_dict(), strict=True)
        with torch.no_grad():
            err = (ours(x) - ref(x)).abs().max().item()
        check(err == 0.0, f"forward identical to torchvision (max abs diff {err:g})")

        # Inference round trip.
        cfg = infer_config(ref.state_dict(), "imagenet")
        expect = dict(
            block=block, layers=layers, planes=[64, 128, 256, 512], stem_width=64, stem="imagenet",
            in_channels=3, num_classes=1000, groups=extra.get("groups", 1),
            width_per_group=extra.get("width_per_group", 64),
        )
        check(cfg == expect, f"infer_config -> {cfg}")

    # Non-standard configurations: build, infer back, strict load.
    print("non-standard configurations:")
    odd = [
        dict(block="basic", layers=[3, 3, 3], planes=[16, 32, 64], stem_width=16, stem="cifar",
             in_channels=3, num_classes=10),
        dict(block="basic", layers=[1, 2], planes=[8, 8], stem_width=8, stem="cifar",
             in_channels=1, num_classes=3),
        dict(block="basic", layers=[1, 1, 1, 1, 1], planes=[4, 8, 16, 32, 64], stem_width=6, stem="imagenet",
             in_channels=2, num_classes=5),
        dict(block="bottleneck", layers=[2, 2, 2, 1], planes=[16, 32, 64, 128], stem_width=16,
             stem="imagenet", in_channels=3, num_classes=7, groups=4, width_per_group=16),
        dict(block="bottleneck", layers=[1, 1], planes=[16, 16], stem_width=64, stem="cifar",
             in_channels=3, num_classes=2, groups=1, width_per_group=64),
        # A width_per_group that int() truncates: 24*41/64 = 15.375 -> 15, 96*41/64 = 61.5 -> 61,
        # so 40 reproduces the first stage's width but not the last; inference must find 41.
        dict(block="bottleneck", layers=[1, 1, 1], planes=[24, 48, 96], stem_width=8, stem="cifar",
             in_channels=3, num_classes=4, groups=2, width_per_group=41),
    ]
    for cfg in odd:
        full = dict(groups=1, width_per_group=64) | cfg
        model = randomize_(build_resnet(**full), seed=3)
        sd = model.state_dict()
        inferred = infer_config(sd, full["stem"])
        rebuilt = build_resnet(**inferred)
        try:
            rebuilt.load_state_dict(sd, strict=True)
            loaded = True
        except RuntimeError as e:  # pragma: no cover - reported below
            print(e)
            loaded = False
        # width_per_group may legitimately differ when several values give the same shapes.
        same = {k: v for k, v in inferred.items() if k != "width_per_group"} == {
            k: v for k, v in full.items() if k != "width_per_group"
        }
        check(same and loaded, f"infer + strict load: {cfg} -> width_per_group={inferred['width_per_group']}")

    # Wrong stem type is reported clearly.
    try:
        infer_config(build_resnet(**odd[0]).state_dict(), "imagenet")
        check(False, "cifar weights rejected for an imagenet stem")
    except ValueError as e:
        check(True, f"cifar weights rejected for an imagenet stem ({e})")

    # randomize_ is deterministic.
    a = randomize_(build_resnet(**odd[0]), seed=5).state_dict()
    b = randomize_(build_resnet(**odd[0]), seed=5).state_dict()
    check(all(torch.equal(a[k], b[k]) for k in a), "randomize_ is deterministic for a fixed seed")

    print("self-test:", "PASSED" if failures == 0 else f"{failures} FAILURE(S)")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    _self_test()
