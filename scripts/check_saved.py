"""Check a state dict written by `reflow` against PyTorch.

Loads the safetensors state dict, rebuilds the matching torchvision-layout
network with `infer_from_state_dict`, loads the weights with strict=True (so
missing, extra or mis-shaped tensors are errors), runs `io["input"]` in eval
mode and compares the result with `io["logits"]`.

Exit status: 0 if max|logits - expected| <= rtol * max|expected| (rtol 1e-4 by
default), 1 if the logits differ by more, 2 if the weights cannot be loaded
(missing, unexpected or mis-shaped tensors; a missing BN num_batches_tracked
counts as missing unless --allow-missing-num-batches-tracked is given).

If the io file also holds BatchNorm outputs (`bn/<module name>`, as written by
make_fixtures.py), the first BN whose output is off is reported, as a hint to
where a mismatch starts; it does not change the exit status.

Usage:
    /root/venvs/ref/bin/python scripts/check_saved.py \
        --weights tests/fixtures/resnet20_cifar.safetensors --stem cifar \
        --io tests/fixtures/resnet20_cifar.io.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file

sys.dont_write_bytecode = True  # keep scripts/ free of __pycache__
sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_resnet import infer_config, infer_from_state_dict  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, type=Path, help="safetensors state dict (torchvision layout)")
    parser.add_argument("--stem", required=True, choices=["cifar", "imagenet"])
    parser.add_argument("--io", required=True, type=Path, help="safetensors with 'input' and 'logits'")
    parser.add_argument("--rtol", type=float, default=1e-4, help="tolerance relative to max|logits| (default 1e-4)")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                        help="precision of PyTorch's forward pass (default float64)")
    parser.add_argument("--allow-missing-num-batches-tracked", action="store_true",
                        help="accept state dicts without the BN num_batches_tracked buffers")
    args = parser.parse_args()

    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)

    sd = load_file(str(args.weights))
    io = load_file(str(args.io))
    try:
        print(f"inferred config: {infer_config(sd, args.stem)}")
        model = infer_from_state_dict(sd, args.stem)
        # BatchNorm2d silently fills in a missing num_batches_tracked, even with
        # strict=True, so compare the key sets explicitly first.
        missing = [k for k in model.state_dict() if k not in sd]
        if args.allow_missing_num_batches_tracked:
            missing = [k for k in missing if not k.endswith(".num_batches_tracked")]
        if missing:
            raise KeyError(f"missing keys: {missing}")
        model.load_state_dict(sd, strict=True)
    except (ValueError, KeyError, RuntimeError) as e:
        print(f"ERROR: cannot load {args.weights}: {e}", file=sys.stderr)
        return 2
    model = model.to(dtype).eval()
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in sd.values()})
    print(f"{len(sd)} tensors, dtypes: {', '.join(dtypes)}")

    # Capture BN outputs for the diagnostic (clone: an in-place ReLU follows most BNs).
    bn_out: dict[str, torch.Tensor] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d) and f"bn/{name}" in io:
            m.register_forward_hook(lambda _m, _i, out, name=name: bn_out.__setitem__(name, out.detach().clone()))

    with torch.no_grad():
        logits = model(io["input"].to(dtype))
    expected = io["logits"].to(dtype)
    if logits.shape != expected.shape:
        print(f"FAIL: logits shape {tuple(logits.shape)} != expected {tuple(expected.shape)}")
        return 1

    scale = expected.abs().max().item()
    err = (logits - expected).abs().max().item()
    tol = args.rtol * scale
    print(f"logits {tuple(logits.shape)}: max abs error {err:.3g}  (max|logits| {scale:.4g}, tolerance {tol:.3g})")

    for name, out in bn_out.items():  # forward order
        ref = io[f"bn/{name}"].to(dtype)
        bn_err = (out - ref).abs().max().item() if out.shape == ref.shape else float("inf")
        if bn_err > args.rtol * max(ref.abs().max().item(), 1e-12):
            print(f"  first BatchNorm output off: bn/{name} (max abs error {bn_err:.3g})")
            break
    else:
        if bn_out:
            print(f"  all {len(bn_out)} BatchNorm outputs within tolerance")

    if err > tol:
        print("FAIL")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
