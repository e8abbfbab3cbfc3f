"""Generate the reference test fixtures of `reflow` in tests/fixtures/.

Deterministic (fixed seeds, CPU, one thread) and fast (a few seconds).

Writes:
    resnet20_cifar.safetensors     state dict of a randomized CIFAR ResNet-20
    resnet20_cifar.io.safetensors  input, logits and every BatchNorm2d output
    resnext_small.safetensors      state dict of a small randomized ResNeXt
    resnext_small.io.safetensors   input, logits and every BatchNorm2d output
    layers.safetensors             single-layer cases: <case>.input/.output/.weight/...
    layers.json                    the configuration of every single-layer case

Precision: all parameters and inputs are generated, then rounded to float32,
and those float32 values are what is stored. The reference outputs are then
computed in float64 from exactly those values and rounded to float32 once, so
the stored outputs carry no float32 accumulation error of PyTorch's own; a
float32 implementation should match them to its own rounding error only.

Usage: /root/venvs/ref/bin/python scripts/make_fixtures.py [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import zlib
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

sys.dont_write_bytecode = True  # keep scripts/ free of __pycache__
sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_resnet import build_resnet, randomize_  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tests" / "fixtures"
MAX_TOTAL_BYTES = 5 * 1024 * 1024

# ---------------------------------------------------------------------------
# Whole-network fixtures
# ---------------------------------------------------------------------------

MODELS = {
    "resnet20_cifar": dict(
        config=dict(
            block="basic", layers=[3, 3, 3], planes=[16, 32, 64], stem_width=16,
            stem="cifar", in_channels=3, num_classes=10,
        ),
        input_shape=(2, 3, 16, 16),
        seed=20,
    ),
    "resnext_small": dict(
        config=dict(
            block="bottleneck", layers=[2, 2, 2, 1], planes=[16, 32, 64, 128], stem_width=16,
            stem="imagenet", in_channels=3, num_classes=7, groups=4, width_per_group=16,
        ),
        input_shape=(2, 3, 64, 64),
        seed=50,
    ),
}


@torch.no_grad()
def forward_with_bn_outputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eval-mode forward; returns the logits and every BatchNorm2d output by module name.

    torchvision's blocks apply `ReLU(inplace=True)` right after most BNs, which
    would overwrite the tensor a hook sees, so the hook stores a clone.
    """
    bn_out: dict[str, torch.Tensor] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            def hook(_m, _inp, out, name=name):
                bn_out[name] = out.detach().clone()
            handles.append(m.register_forward_hook(hook))
    try:
        logits = model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return logits, bn_out


def make_model_fixture(out_dir: Path, name: str, spec: dict) -> list[Path]:
    cfg = spec["config"]
    model = randomize_(build_resnet(**cfg), seed=spec["seed"]).eval()  # float32 parameters
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    x = torch.randn(spec["input_shape"], generator=gen, dtype=torch.float32)

    # Reference computed in float64 from the exact float32 values.
    model64 = copy.deepcopy(model).double()
    logits64, bn64 = forward_with_bn_outputs(model64, x.double())

    # For information: how far PyTorch's own float32 forward is from it.
    logits32, _ = forward_with_bn_outputs(model, x)
    f32_err = (logits32.double() - logits64).abs().max().item()

    # The state dict exactly as torchvision would save it (num_batches_tracked: int64, 0-dim).
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    weights_path = out_dir / f"{name}.safetensors"
    save_file(state, str(weights_path))

    io = {"input": x.contiguous(), "logits": logits64.float().contiguous()}
    for bn_name, t in bn64.items():
        io[f"bn/{bn_name}"] = t.float().contiguous()
    io_path = out_dir / f"{name}.io.safetensors"
    # A single metadata entry on purpose: safetensors writes the metadata map in
    # hash order, so with two or more keys the file bytes change from run to run.
    metadata = {"config": json.dumps(cfg)}
    save_file(io, str(io_path), metadata=metadata)

    n_params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n_params:,} parameters, {len(state)} state-dict tensors, {len(bn64)} BatchNorm2d outputs")
    print(f"  logits shape {tuple(logits64.shape)}  max|logits| = {logits64.abs().max().item():.4g}"
          f"  (PyTorch float32 forward differs by {f32_err:.3g})")
    width = max(len(k) for k in bn64)
    for bn_name, t in bn64.items():
        print(f"  bn/{bn_name:<{width}}  {str(tuple(t.shape)):<18} max|.| = {t.abs().max().item():7.4g}"
              f"  rms = {t.pow(2).mean().sqrt().item():.4g}")
    return [weights_path, io_path]


# ---------------------------------------------------------------------------
# Single-layer fixtures
# ---------------------------------------------------------------------------


def conv2d_case(name, in_channels, out_channels, kernel, stride, padding, dilation=(1, 1), groups=1,
                bias=False, input_hw=(8, 8)):
    return dict(
        name=name, kind="conv2d", in_channels=in_channels, out_channels=out_channels,
        kernel=list(kernel), stride=list(stride), padding=list(padding), dilation=list(dilation),
        groups=groups, bias=bias, _input_shape=(2, in_channels, *input_hw),
    )


def max_pool2d_case(name, kernel, stride, padding, input_shape, negative=False):
    return dict(
        name=name, kind="max_pool2d", kernel=list(kernel), stride=list(stride), padding=list(padding),
        dilation=[1, 1], _input_shape=input_shape, _negative=negative,
    )


def batch_norm2d_case(name, num_features, eps, input_hw):
    return dict(name=name, kind="batch_norm2d", num_features=num_features, eps=eps,
                _input_shape=(2, num_features, *input_hw))


def linear_case(name, in_features, out_features, bias):
    return dict(name=name, kind="linear", in_features=in_features, out_features=out_features, bias=bias,
                _input_shape=(2, in_features))


# Keys starting with "_" steer the generation and are not written to layers.json.
LAYER_CASES = [
    conv2d_case("conv3x3_pad1", 4, 6, (3, 3), (1, 1), (1, 1), input_hw=(8, 8)),
    conv2d_case("conv3x3_stride2_bias", 4, 6, (3, 3), (2, 2), (1, 1), bias=True, input_hw=(10, 10)),
    conv2d_case("conv3x3_dilation2", 3, 5, (3, 3), (1, 1), (2, 2), dilation=(2, 2), bias=True, input_hw=(9, 9)),
    conv2d_case("conv3x3_groups4_stride2", 8, 12, (3, 3), (2, 2), (1, 1), groups=4, bias=True,
                input_hw=(10, 10)),
    conv2d_case("conv3x3_depthwise", 6, 6, (3, 3), (1, 1), (1, 1), groups=6, input_hw=(7, 7)),
    # Depthwise with channel multiplier 2 (each input channel feeds two outputs).
    conv2d_case("conv3x3_depthwise_mult2", 4, 8, (3, 3), (1, 1), (1, 1), groups=4, bias=True, input_hw=(6, 6)),
    conv2d_case("conv3x1_stride2x1_pad1x0", 3, 4, (3, 1), (2, 1), (1, 0), bias=True, input_hw=(9, 6)),
    # Everything asymmetric at once: kernel, stride, padding and dilation.
    conv2d_case("conv1x3_stride1x2_pad0x2_dil1x2", 3, 4, (1, 3), (1, 2), (0, 2), dilation=(1, 2),
                input_hw=(5, 11)),
    conv2d_case("conv1x1_stride1", 8, 16, (1, 1), (1, 1), (0, 0), input_hw=(5, 5)),
    conv2d_case("conv1x1_stride2", 8, 16, (1, 1), (2, 2), (0, 0), input_hw=(7, 7)),
    conv2d_case("conv7x7_stride2_pad3", 3, 8, (7, 7), (2, 2), (3, 3), input_hw=(12, 12)),
    # Odd, non-square input: 9x7 -> 5x4 (odd output height).
    conv2d_case("conv3x3_stride2_in9x7", 3, 4, (3, 3), (2, 2), (1, 1), input_hw=(9, 7)),
    # Output size needs floor division: (10 + 2 - 3) / 2 + 1 = 5.5 -> 5, (8 + 2 - 3) / 2 + 1 -> 4.
    conv2d_case("conv3x3_stride2_in10x8_floor", 3, 4, (3, 3), (2, 2), (1, 1), input_hw=(10, 8)),
    # All inputs strictly negative: implicit padding must behave as -inf, never as 0.
    max_pool2d_case("maxpool3x3_stride2_pad1_negative", (3, 3), (2, 2), (1, 1), (2, 4, 9, 9), negative=True),
    max_pool2d_case("maxpool3x3_stride2_pad1_in10x7", (3, 3), (2, 2), (1, 1), (2, 3, 10, 7)),
    max_pool2d_case("maxpool2x2_stride2", (2, 2), (2, 2), (0, 0), (2, 4, 8, 8)),
    # Odd input: the last row/column is dropped (floor mode).
    max_pool2d_case("maxpool2x2_stride2_in7x9", (2, 2), (2, 2), (0, 0), (2, 3, 7, 9)),
    batch_norm2d_case("batchnorm_eps1e-5", 6, 1e-5, (5, 5)),
    batch_norm2d_case("batchnorm_eps1e-3", 4, 1e-3, (3, 7)),
    linear_case("linear_bias", 10, 5, bias=True),
    linear_case("linear_nobias", 7, 3, bias=False),
]


@torch.no_grad()
def make_layer_case(case: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """Generate one case: returns (json entry, tensors keyed '<name>.<field>')."""
    name = case["name"]
    # Seed per case from its name, so adding or reordering cases changes nothing else.
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))

    def randn(*shape, std=1.0):
        return (torch.randn(shape, generator=gen, dtype=torch.float64) * std).float()

    def rand(*shape, lo=0.0, hi=1.0):
        return (lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)).float()

    x = randn(*case["_input_shape"])
    t: dict[str, torch.Tensor] = {}
    kind = case["kind"]

    if kind == "conv2d":
        fan_in = case["in_channels"] // case["groups"] * case["kernel"][0] * case["kernel"][1]
        w = randn(case["out_channels"], case["in_channels"] // case["groups"], *case["kernel"],
                  std=1.0 / math.sqrt(fan_in))
        b = randn(case["out_channels"], std=0.5) if case["bias"] else None
        y = F.conv2d(x.double(), w.double(), None if b is None else b.double(),
                     stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                     groups=case["groups"])
        t["weight"] = w
        if b is not None:
            t["bias"] = b
    elif kind == "max_pool2d":
        if case["_negative"]:
            x = -(x.abs() + 0.1)  # strictly negative everywhere
        y = F.max_pool2d(x.double(), case["kernel"], case["stride"], case["padding"], case["dilation"])
    elif kind == "batch_norm2d":
        c = case["num_features"]
        w = rand(c, lo=0.5, hi=1.5)
        b = randn(c, std=0.5)
        mean = randn(c, std=0.5)
        # Log-uniform in [1e-3, 2]: small variances make a wrong eps clearly visible.
        var = torch.exp(rand(c, lo=math.log(1e-3), hi=math.log(2.0)).double()).float()
        y = F.batch_norm(x.double(), mean.double(), var.double(), w.double(), b.double(),
                         training=False, eps=case["eps"])
        t.update(weight=w, bias=b, running_mean=mean, running_var=var)
    elif kind == "linear":
        w = randn(case["out_features"], case["in_features"], std=1.0 / math.sqrt(case["in_features"]))
        b = randn(case["out_features"], std=0.5) if case["bias"] else None
        y = F.linear(x.double(), w.double(), None if b is None else b.double())
        t["weight"] = w
        if b is not None:
            t["bias"] = b
    else:
        raise ValueError(f"unknown kind {kind!r}")

    t["input"] = x
    t["output"] = y.float()
    tensors = {f"{name}.{k}": v.contiguous() for k, v in t.items()}
    entry = {k: v for k, v in case.items() if not k.startswith("_")}
    return entry, tensors


def make_layers_fixture(out_dir: Path) -> list[Path]:
    names = [c["name"] for c in LAYER_CASES]
    assert len(names) == len(set(names)), "layer case names must be unique"
    entries, tensors = [], {}
    print("layers:")
    for case in LAYER_CASES:
        entry, t = make_layer_case(case)
        entries.append(entry)
        tensors.update(t)
        x, y = t[f"{case['name']}.input"], t[f"{case['name']}.output"]
        print(f"  {case['name']:<34} {case['kind']:<13} {str(tuple(x.shape)):<16} -> {str(tuple(y.shape)):<16}"
              f" max|out| = {y.abs().max().item():.4g}")
    st_path = out_dir / "layers.safetensors"
    save_file(tensors, str(st_path))
    json_path = out_dir / "layers.json"
    json_path.write_text(json.dumps(entries, indent=2) + "\n")
    return [st_path, json_path]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    args = parser.parse_args()

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)

    written: list[Path] = []
    for name, spec in MODELS.items():
        written += make_model_fixture(args.out, name, spec)
    written += make_layers_fixture(args.out)

    print("files:")
    total = 0
    for p in written:
        size = p.stat().st_size
        total += size
        print(f"  {p.relative_to(REPO) if p.is_relative_to(REPO) else p}  {size:,} bytes")
    print(f"  total {total:,} bytes ({total / 2**20:.2f} MiB)")
    if total > MAX_TOTAL_BYTES:
        raise SystemExit(f"fixtures exceed the {MAX_TOTAL_BYTES:,} byte budget")


if __name__ == "__main__":
    main()
