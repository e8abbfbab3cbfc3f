"""PyTorch reference for reflow's `prune` example (one-shot magnitude pruning + REFLOW).

Takes the flags of the `prune` contract in
/work/shared/design/checkpoints-and-cli.md (all except --save-dir) and writes the
same --json report, so the Rust implementation can be compared with PyTorch run
for run:

    /root/venvs/ref/bin/python scripts/reference.py \
        --weights assets/fashion-mnist/resnet20_fmnist.safetensors --stem cifar \
        --test-images assets/fashion-mnist/t10k-images-idx3-ubyte.gz \
        --test-labels assets/fashion-mnist/t10k-labels-idx1-ubyte.gz \
        --calib-images assets/fashion-mnist/calib-images-idx3-ubyte.gz \
        --mean 0.2860 --std 0.3530 --json /tmp/reference_global.json

Protocol (see method.md for the definitions):

1. Load the state dict and build the network: a ResNet with `build_from_shapes` (its
   per-block widths too: a channel-pruned checkpoint loads);
   any other family from the spec in the checkpoint's metadata (`families.py`:
   torchvision's own classes, as `train_families_fmnist.py` writes them). Strict
   load, eval mode. Evaluate top-1 (argmax) on the whole test set in batches of
   256, and the per-BN signal metric on the first --signal-images test images.
2. For each sparsity, in the order given, starting from a fresh copy of the dense
   network: prune the Conv2d/Linear weights (minus --exclude) with
   torch.nn.utils.prune (global_unstructured or per-tensor l1_unstructured,
   L1 magnitude), make it permanent, evaluate; then REFLOW the BN running
   statistics (--mode cumulative | ema | exact) on the first --calib-count
   calibration images and evaluate again. --repair none skips REFLOW; --repair auto
   keeps whichever of the pruned and the REFLOW network is closer to the dense one on
   the calibration images, cross-fitted on their even and odd halves (reflow's
   `trust::Repair`); every run reports the fidelity to the dense network (top-1
   agreement, mean KL of the softmax outputs) and the calibration check.
   --pattern N:M (e.g. 2:4) makes one run instead: N:M masks along the input channels
   (patterns.nm_mask), tensors whose input channels are not a multiple of M left
   dense and listed as "skipped". --pattern channel (ResNets, VGG): each run removes the
   --sparsity fraction of the channels of every block's conv1 (and a bottleneck's
   conv2) or every VGG convolution, by L1 filter norm, physically
   (patterns.channel_prune), and builds the compact network from the shapes.

Data: IDX files, `.npy` arrays, a CIFAR folder, or image folders (--test-dir,
--calib-dir) through torchvision's ImageFolder, each image opened with Pillow and
converted to "L" or "RGB" for the network's input channels, then Resize(--resize),
CenterCrop(--crop), ToTensor, Normalize (--preset imagenet: 256, 224 and ImageNet's
mean/std). --calib-seed draws the calibration images as reflow does.

On bad input: a one-line error on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch.nn.utils.prune as prune  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import families  # noqa: E402
from patterns import channel_prune, nm_mask  # noqa: E402
from sparsegpt_reference import fasterprune, unfolded  # noqa: E402
from torch_resnet import build_from_shapes, infer_config  # noqa: E402

EVAL_BATCH = 256      # test-set evaluation batch (contract: whole test set, batches of 256)
SIGNAL_BATCH = 256    # batch used for the signal metric (statistics accumulated in float64)


class InputError(Exception):
    """Bad user input: reported as a one-line error, exit code 2."""


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def read_idx(path: str) -> np.ndarray:
    """Read a u8 IDX file, gzip-compressed or not (detected from the gzip magic bytes)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise InputError(f"{path}: corrupt gzip data ({e})") from None
    if len(raw) < 4:
        raise InputError(f"{path}: too short for an IDX header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise InputError(f"{path}: not a u8 IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise InputError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    count = math.prod(dims)
    if len(raw) - offset != count:
        raise InputError(f"{path}: header {dims} needs {count} data bytes but {len(raw) - offset} follow")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def load_images(path: str, mean: list[float], std: list[float]) -> torch.Tensor:
    """IDX images [N, H, W] or [N, C, H, W] -> float32 [N, C, H, W], (u8/255 - mean_c)/std_c."""
    arr = read_idx(path)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise InputError(f"{path}: images must be [N, H, W] or [N, C, H, W], got dims {list(arr.shape)}")
    if arr.shape[1] != len(mean):
        raise InputError(f"{path}: {arr.shape[1]} channel(s) but --mean/--std give {len(mean)} value(s)")
    x = torch.from_numpy(arr.copy()).float() / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


def load_cifar(folder: str, split: str, mean: list[float], std: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 (data_batch_1..5.bin, test_batch.bin; 1 label byte + 3072 pixels per
    record) or CIFAR-100 (train.bin, test.bin; coarse + fine label bytes, the fine one
    used) binary files -> normalised float32 [N, 3, 32, 32] and int64 labels."""
    d = Path(folder)
    if (d / "test_batch.bin").exists() or (d / "data_batch_1.bin").exists():
        head = 1
        files = [d / "test_batch.bin"] if split == "test" else \
            [d / f"data_batch_{i}.bin" for i in range(1, 6) if (d / f"data_batch_{i}.bin").exists()]
    else:
        head = 2
        files = [d / ("test.bin" if split == "test" else "train.bin")]
    raw = np.concatenate([np.frombuffer(f.read_bytes(), dtype=np.uint8) for f in files])
    records = raw.reshape(-1, head + 3072)
    x = torch.from_numpy(records[:, head:].reshape(-1, 3, 32, 32).copy()).float() / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / sd, torch.from_numpy(records[:, head - 1].astype(np.int64))


def load_npy_images(path: str, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 [N, H, W] / [N, C, H, W] normalised as IDX images; float32 [N, C, H, W] as is."""
    arr = np.load(path)
    if arr.dtype == np.float32:
        return torch.from_numpy(arr.copy())
    if arr.ndim == 3:
        arr = arr[:, None]
    x = torch.from_numpy(arr.copy()).float() / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / sd


IMAGENET = dict(resize=256, crop=224, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def image_folder(folder: str, in_channels: int, args):
    """torchvision's ImageFolder, each image opened with Pillow and converted to "L" (1
    channel) or "RGB" (3), then Resize(--resize), CenterCrop(--crop), ToTensor,
    Normalize(--mean, --std)."""
    from PIL import Image
    from torchvision import datasets, transforms as T

    mode = {1: "L", 3: "RGB"}.get(in_channels)
    if mode is None:
        raise InputError(f"image folders give 1- or 3-channel images; the network takes {in_channels}")

    def loader(path):
        with open(path, "rb") as f:
            return Image.open(f).convert(mode)

    steps = []
    if args.resize:
        steps.append(T.Resize(args.resize))
    if args.crop:
        steps.append(T.CenterCrop(args.crop))
    steps += [T.ToTensor(), T.Normalize(args.mean, args.std)]
    try:
        return datasets.ImageFolder(folder, transform=T.Compose(steps), loader=loader)
    except (FileNotFoundError, OSError) as e:
        raise InputError(f"{folder}: {e}") from e


def stack(ds, indices) -> torch.Tensor:
    return torch.stack([ds[i][0] for i in indices])


def shuffled(n: int, seed: int) -> list[int]:
    """0..n-1 shuffled as reflow's ImageBatches::shuffled does: Fisher-Yates driven by
    xorshift64* seeded with seed ^ 0x2545F4914F6CDD1D."""
    mask, mult = (1 << 64) - 1, 0x2545F4914F6CDD1D
    state = (seed ^ mult) & mask
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        state ^= state >> 12
        state ^= (state << 25) & mask
        state ^= state >> 27
        j = ((state * mult) & mask) % (i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def load_labels(path: str) -> torch.Tensor:
    arr = read_idx(path)
    if arr.ndim != 1:
        raise InputError(f"{path}: labels must be [N], got dims {list(arr.shape)}")
    return torch.from_numpy(arr.astype(np.int64))


# ---------------------------------------------------------------------------
# Model, evaluation and the signal metric
# ---------------------------------------------------------------------------


def load_model(path: str, stem: str) -> tuple[nn.Module, dict]:
    from safetensors.torch import load_file

    try:
        sd = load_file(path)
    except Exception as e:  # safetensors raises several error types
        raise InputError(f"cannot load safetensors file {path}: {e}") from None
    # Weights may be stored as f16 / bf16 / f64; compute in f32 (num_batches_tracked stays int64).
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    spec = families.spec_of(path)
    if spec is not None:
        model = families.build(spec)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise InputError(f"{path}: does not fit its {spec['family']} spec: {str(e).splitlines()[0]}") from None
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        return model.eval(), {"family": spec["family"], "in_channels": first.in_channels}
    try:
        cfg = infer_config(sd, stem, uniform=False)
        model = build_from_shapes(sd, stem)
        model.load_state_dict(sd, strict=True)
    except (KeyError, ValueError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        raise InputError(f"{path}: not a torchvision-layout ResNet for stem {stem!r}: {msg}") from None
    return model.eval(), {**cfg, "family": "resnet"}


def bn_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """BatchNorm2d modules in module (= state-dict) order, with their state-dict prefixes."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


def prunable_params(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(parameter name, module) for the weight of every Conv2d and Linear, in module order."""
    return [(f"{name}.weight", m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@torch.no_grad()
def logits_of(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The logits of every image, eval mode, batches of 256."""
    model.eval()
    return torch.cat([model(images[i: i + EVAL_BATCH]) for i in range(0, len(images), EVAL_BATCH)])


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, torch.Tensor]:
    """Top-1 accuracy (argmax of the logits) over the whole set, and the logits."""
    logits = logits_of(model, images)
    correct = int((logits.argmax(dim=1) == labels).sum())
    return correct / len(images), correct, logits


def fidelity(dense: torch.Tensor, other: torch.Tensor, keep=None) -> dict:
    """Top-1 agreement and mean KL(softmax(dense) || softmax(other)) over the rows
    `keep` selects (all by default), in float64 (method.md, "Fidelity")."""
    if keep is not None:
        dense, other = dense[keep], other[keep]
    log_p = torch.log_softmax(dense.double(), dim=1)
    log_q = torch.log_softmax(other.double(), dim=1)
    kl = torch.nn.functional.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
    agree = (dense.argmax(dim=1) == other.argmax(dim=1)).double().mean()
    return {"images": len(dense), "agreement": float(agree), "kl": float(kl)}


NOISE_KL_LIMIT = 2e-3  # reflow::trust::NOISE_KL_LIMIT


def round_up_2_digits(n: int) -> int:
    unit = 1
    while n // unit >= 100:
        unit *= 10
    return -(-n // unit) * unit


def repair(net: nn.Module, calib: torch.Tensor, dense_calib: torch.Tensor, args) -> dict:
    """--repair: reflow, none or auto, as reflow::trust::Repair does it. REFLOW from the
    even- and from the odd-numbered calibration images (calib[0::2], calib[1::2]),
    each judged on the other half; the pruned network judged on all; the calibration
    check compares the two halves' networks on every image. Repairs `net` in place."""
    if args.repair == "none":
        return {"repair": "none", "repair_scores": {}, "calibration_check": None}
    scores = {"none": fidelity(dense_calib, logits_of(net, calib))}
    halves = []
    for k in range(2):
        trial = copy.deepcopy(net)
        reflow(trial, calib[k::2], args)
        halves.append(logits_of(trial, calib))
    n = len(calib)
    index = torch.arange(n)
    on_odd = fidelity(dense_calib, halves[0], index % 2 == 1)
    on_even = fidelity(dense_calib, halves[1], index % 2 == 0)
    scores["reflow"] = {
        "images": n,
        "agreement": (on_odd["agreement"] * on_odd["images"] + on_even["agreement"] * on_even["images"]) / n,
        "kl": (on_odd["kl"] * on_odd["images"] + on_even["kl"] * on_even["images"]) / n,
    }
    there, back = fidelity(halves[0], halves[1]), fidelity(halves[1], halves[0])
    between = (there["kl"] + back["kl"]) / 2
    noise = between / 4
    needed = round_up_2_digits(math.ceil(n * noise / NOISE_KL_LIMIT))
    check = {"images": n, "agreement_between_halves": there["agreement"], "kl_between_halves": between,
             "predicted_noise_kl": noise, "images_needed": needed, "warning": noise > NOISE_KL_LIMIT}
    chosen = "reflow"
    if args.repair == "auto" and not scores["reflow"]["kl"] < scores["none"]["kl"]:
        chosen = "none"
    if chosen == "reflow":
        reflow(net, calib, args)
    return {"repair": chosen, "repair_scores": scores, "calibration_check": check}


@torch.no_grad()
def bn_signal(model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Signal metric of every BN layer (eval mode) on `images`.

    For BN output Y [N, C, H, W]: v_c = biased variance of Y[:, c] over (N, H, W),
    S = mean_c v_c. Per-channel count, sum and sum of squares are accumulated in
    float64 over batches. The statistics are taken inside the forward hook, i.e.
    before torchvision's in-place ReLU can overwrite the BN output.
    """
    model.eval()
    if len(images) == 0:
        return {}
    sums: dict[str, list] = {}

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            y = output.detach().double()
            acc = sums.setdefault(name, [0, 0.0, 0.0])
            acc[0] += y.shape[0] * y.shape[2] * y.shape[3]
            acc[1] = acc[1] + y.sum(dim=(0, 2, 3))
            acc[2] = acc[2] + (y * y).sum(dim=(0, 2, 3))
        return hook

    handles = [m.register_forward_hook(make_hook(name)) for name, m in bn_layers(model)]
    try:
        for i in range(0, len(images), SIGNAL_BATCH):
            model(images[i: i + SIGNAL_BATCH])
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, _ in bn_layers(model):
        n, s, sq = sums[name]
        mean = s / n
        var = (sq / n - mean * mean).clamp_min(0.0)  # biased variance per channel
        out[name] = float(var.mean())
    return out


# ---------------------------------------------------------------------------
# Pruning
# ---------------------------------------------------------------------------


def is_excluded(name: str, exclude: list[str]) -> bool:
    """A parameter is excluded if its name starts with any --exclude entry (plain string prefix)."""
    return any(name.startswith(e) for e in exclude)


def prune_model(model: nn.Module, sparsity: float, scope: str, exclude: list[str]) -> None:
    """One-shot L1-magnitude pruning of the non-excluded Conv2d/Linear weights, made permanent.

    torch.nn.utils.prune zeroes exactly round(s * N) weights (Python round: half to
    even) with the smallest |w|: over the concatenation of all selected tensors for
    the global scope, per tensor for the layer scope.
    """
    targets = [(m, "weight") for name, m in prunable_params(model) if not is_excluded(name, exclude)]
    if not targets:
        return
    if scope == "global":
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    else:
        for m, pname in targets:
            prune.l1_unstructured(m, pname, amount=sparsity)
    for m, pname in targets:
        prune.remove(m, pname)  # weight = weight_orig * mask, a plain parameter again


@torch.no_grad()
def prune_nm(model: nn.Module, n: int, m: int, exclude: list[str]) -> list[str]:
    """N:M pruning of the non-excluded Conv2d/Linear weights (groups along the input
    channels, patterns.nm_mask); returns the tensors left dense (axis not a multiple of M)."""
    skipped = []
    for name, module in prunable_params(model):
        if is_excluded(name, exclude):
            continue
        mask = nm_mask(module.weight.detach(), n, m, "channels")
        if mask is None:
            skipped.append(name)
        else:
            module.weight.mul_(1 - mask.to(module.weight.dtype))
    return skipped


@torch.no_grad()
def run_with_input_hooks(model: nn.Module, calib: torch.Tensor, batch: int, record, only: str | None = None) -> None:
    """One eval pass over `calib` in batches, `record(name)` hooked before every
    Conv2d/Linear (named by its weight), or the one named `only`."""
    hooks = [m.register_forward_pre_hook(record(name)) for name, m in prunable_params(model)
             if only is None or name == only]
    model.eval()
    for i in range(0, len(calib), batch):
        model(calib[i:i + batch])
    for h in hooks:
        h.remove()


@torch.no_grad()
def wanda_sums(model: nn.Module, calib: torch.Tensor, batch: int, only: str | None = None) -> dict[str, torch.Tensor]:
    """Wanda's input statistics (method.md, "Activation-aware pruners"): for every
    Conv2d/Linear weight, the sum over the calibration images and output positions of
    the squared unfolded input columns (F.unfold with the layer's window; a Linear's
    input features), float64, indexed (c, ky, kx) over all input channels. Measured on
    the dense network in eval mode."""
    sums: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(module, args):
            x = args[0].double()
            if isinstance(module, nn.Linear):
                s = (x**2).reshape(-1, x.shape[-1]).sum(0)
            else:
                cols = F.unfold(x, module.kernel_size, dilation=module.dilation,
                                padding=module.padding, stride=module.stride)
                s = (cols**2).sum((0, 2))
            sums[name] = sums[name] + s if name in sums else s
        return hook

    run_with_input_hooks(model, calib, batch, record, only)
    return sums


@torch.no_grad()
def prune_wanda(model: nn.Module, sums: dict[str, torch.Tensor], sparsity: float,
                nm: tuple[int, int] | None, exclude: list[str]) -> list[str]:
    """Wanda (Sun et al. 2024, locuslab/wanda prune_wanda, extended to convolutions as
    method.md defines it): weight W[o, j] of weight.flatten(1) scores |W[o, j]| *
    sqrt(sums[j]) (a grouped convolution: the columns of the output's group); per row
    the round(s * row) smallest are zeroed, or with N:M the M - N smallest of every M
    consecutive weights of a row (rows not a multiple of M: left dense, returned).
    Ties: the lower index first (torch.sort(stable=True))."""
    skipped = []
    for name, module in prunable_params(model):
        if is_excluded(name, exclude):
            continue
        w = module.weight.detach().flatten(1)
        out, row = w.shape
        s = sums[name]
        groups = s.numel() // row
        norms = s.reshape(groups, row).sqrt().repeat_interleave(out // groups, dim=0)
        score = w.double().abs() * norms
        if nm is not None:
            n, m = nm
            if row % m:
                skipped.append(name)
                continue
            grouped = score.reshape(out, row // m, m)
            order = torch.sort(grouped, dim=2, stable=True).indices[:, :, : m - n]
            mask = torch.zeros_like(grouped, dtype=torch.bool).scatter_(2, order, True).reshape(out, row)
        else:
            order = torch.sort(score, dim=1, stable=True).indices[:, : round(sparsity * row)]
            mask = torch.zeros_like(score, dtype=torch.bool).scatter_(1, order, True)
        module.weight.mul_((~mask).reshape(module.weight.shape).to(module.weight.dtype))
    return skipped


@torch.no_grad()
def sparsegpt_hessians(model: nn.Module, calib: torch.Tensor, batch: int,
                       only: str | None = None) -> dict[str, list[torch.Tensor]]:
    """SparseGPT's input Hessians (float64): for every Conv2d/Linear weight, per group,
    the sum of x x^T over the unfolded input columns of the calibration images, on the
    dense network in eval mode (the reference's 2/n scale changes nothing)."""
    hessians: dict[str, list[torch.Tensor]] = {}

    def record(name: str):
        def hook(module, args):
            hs = hessians.setdefault(name, [])
            for g, x in enumerate(unfolded(module, args[0])):
                h = x @ x.t()
                if g < len(hs):
                    hs[g] += h
                else:
                    hs.append(h)
        return hook

    run_with_input_hooks(model, calib, batch, record, only)
    return hessians


def prune_sequentially(model: nn.Module, measure, prune_by, sparsity: float, nm, exclude: list[str]) -> list[str]:
    """The sequential mode (--inputs sequential): every non-excluded Conv2d/Linear in
    module order, its statistics `measure(model, name)` taken on the network as pruned
    so far, then pruned by `prune_by` (that layer alone). Returns the tensors N:M left
    dense."""
    skipped = []
    names = [name for name, _ in prunable_params(model) if not is_excluded(name, exclude)]
    for name in names:
        others = [n for n in names if n != name]
        skipped += prune_by(model, measure(model, name), sparsity, nm, exclude + others)
    return skipped


@torch.no_grad()
def prune_sparsegpt(model: nn.Module, hessians: dict[str, list[torch.Tensor]], sparsity: float,
                    nm: tuple[int, int] | None, exclude: list[str]) -> list[str]:
    """SparseGPT (IST-DASLab/sparsegpt fasterprune, blocks of 128, 1 % dampening) on
    every non-excluded Conv2d/Linear weight.flatten(1), group by group, the kept weights
    updated; with N:M, rows not a multiple of M are left dense (returned)."""
    skipped = []
    for name, module in prunable_params(model):
        if is_excluded(name, exclude):
            continue
        w = module.weight.detach().flatten(1)
        out, row = w.shape
        if nm is not None and row % nm[1]:
            skipped.append(name)
            continue
        hs = hessians[name]
        per = out // len(hs)
        prunen, prunem = (nm[1] - nm[0], nm[1]) if nm is not None else (0, 0)
        parts = [fasterprune(w[g * per:(g + 1) * per], h, sparsity, prunen, prunem) for g, h in enumerate(hs)]
        module.weight.copy_(torch.cat(parts).reshape(module.weight.shape).to(module.weight.dtype))
    return skipped


def channel_pruned(model: nn.Module, family: str, stem: str, fraction: float,
                   exclude: list[str]) -> tuple[nn.Module, list[dict], list[str]]:
    """The compact network (patterns.channel_prune, L1), its per-conv channel counts, and the skipped."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    compact_sd, removals, skipped = channel_prune(sd, fraction, "l1", tuple(exclude))
    compact = families.vgg_from_shapes(compact_sd) if family == "vgg" else build_from_shapes(compact_sd, stem)
    compact.load_state_dict(compact_sd, strict=True)
    layers = [{"name": r["conv"], "channels": r["channels"], "kept": r["channels"] - len(r["removed"])} for r in removals]
    return compact.eval(), layers, [conv for conv, _ in skipped]


def layer_report(model: nn.Module) -> tuple[list[dict], float]:
    """Per-tensor sparsity (fraction of exact zeros) of every Conv2d/Linear weight, and the total."""
    layers, zeros, total = [], 0, 0
    for name, m in prunable_params(model):
        w = m.weight.detach()
        z = int((w == 0).sum())
        layers.append({"name": name, "numel": w.numel(), "sparsity": z / w.numel()})
        zeros += z
        total += w.numel()
    return layers, (zeros / total if total else 0.0)


# ---------------------------------------------------------------------------
# REFLOW
# ---------------------------------------------------------------------------


@torch.no_grad()
def reflow_running(model: nn.Module, calib: torch.Tensor, batch: int, momentum: float | None) -> None:
    """Cumulative (momentum=None) or EMA (momentum=m) re-estimation of BN running statistics.

    Every BN layer is reset (mean 0, var 1, num_batches_tracked 0); the network runs
    over the calibration images in file order, in batches of `batch` (the last one
    may be smaller), with every BN in train mode and every other module in eval mode
    (dropout and stochastic depth stay the identity). Train-mode BN normalises by the
    batch statistics and updates its running statistics with the unbiased batch
    variance. Only BN buffers change: there are no gradients.
    """
    model.eval()
    for _, bn in bn_layers(model):
        bn.reset_running_stats()
        bn.momentum = momentum
        bn.train()
    for i in range(0, len(calib), batch):
        model(calib[i: i + batch])
    model.eval()


class _StopForward(Exception):
    """Raised from a hook to end a forward pass once the layer of interest has been seen."""


@torch.no_grad()
def reflow_exact(model: nn.Module, calib: torch.Tensor, batch: int) -> None:
    """Layer-sequential population statistics.

    For each BN in module order, with every BN in eval mode and the upstream BN
    layers already recalibrated: mean and unbiased variance of its input over all
    calibration images (per batch in float64, batches merged with Chan's parallel
    formula), stored as running_mean / running_var; num_batches_tracked = number of
    batches. The forward pass stops at the BN being calibrated.
    """
    model.eval()
    num_batches = math.ceil(len(calib) / batch)
    for _, bn in bn_layers(model):
        state = {"n": 0, "mean": None, "m2": None}

        def pre_hook(_module, inputs, state=state):
            x = inputs[0].detach().double()
            nb = x.shape[0] * x.shape[2] * x.shape[3]
            bmean = x.mean(dim=(0, 2, 3))
            bm2 = ((x - bmean.view(1, -1, 1, 1)) ** 2).sum(dim=(0, 2, 3))
            if state["n"] == 0:
                state.update(n=nb, mean=bmean, m2=bm2)
            else:
                n = state["n"] + nb
                delta = bmean - state["mean"]
                state["mean"] = state["mean"] + delta * (nb / n)
                state["m2"] = state["m2"] + bm2 + delta * delta * (state["n"] * nb / n)
                state["n"] = n
            raise _StopForward

        handle = bn.register_forward_pre_hook(pre_hook)
        try:
            for i in range(0, len(calib), batch):
                try:
                    model(calib[i: i + batch])
                except _StopForward:
                    pass
        finally:
            handle.remove()
        n = state["n"]
        if n < 2:
            raise InputError(f"--mode exact needs at least 2 values per channel, got {n}")
        bn.running_mean.copy_(state["mean"].float())
        bn.running_var.copy_((state["m2"] / (n - 1)).float())
        bn.num_batches_tracked.fill_(num_batches)


def reflow(model: nn.Module, calib: torch.Tensor, args) -> None:
    if args.mode == "cumulative":
        reflow_running(model, calib, args.calib_batch, momentum=None)
    elif args.mode == "ema":
        reflow_running(model, calib, args.calib_batch, momentum=args.momentum)
    else:
        reflow_exact(model, calib, args.calib_batch)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def float_list(text: str) -> list[float]:
    try:
        vals = [float(t) for t in text.split(",") if t.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("empty list")
    return vals


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="PyTorch reference of reflow's prune example")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--stem", choices=["cifar", "imagenet"], default="imagenet")
    ap.add_argument("--test-images")
    ap.add_argument("--test-labels")
    ap.add_argument("--calib-images")
    ap.add_argument("--test-npy")
    ap.add_argument("--test-labels-npy")
    ap.add_argument("--calib-npy")
    ap.add_argument("--test-dir", help="ImageFolder layout: one sub-folder per class")
    ap.add_argument("--calib-dir", help="ImageFolder layout (labels unused)")
    ap.add_argument("--resize", type=int, help="torchvision Resize(N) of folder images")
    ap.add_argument("--crop", type=int, help="torchvision CenterCrop(N) of folder images")
    ap.add_argument("--preset", choices=["imagenet"], help="resize 256, crop 224, ImageNet mean/std")
    ap.add_argument("--cifar-dir", help="CIFAR-10/100 binary folder: test split, and training split for calibration")
    ap.add_argument("--calib-seed", type=int, help="seeded shuffle of the calibration set (reflow's order)")
    ap.add_argument("--calib-count", type=int, default=1024)
    ap.add_argument("--calib-batch", type=int, default=128)
    ap.add_argument("--mean", type=float_list)
    ap.add_argument("--std", type=float_list)
    ap.add_argument("--sparsity", type=float_list, default=[0.5, 0.7, 0.8, 0.9])
    ap.add_argument("--scope", choices=["global", "layer"], default="global")
    ap.add_argument("--pattern", default="unstructured", help="unstructured | N:M | channel")
    ap.add_argument("--exclude", default="", help="comma-separated parameter names or prefixes")
    ap.add_argument("--method", choices=["magnitude", "wanda", "sparsegpt"], default="magnitude",
                    help="unstructured and N:M: the smallest |w|, Wanda's |w| * ||x|| per row, or SparseGPT")
    ap.add_argument("--inputs", choices=["dense", "sequential"], default="dense",
                    help="wanda and sparsegpt: statistics on the dense network, or layer by layer on the network pruned so far")
    ap.add_argument("--mode", choices=["cumulative", "ema", "exact"], default="cumulative")
    ap.add_argument("--momentum", type=float, default=0.1)
    ap.add_argument("--repair", choices=["reflow", "none", "auto"], default="reflow")
    ap.add_argument("--test-count", type=int, help="the first N test images only")
    ap.add_argument("--signal-images", type=int, default=1000)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.preset == "imagenet":
        for key, value in IMAGENET.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    if args.mean is None or args.std is None:
        ap.error("give --mean and --std, or --preset")
    if not (args.cifar_dir or args.test_dir or (args.test_images and args.test_labels)
            or (args.test_npy and args.test_labels_npy)):
        ap.error("give --test-images and --test-labels, --test-npy and --test-labels-npy, --test-dir or --cifar-dir")
    if not (args.cifar_dir or args.calib_images or args.calib_npy or args.calib_dir):
        ap.error("give --calib-images, --calib-npy, --calib-dir or --cifar-dir")
    args.exclude = [e.strip() for e in args.exclude.split(",") if e.strip()]
    args.nm = None
    if args.pattern not in ("unstructured", "channel"):
        try:
            n, m = (int(t) for t in args.pattern.split(":"))
        except ValueError:
            ap.error(f"--pattern {args.pattern!r}: expected unstructured, channel or N:M")
        if not 0 < n < m:
            ap.error(f"--pattern {args.pattern!r}: N must be at least 1 and below M")
        args.nm = (n, m)
        args.sparsity = [1 - n / m]
    return args


def validate(args, in_channels: int, n_calib_file: int) -> None:
    if len(args.mean) != len(args.std):
        raise InputError(f"--mean has {len(args.mean)} value(s) but --std has {len(args.std)}")
    if len(args.mean) != in_channels:
        raise InputError(f"the network takes {in_channels} input channel(s) but --mean/--std give {len(args.mean)}")
    if any(s <= 0 for s in args.std):
        raise InputError("--std values must be > 0")
    for s in args.sparsity:
        if not 0.0 <= s < 1.0:
            raise InputError(f"--sparsity {s} is not in [0, 1)")
    if args.calib_count < 1 or args.calib_batch < 1:
        raise InputError("--calib-count and --calib-batch must be >= 1")
    if args.calib_count > n_calib_file:
        raise InputError(f"--calib-count {args.calib_count} but {args.calib_images} holds {n_calib_file} images")
    if args.signal_images < 0:
        raise InputError("--signal-images must be >= 0")
    if not 0.0 < args.momentum <= 1.0:
        raise InputError(f"--momentum {args.momentum} is not in (0, 1]")


def print_report(report: dict, args) -> None:
    m = report["model"]
    shape = (f"{m['block']} stages {m['stages']} groups {m['groups']} stem {m['stem']}"
             if m["family"] == "resnet" else m["family"])
    print(f"model: {shape}  params {m['params']:,}  prunable {m['prunable']:,}")
    print(f"REFLOW mode {args.mode}" + (f" (momentum {args.momentum})" if args.mode == "ema" else "")
          + f", {args.calib_count} calibration images, batch {args.calib_batch}; scope {args.scope}"
          + (f"; excluded: {', '.join(args.exclude)}" if args.exclude else ""))
    d = report["dense"]
    print(f"dense top-1: {d['top1']:.4f} ({d['correct']})\n")
    print(f"{'sparsity':>8} {'actual':>8} {'pruned top-1':>14} {'reflow top-1':>14} {'secs':>7}")
    for r in report["runs"]:
        print(f"{r['sparsity']:8.3f} {r['actual_sparsity']:8.4f} "
              f"{r['pruned_top1']:8.4f} ({r['pruned_correct']:4d}) {r['reflow_top1']:8.4f} ({r['reflow_correct']:4d}) "
              f"{r['secs']:7.2f}")
    if not d["bn_signal"]:
        return
    # Signal metric ratios S / S_dense per BN layer: pruned (p) and after REFLOW (r).
    print(f"\nBN signal (S_dense, then S/S_dense pruned p and after REFLOW r; "
          f"first {args.signal_images} test images)")
    head = f"{'bn layer':24s} {'S_dense':>9}" + "".join(
        f" {'p@' + format(r['sparsity'], 'g'):>8} {'r@' + format(r['sparsity'], 'g'):>8}" for r in report["runs"])
    print(head)
    for name, s in d["bn_signal"].items():
        row = f"{name:24s} {s:9.4f}"
        for r in report["runs"]:
            row += f" {r['bn_signal_pruned'][name] / s:8.4f} {r['bn_signal_reflow'][name] / s:8.4f}"
        print(row)


def run(args) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)

    model, cfg = load_model(args.weights, args.stem)
    in_channels = cfg["in_channels"]
    if len(args.mean) != in_channels or len(args.std) != in_channels:
        validate(args, in_channels, 0)  # raises the channel-count error
    if args.test_dir:
        test_set = image_folder(args.test_dir, in_channels, args)
        test_x = stack(test_set, range(len(test_set)))
        test_y = torch.tensor(test_set.targets, dtype=torch.int64)
    elif args.cifar_dir:
        test_x, test_y = load_cifar(args.cifar_dir, "test", args.mean, args.std)
    elif args.test_npy:
        test_x = load_npy_images(args.test_npy, args.mean, args.std)
        test_y = torch.from_numpy(np.load(args.test_labels_npy).astype(np.int64))
    else:
        test_x = load_images(args.test_images, args.mean, args.std)
        test_y = load_labels(args.test_labels)
    if len(test_x) != len(test_y):
        raise InputError(f"{len(test_x)} test images but {len(test_y)} test labels")
    if args.test_count is not None:
        if not 0 < args.test_count <= len(test_x):
            raise InputError(f"--test-count {args.test_count}: the test set has {len(test_x)} images")
        test_x, test_y = test_x[: args.test_count], test_y[: args.test_count]
    if len(test_x) == 0:
        raise InputError("the test set is empty")
    if args.calib_dir:
        calib_set = image_folder(args.calib_dir, in_channels, args)
        validate(args, in_channels, len(calib_set))
        if args.calib_seed is None:
            order = range(args.calib_count)
        else:
            order = shuffled(len(calib_set), args.calib_seed)[: args.calib_count]
        calib_all = stack(calib_set, order)  # drawn already: its first --calib-count
    elif args.calib_images:
        calib_all = load_images(args.calib_images, args.mean, args.std)
    elif args.calib_npy:
        calib_all = load_npy_images(args.calib_npy, args.mean, args.std)
    else:
        calib_all, _ = load_cifar(args.cifar_dir, "train", args.mean, args.std)
    validate(args, in_channels, len(calib_all))
    if args.calib_seed is None or args.calib_dir:
        calib = calib_all[: args.calib_count]
    else:
        calib = calib_all[torch.tensor(shuffled(len(calib_all), args.calib_seed)[: args.calib_count])]
    signal_x = test_x[: min(args.signal_images, len(test_x))]

    names = [n for n, _ in prunable_params(model)]
    for e in args.exclude:
        if not any(n.startswith(e) for n in names):
            raise InputError(f"--exclude {e!r} matches no Conv2d/Linear weight")

    report = {
        "model": {
            "family": cfg["family"],
            "params": sum(p.numel() for p in model.parameters()),
            "prunable": sum(m.weight.numel() for _, m in prunable_params(model)),
        }
    }
    if cfg["family"] == "resnet":
        report["model"].update(stem=args.stem, stages=cfg["layers"], block=cfg["block"], groups=cfg["groups"])
    t0 = time.time()
    top1, correct, dense_logits = evaluate(model, test_x, test_y)
    report["dense"] = {"top1": top1, "correct": correct, "bn_signal": bn_signal(model, signal_x)}
    dense_calib = logits_of(model, calib)
    print(f"[reference] dense top-1 {top1:.4f} ({time.time() - t0:.1f}s)", file=sys.stderr, flush=True)

    if args.pattern == "channel" and cfg["family"] not in ("resnet", "vgg"):
        raise InputError(f"--pattern channel supports ResNets and VGG; this network is a {cfg['family']}")
    if args.method != "magnitude" and args.pattern == "channel":
        raise InputError(f"--method {args.method} chooses weights, not channels")
    if args.inputs == "sequential" and args.method == "magnitude":
        raise InputError("--inputs sequential: magnitude pruning measures no inputs")
    stats, prune_by = {
        "wanda": (lambda net, only=None: wanda_sums(net, calib, args.calib_batch, only), prune_wanda),
        "sparsegpt": (lambda net, only=None: sparsegpt_hessians(net, calib, args.calib_batch, only), prune_sparsegpt),
    }.get(args.method, (lambda net, only=None: None, None))
    sums = stats(model) if args.inputs == "dense" else None
    runs = []
    for s in args.sparsity:
        t0 = time.time()
        extra = {"pattern": args.pattern}
        if prune_by is not None:
            net = copy.deepcopy(model)
            if sums is not None:
                skipped = prune_by(net, sums, s, args.nm, args.exclude)
            else:
                skipped = prune_sequentially(net, stats, prune_by, s, args.nm, args.exclude)
            if args.nm:
                extra["skipped"] = skipped
            layers, actual = layer_report(net)
        elif args.nm:
            net = copy.deepcopy(model)
            extra["skipped"] = prune_nm(net, *args.nm, args.exclude)
            layers, actual = layer_report(net)
        elif args.pattern == "channel":
            net, layers, extra["skipped"] = channel_pruned(model, cfg["family"], args.stem, s, args.exclude)
            extra["params"] = sum(p.numel() for p in net.parameters())
            kept = sum(la["kept"] for la in layers)
            total = sum(la["channels"] for la in layers)
            actual = 1 - kept / total if total else 0.0
        else:
            net = copy.deepcopy(model)
            prune_model(net, s, args.scope, args.exclude)
            layers, actual = layer_report(net)
        p_top1, p_correct, p_logits = evaluate(net, test_x, test_y)
        p_signal = bn_signal(net, signal_x)
        repaired = repair(net, calib, dense_calib, args)
        r_top1, r_correct, r_logits = evaluate(net, test_x, test_y)
        r_signal = bn_signal(net, signal_x)
        p_fid, r_fid = fidelity(dense_logits, p_logits), fidelity(dense_logits, r_logits)
        extra.update(repaired)
        extra.update(agreement_pruned=p_fid["agreement"], agreement_repaired=r_fid["agreement"],
                     kl_pruned=p_fid["kl"], kl_repaired=r_fid["kl"])
        secs = time.time() - t0
        runs.append({
            **extra,
            "scope": args.scope if args.pattern == "unstructured" and sums is None else "layer", "sparsity": s, "actual_sparsity": actual,
            "pruned_top1": p_top1, "pruned_correct": p_correct,
            "reflow_top1": r_top1, "reflow_correct": r_correct,
            "bn_signal_pruned": p_signal, "bn_signal_reflow": r_signal,
            "layers": layers, "secs": secs,
        })
        print(f"[reference] sparsity {s:g}: pruned {p_top1:.4f} -> reflow {r_top1:.4f} ({secs:.1f}s)",
              file=sys.stderr, flush=True)
    report["runs"] = runs
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_report(report, args)
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        except OSError as e:
            print(f"error: cannot write {args.json}: {e.strerror}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
