"""The model families beyond ResNet, built from torchvision's own classes.

A network is described by a *spec*, a JSON-able dict::

    {"family": "mobilenet_v2", "config": {...}, "in_channels": 1}

`build(spec)` makes the torchvision model (its state-dict keys exactly torchvision's;
a first convolution of `in_channels` inputs when they are not 3). Checkpoints written
by `save(model, spec, path)` carry the spec in their safetensors metadata under
`reflow_model`, so that `spec_of(path)` and `build` rebuild the network a checkpoint
holds (reference.py, check_saved.py). A spec's family may also be a torchvision
constructor name (`"mobilenet_v2"` with `{"torchvision": true}`, `"regnet_x_400mf"`,
`"efficientnet_b0"`, ...), called with `num_classes` from the config.

Families and their configs:

    vgg           features (ints and "M"), pool, hidden, num_classes
    regnet        depths, widths, group_width, se_ratio (or null), stem_width, num_classes
    mobilenet_v2  width_mult, num_classes
    mobilenet_v3  arch ("mobilenet_v3_small" | "mobilenet_v3_large"), width_mult, num_classes
    efficientnet  width_mult, depth_mult, num_classes, bn_eps (1e-5; 1e-3 as B5-B7)
    shufflenet_v2 stages_repeats (3), stages_out_channels (5), num_classes
    small_cnn     widths (3), hidden, num_classes: not torchvision's; the vgg_style example
    resnet        torch_resnet.build_resnet's arguments but in_channels: block, layers,
                  planes, stem_width, stem, num_classes[, groups, width_per_group].
                  Saved without a spec: a ResNet's architecture is read off its shapes.
"""

from __future__ import annotations

import json
from functools import partial

import torch
import torch.nn as nn
import torchvision
from safetensors import safe_open
from safetensors.torch import save_file
from torchvision.models import efficientnet, mobilenet_v2, mobilenetv3, regnet, shufflenetv2, vgg

METADATA_KEY = "reflow_model"


def small_vgg(cfg: dict) -> nn.Module:
    model = vgg.VGG(vgg.make_layers(cfg["features"], batch_norm=True), init_weights=False)
    # torchvision's classifier is 512*7*7 -> 4096 -> 4096 -> 1000; the same layout, any width.
    c, p, h = [w for w in cfg["features"] if w != "M"][-1], cfg["pool"], cfg["hidden"]
    model.avgpool = nn.AdaptiveAvgPool2d((p, p))
    model.classifier = nn.Sequential(
        nn.Linear(c * p * p, h), nn.ReLU(True), nn.Dropout(),
        nn.Linear(h, h), nn.ReLU(True), nn.Dropout(),
        nn.Linear(h, cfg["num_classes"]),
    )
    return model


def vgg_from_shapes(sd: dict[str, torch.Tensor]) -> nn.Module:
    """The VGG-BN (features 3x3 conv + BN + ReLU, 2x2 pools where the indices skip one,
    ending with a pool) whose widths are `sd`'s shapes: a channel-pruned one, say."""
    convs = sorted(int(k.split(".")[1]) for k in sd if k.startswith("features.") and k.endswith(".weight")
                   and sd[k].dim() == 4)
    features = []
    for i, nxt in zip(convs, convs[1:] + [None]):
        features.append(int(sd[f"features.{i}.weight"].shape[0]))
        if nxt is None or nxt == i + 4:
            features.append("M")
    flat, c = sd["classifier.0.weight"].shape[1], features[-2]
    config = {"features": features, "pool": int(round((flat // c) ** 0.5)),
              "hidden": int(sd["classifier.0.weight"].shape[0]), "num_classes": int(sd["classifier.6.weight"].shape[0])}
    return build({"family": "vgg", "config": config, "in_channels": int(sd["features.0.weight"].shape[1])})


def small_regnet(cfg: dict) -> nn.Module:
    n = len(cfg["depths"])
    params = regnet.BlockParams(
        depths=cfg["depths"], widths=cfg["widths"], group_widths=[cfg["group_width"]] * n,
        bottleneck_multipliers=[1.0] * n, strides=[2] * n, se_ratio=cfg["se_ratio"],
    )
    return regnet.RegNet(params, num_classes=cfg["num_classes"], stem_width=cfg["stem_width"])


def small_mobilenet_v2(cfg: dict) -> nn.Module:
    return mobilenet_v2(width_mult=cfg["width_mult"], num_classes=cfg["num_classes"])


def small_mobilenet_v3(cfg: dict) -> nn.Module:
    setting, last = mobilenetv3._mobilenet_v3_conf(cfg["arch"], width_mult=cfg["width_mult"])
    return mobilenetv3.MobileNetV3(setting, last, num_classes=cfg["num_classes"])


def small_efficientnet(cfg: dict) -> nn.Module:
    setting, last = efficientnet._efficientnet_conf(
        "efficientnet_b0", width_mult=cfg["width_mult"], depth_mult=cfg["depth_mult"])
    norm = partial(nn.BatchNorm2d, eps=cfg.get("bn_eps", 1e-5))
    return efficientnet.EfficientNet(setting, 0.2, last_channel=last, num_classes=cfg["num_classes"],
                                     norm_layer=norm)


def small_shufflenet_v2(cfg: dict) -> nn.Module:
    return shufflenetv2.ShuffleNetV2(cfg["stages_repeats"], cfg["stages_out_channels"],
                                     num_classes=cfg["num_classes"])


class SmallCnn(nn.Module):
    """A VGG-style network that is not torchvision's: conv -> ReLU -> BN (the batch norm
    after the activation), max pools, and a classifier head (the `vgg_style` example)."""

    def __init__(self, cfg: dict):
        super().__init__()
        w = cfg["widths"]
        self.features = nn.Sequential(
            nn.Conv2d(1, w[0], 3, padding=1), nn.ReLU(), nn.BatchNorm2d(w[0]),
            nn.Conv2d(w[0], w[1], 3, padding=1), nn.ReLU(), nn.BatchNorm2d(w[1]),
            nn.MaxPool2d(2),
            nn.Conv2d(w[1], w[2], 3, padding=1), nn.ReLU(), nn.BatchNorm2d(w[2]),
            nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((3, 3))
        self.classifier = nn.Sequential(
            nn.Linear(w[2] * 9, cfg["hidden"]), nn.ReLU(), nn.Dropout(),
            nn.Linear(cfg["hidden"], cfg["num_classes"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


BUILDERS = {
    "small_cnn": SmallCnn,
    "vgg": small_vgg,
    "regnet": small_regnet,
    "mobilenet_v2": small_mobilenet_v2,
    "mobilenet_v3": small_mobilenet_v3,
    "efficientnet": small_efficientnet,
    "shufflenet_v2": small_shufflenet_v2,
}


def patch_in_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """Replace the first convolution by one of `in_channels` inputs (same name, same rest)."""
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == in_channels:
        return model
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], new)
    return model


def build(spec: dict) -> nn.Module:
    family, cfg = spec["family"], spec["config"]
    if family == "resnet":
        from torch_resnet import build_resnet

        return build_resnet(in_channels=spec.get("in_channels", 3), **cfg).eval()
    if family in BUILDERS:
        model = BUILDERS[family](cfg)
    elif hasattr(torchvision.models, family):
        model = getattr(torchvision.models, family)(num_classes=cfg["num_classes"])
    else:
        raise ValueError(f"unknown family {family!r}")
    return patch_in_channels(model, spec.get("in_channels", 3)).eval()


def save(model: nn.Module, spec: dict, path) -> None:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = None if spec["family"] == "resnet" else {METADATA_KEY: json.dumps(spec)}
    save_file(state, str(path), metadata=metadata)


def spec_of(path) -> dict | None:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else None
