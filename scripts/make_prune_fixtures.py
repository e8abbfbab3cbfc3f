"""Generate the magnitude-pruning and REFLOW fixtures of `reflow` in tests/fixtures/.

Deterministic (fixed seed, CPU, one thread) and fast (a few seconds). Reads the
CIFAR ResNet-20 fixture written by make_fixtures.py:

    tests/fixtures/resnet20_cifar.safetensors      (weights)
    tests/fixtures/resnet20_cifar.io.safetensors   (key `input`, [2,3,16,16])

Writes:
    prune_masks.safetensors
        `<scope>/<sparsity>/<param name>`: uint8 mask with the weight's shape,
        1 = kept, 0 = pruned, for scope in (global, layer) and sparsity in
        (0.5, 0.9), e.g. `global/0.5/layer1.0.conv1.weight`, `layer/0.9/fc.weight`.
        Prunable tensors: the `weight` of every Conv2d and Linear module.
        - global: torch.nn.utils.prune.global_unstructured(..., L1Unstructured, amount=s)
          prunes the round(s * N) smallest |w| over all prunable weights together;
        - layer: torch.nn.utils.prune.l1_unstructured(m, "weight", amount=s) on each
          module prunes the round(s * n) smallest |w| of that tensor.
    reflow_resnet20.safetensors
        `calib`            [3,8,3,16,16] float32: three calibration batches, in order
        `pruned_logits`    [2,10] eval logits of the global-0.9 pruned model, before REFLOW
        for mode in (cumulative, ema):
        `<mode>/logits`                          [2,10] eval logits after REFLOW
        `<mode>/<bn name>.running_mean`          float32 [C]
        `<mode>/<bn name>.running_var`           float32 [C]
        `<mode>/<bn name>.num_batches_tracked`   int64 scalar
        (bn name = module name, e.g. `layer2.0.downsample.1`).

REFLOW ("re-estimate BN statistics after pruning"): start from the global s=0.9
pruned model (pruning made permanent, so the pruned weights are exactly 0), then
for every BatchNorm2d reset the running statistics (mean 0, var 1,
num_batches_tracked 0) and set its momentum:
    cumulative: momentum = None -> running = cumulative average over the batches
                (PyTorch's factor 1 / num_batches_tracked)
    ema:        momentum = 0.1  -> running = 0.9 * running + 0.1 * batch stat
then run the calibration batches in train mode under no_grad (every BN
normalizes with its batch statistics and updates its running statistics with
the batch mean and the UNBIASED batch variance), and evaluate in eval mode.

Precision: unlike make_fixtures.py, everything here is computed by PyTorch in
float32 (what the Rust crate does). The cumulative mode is also run in float64
and the float32-vs-float64 difference is printed, as the float32 noise level
the Rust tests must tolerate.

Usage: /root/venvs/ref/bin/python scripts/make_prune_fixtures.py [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune
from safetensors.torch import load_file, save_file

sys.dont_write_bytecode = True  # keep scripts/ free of __pycache__
sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_resnet import infer_from_state_dict  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
MAX_TOTAL_BYTES = 2 * 1024 * 1024

SPARSITIES = (0.5, 0.9)
SCOPES = ("global", "layer")
REFLOW_SCOPE, REFLOW_SPARSITY = "global", 0.9
# mode -> BatchNorm momentum during calibration
REFLOW_MODES = {"cumulative": None, "ema": 0.1}

CALIB_SEED = 2024
CALIB_BATCHES, CALIB_BATCH_SIZE = 3, 8
# Calibration images: 0.5 + offset[c] + 1.5 * N(0, 1), i.e. per-channel means
# 0.5, -0.5 and 1.5, so the first BN's batch means are far from its reset value 0.
CALIB_MEAN, CALIB_STD = 0.5, 1.5
CALIB_CHANNEL_OFFSETS = (0.0, -1.0, 1.0)


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def load_resnet20(fixtures: Path) -> tuple[nn.Module, torch.Tensor]:
    """The fixture ResNet-20 (eval mode, float32) and the fixture input [2,3,16,16]."""
    sd = load_file(str(fixtures / "resnet20_cifar.safetensors"))
    model = infer_from_state_dict(sd, "cifar")
    model.load_state_dict(sd, strict=True)
    x = load_file(str(fixtures / "resnet20_cifar.io.safetensors"))["input"]
    return model.eval(), x


def prunable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(module name, module) of every Conv2d and Linear, in named_modules() order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def bn_modules(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


# ---------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------


def prune_copy(model: nn.Module, scope: str, s: float) -> nn.Module:
    """A deep copy of `model` with torch's L1 magnitude pruning applied (masks still attached)."""
    pruned = copy.deepcopy(model)
    mods = [m for _, m in prunable_modules(pruned)]
    if scope == "global":
        prune.global_unstructured([(m, "weight") for m in mods], pruning_method=prune.L1Unstructured, amount=s)
    elif scope == "layer":
        for m in mods:
            prune.l1_unstructured(m, "weight", amount=s)
    else:
        raise ValueError(scope)
    return pruned


def round_rules(s: float, n: int) -> dict[str, int]:
    """Number of weights to prune for amount s of n weights, under three rules.

    torch:          round(s * n) on the float64 product (what prune uses; Python's
                    round() is round-half-to-even)
    half_even:      exact s (as the decimal the user wrote) * n, ties to even
    half_up:        exact s * n, ties away from zero (floor(x + 1/2))
    """
    exact = Fraction(str(s)) * n
    return dict(
        torch=prune._compute_nparams_toprune(s, n),
        half_even=round(exact),
        half_up=math.floor(exact + Fraction(1, 2)),
    )


def threshold_report(absw: torch.Tensor, keep: torch.Tensor) -> tuple[int, float]:
    """Tie/ordering check of one magnitude-pruning decision.

    absw: |w| flattened (float64), keep: bool mask flattened.
    Returns (ties, gap): `ties` = number of weights, other than the largest
    pruned one itself, whose |w| equals it exactly (0 means the pruned set is
    unambiguous); `gap` = smallest kept |w| - largest pruned |w| (must be > 0,
    or >= 0 with ties).
    """
    if keep.all() or not keep.any():
        return 0, math.inf
    thr = absw[~keep].max()
    ties = int((absw == thr).sum().item()) - 1
    gap = (absw[keep].min() - thr).item()
    return ties, gap


@torch.no_grad()
def make_masks(model: nn.Module) -> tuple[dict[str, torch.Tensor], nn.Module]:
    """All masks, keyed `<scope>/<s>/<param name>`; also returns the model pruned for REFLOW."""
    masks: dict[str, torch.Tensor] = {}
    reflow_model = None
    names = [name for name, _ in prunable_modules(model)]
    weights = {name: m.weight.detach().double().flatten() for name, m in prunable_modules(model)}
    n_total = sum(w.numel() for w in weights.values())
    n_zero_w = sum(int((w == 0).sum()) for w in weights.values())
    print(f"prunable tensors: {len(names)}, N = {n_total:,} weights ({n_zero_w} exactly zero)")

    for scope in SCOPES:
        for s in SPARSITIES:
            pruned = prune_copy(model, scope, s)
            per_tensor = {}
            for name, m in prunable_modules(pruned):
                mask = m.weight_mask.detach()
                assert set(mask.unique().tolist()) <= {0.0, 1.0}
                per_tensor[name] = mask.flatten() != 0
                masks[f"{scope}/{s}/{name}.weight"] = mask.to(torch.uint8).contiguous()

            # --- checks: zero counts, rounding rule, ties at the threshold ---
            print(f"{scope}/{s}:")
            if scope == "global":
                keep = torch.cat([per_tensor[n] for n in names])
                absw = torch.cat([weights[n] for n in names]).abs()
                groups = [("all prunable weights", keep, absw)]
            else:
                groups = [(n, per_tensor[n], weights[n].abs()) for n in names]
            for label, keep, absw in groups:
                zeros = int((~keep).sum())
                rules = round_rules(s, keep.numel())
                ties, gap = threshold_report(absw, keep)
                ok = zeros == rules["torch"] and gap > 0 and ties == 0
                # The pruned set must be exactly the `zeros` smallest |w|.
                ok = ok and bool(((absw <= absw[~keep].max()) == ~keep).all()) if zeros else ok
                note = ""
                if len(set(rules.values())) > 1:
                    note = f"  [rounding differs: {rules}]"
                print(f"  {'ok  ' if ok else 'FAIL'} {label:<26} n={keep.numel():>7,}  zeros={zeros:>7,}"
                      f"  round(s*n)={rules['torch']:>7,}  ties@thr={ties}  gap={gap:.3g}{note}")
                if not ok:
                    raise SystemExit(f"mask check failed for {scope}/{s}/{label}")

            if scope == "global":
                # How the single global threshold spreads over the layers.
                kept = ", ".join(f"{n} {per_tensor[n].double().mean().item():.1%}" for n in names)
                print(f"       kept per tensor: {kept}")

            if (scope, s) == (REFLOW_SCOPE, REFLOW_SPARSITY):
                # Make the pruning permanent: `weight` becomes a plain parameter with zeros.
                for _, m in prunable_modules(pruned):
                    prune.remove(m, "weight")
                reflow_model = pruned
    return masks, reflow_model


def rounding_survey(max_n: int = 10_000) -> None:
    """Print, for n = 1..max_n, where torch's round(s*n) differs from half-up and from exact half-even."""
    for s in SPARSITIES:
        rules = {n: round_rules(s, n) for n in range(1, max_n + 1)}
        vs_up = [n for n, r in rules.items() if r["torch"] != r["half_up"]]
        vs_even = [n for n, r in rules.items() if r["torch"] != r["half_even"]]
        examples = ", ".join(f"n={n}: s*n={float(Fraction(str(s)) * n)} -> {rules[n]['torch']} "
                             f"(half-up {rules[n]['half_up']})" for n in vs_up[:3])
        print(f"  s={s}: torch != half-up for {len(vs_up)} of {max_n} sizes"
              f"{' (' + examples + ', ...)' if examples else ''}; "
              f"torch != exact half-even for {len(vs_even)} sizes{' ' + str(vs_even[:5]) if vs_even else ''}")


# ---------------------------------------------------------------------------
# REFLOW
# ---------------------------------------------------------------------------


def make_calibration() -> torch.Tensor:
    """[batches, batch, 3, 16, 16] float32, seeded, non-zero, channel-dependent means."""
    g = torch.Generator().manual_seed(CALIB_SEED)
    z = torch.randn(CALIB_BATCHES, CALIB_BATCH_SIZE, 3, 16, 16, generator=g, dtype=torch.float64)
    offsets = torch.tensor(CALIB_CHANNEL_OFFSETS, dtype=torch.float64).view(1, 1, 3, 1, 1)
    return (CALIB_MEAN + offsets + CALIB_STD * z).float().contiguous()


@torch.no_grad()
def reflow(pruned: nn.Module, momentum: float | None, calib: torch.Tensor, x: torch.Tensor,
           record_inputs: bool = False) -> tuple[nn.Module, torch.Tensor, dict[str, list[torch.Tensor]]]:
    """Reset every BN, run the calibration batches in train mode, return (model, eval logits, BN inputs).

    The model is deep-copied first; calib/x are cast to the model's dtype. With
    `record_inputs`, every BN's input of every calibration batch is returned
    (float64 copies) for an independent check of the running statistics.
    """
    model = copy.deepcopy(pruned)
    dtype = next(model.parameters()).dtype
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, m in bn_modules(model):
        m.reset_running_stats()  # running_mean 0, running_var 1, num_batches_tracked 0
        m.momentum = momentum
        if record_inputs:
            def pre_hook(_m, inp, name=name):
                seen.setdefault(name, []).append(inp[0].detach().double().clone())
            handles.append(m.register_forward_pre_hook(pre_hook))
    model.train()
    for batch in calib:
        model(batch.to(dtype))
    for h in handles:
        h.remove()
    model.eval()
    return model, model(x.to(dtype)), seen


def scaled_err(a: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor) -> float:
    """max |a - ref| / scale in float64; where scale == 0, a must equal ref exactly (else inf).

    Needed because 90% pruning leaves some output channels with all-zero
    filters: their BN input is constantly 0, so the running variance is exactly 0.
    """
    a, ref, scale = a.double(), ref.double(), scale.double()
    diff = (a - ref).abs()
    zero = scale == 0
    if bool((diff[zero] != 0).any()):
        return math.inf
    return (diff[~zero] / scale[~zero]).max().item() if bool((~zero).any()) else 0.0


def expected_running_stats(inputs: list[torch.Tensor], momentum: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's running-statistics update rule, written out in float64.

    Per batch: mean over (N, H, W) and the unbiased variance (divide by n - 1,
    n = N*H*W). Update factor: 1/k for the k-th batch (momentum None) or momentum.
    """
    mean = torch.zeros(inputs[0].shape[1], dtype=torch.float64)
    var = torch.ones_like(mean)
    for k, t in enumerate(inputs, start=1):
        bm = t.mean(dim=(0, 2, 3))
        bv = t.var(dim=(0, 2, 3), unbiased=True)
        f = 1.0 / k if momentum is None else momentum
        mean = (1 - f) * mean + f * bm
        var = (1 - f) * var + f * bv
    return mean, var


def make_reflow(pruned: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    calib = make_calibration()
    with torch.no_grad():
        pruned_logits = pruned.eval()(x)
    out = {"calib": calib, "pruned_logits": pruned_logits.contiguous()}
    zero_frac = sum(int((m.weight == 0).sum()) for _, m in prunable_modules(pruned)) / sum(
        m.weight.numel() for _, m in prunable_modules(pruned))
    print(f"REFLOW on {REFLOW_SCOPE}/{REFLOW_SPARSITY} (weights exactly zero: {zero_frac:.4%}); calib "
          f"{tuple(calib.shape)} per-channel mean {[round(v, 3) for v in calib.mean(dim=(0, 1, 3, 4)).tolist()]}")
    print(f"  pruned_logits (before REFLOW): max|.| = {pruned_logits.abs().max().item():.4g}")

    results = {}
    for mode, momentum in REFLOW_MODES.items():
        model, logits, seen = reflow(pruned, momentum, calib, x, record_inputs=True)
        results[mode] = model
        out[f"{mode}/logits"] = logits.contiguous()
        worst = 0.0
        for name, m in bn_modules(model):
            out[f"{mode}/{name}.running_mean"] = m.running_mean.detach().clone().contiguous()
            out[f"{mode}/{name}.running_var"] = m.running_var.detach().clone().contiguous()
            out[f"{mode}/{name}.num_batches_tracked"] = m.num_batches_tracked.detach().clone()
            assert m.num_batches_tracked.dtype == torch.int64 and m.num_batches_tracked.dim() == 0
            assert m.num_batches_tracked.item() == CALIB_BATCHES
            # Independent check of torch's update rule (float64, from the recorded BN inputs).
            em, ev = expected_running_stats(seen[name], momentum)
            worst = max(worst, scaled_err(m.running_var, ev, ev), scaled_err(m.running_mean, em, ev.sqrt()))
        rv = torch.cat([m.running_var for _, m in bn_modules(model)])
        rm = torch.cat([m.running_mean for _, m in bn_modules(model)])
        dead = {name: int((m.running_var == 0).sum()) for name, m in bn_modules(model) if (m.running_var == 0).any()}
        print(f"  {mode:<10} logits max|.| = {logits.abs().max().item():.4g}"
              f"  running_mean in [{rm.min().item():.3g}, {rm.max().item():.3g}]"
              f"  running_var in [{rv.min().item():.3g}, {rv.max().item():.3g}]"
              f"  num_batches_tracked = {CALIB_BATCHES}")
        print(f"             matches the mean / unbiased-var update rule (float64 re-computation) to {worst:.2g} (rel)")
        print(f"             channels with running_var exactly 0 (all-zero filters): {sum(dead.values())} {dead}")
        if not worst < 1e-5:
            raise SystemExit(f"{mode}: running statistics do not follow the expected update rule")

    # float32 noise level: the cumulative mode again, in float64.
    model64, logits64, _ = reflow(copy.deepcopy(pruned).double(), REFLOW_MODES["cumulative"], calib.double(), x)
    rv_rel = rm_rel = 0.0
    for (name, m32), (_, m64) in zip(bn_modules(results["cumulative"]), bn_modules(model64)):
        v64 = m64.running_var
        rv_rel = max(rv_rel, scaled_err(m32.running_var, v64, v64))
        # The mean can be ~0, so measure its error in units of the channel's std.
        rm_rel = max(rm_rel, scaled_err(m32.running_mean, m64.running_mean, v64.sqrt()))
    lg = out["cumulative/logits"].double()
    lg_rel = ((lg - logits64).abs().max() / logits64.abs().max()).item()
    print(f"  float32 vs float64 (cumulative): running_var max rel diff {rv_rel:.3g}; "
          f"running_mean max |diff|/std {rm_rel:.3g}; logits max |diff| / max|logits| {lg_rel:.3g}")
    return out


# ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=FIXTURES, help=f"output directory (default {FIXTURES})")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)  # nothing here should use the global RNG; pin it anyway
    args.out.mkdir(parents=True, exist_ok=True)

    model, x = load_resnet20(FIXTURES)
    masks, pruned = make_masks(model)
    print("rounding of round(s*n) (torch uses Python round() on the float product):")
    rounding_survey()
    reflow_tensors = make_reflow(pruned, x)

    written = []
    for fname, tensors in (("prune_masks.safetensors", masks), ("reflow_resnet20.safetensors", reflow_tensors)):
        path = args.out / fname
        save_file(tensors, str(path))  # no metadata: keeps the bytes reproducible
        written.append((path, len(tensors)))

    print("files:")
    total = 0
    for p, n in written:
        size = p.stat().st_size
        total += size
        print(f"  {p.relative_to(REPO) if p.is_relative_to(REPO) else p}  {n} tensors  {size:,} bytes")
    print(f"  total {total:,} bytes ({total / 2**20:.2f} MiB)")
    if total > MAX_TOTAL_BYTES:
        raise SystemExit(f"fixtures exceed the {MAX_TOTAL_BYTES:,} byte budget")


if __name__ == "__main__":
    main()
