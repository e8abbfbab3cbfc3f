"""Check the checkpoints the `prune` example saved (--save-dir) against PyTorch, for any
family and pattern: each run's file (`s<sparsity>`, `nm<N>-<M>` or
`channel-s<sparsity>.safetensors`) is loaded with strict=True into the torchvision
model and evaluated on the test set, and its correct count is compared with the
report's `reflow_correct` for that run. The model is the one `--like` (the dense
checkpoint) describes: from its `families.py` spec in the metadata, or, for a ResNet
(no spec) and for every compact channel-pruned checkpoint, built from the saved
file's own shapes (`torch_resnet.build_from_shapes`, stem `--stem`;
`families.vgg_from_shapes` for a VGG).

    /root/venvs/ref/bin/python scripts/check_family_saved.py --like DENSE.safetensors \
        --saved DIR --report REPORT.json --test-images X.gz --test-labels Y.gz \
        --mean 0.2860 --std 0.3530 [--stem cifar]

Exit status 0 when every checkpoint loads and gives the report's count, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import families  # noqa: E402
from reference import evaluate, float_list, load_images, load_labels  # noqa: E402
from torch_resnet import build_from_shapes  # noqa: E402


def saved_name(run: dict) -> str:
    pattern = run.get("pattern", "unstructured")
    if pattern == "unstructured":
        return f"s{run['sparsity']}.safetensors"
    if pattern == "channel":
        return f"channel-s{run['sparsity']}.safetensors"
    n, m = pattern.split(":")
    return f"nm{n}-{m}.safetensors"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--like", required=True, type=Path)
    ap.add_argument("--saved", required=True, type=Path)
    ap.add_argument("--report", required=True, type=Path)
    ap.add_argument("--test-images", required=True)
    ap.add_argument("--test-labels", required=True)
    ap.add_argument("--mean", type=float_list, required=True)
    ap.add_argument("--std", type=float_list, required=True)
    ap.add_argument("--stem", choices=["cifar", "imagenet"], default="imagenet")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = families.spec_of(args.like)
    x = load_images(args.test_images, args.mean, args.std)
    y = load_labels(args.test_labels)
    runs = json.loads(args.report.read_text())["runs"]
    ok = True
    for run in runs:
        path = args.saved / saved_name(run)
        sd = load_file(str(path))
        if run.get("pattern") == "channel" and spec is not None and spec["family"] == "vgg":
            model = families.vgg_from_shapes(sd)
        elif spec is None or run.get("pattern") == "channel":
            model = build_from_shapes(sd, args.stem)
        else:
            model = families.build(spec)
        model.load_state_dict(sd, strict=True)
        model.eval()
        _, correct = evaluate(model, x, y)
        same = correct == run["reflow_correct"]
        ok &= same
        print(f"{path.name}: strict load ok, {correct} correct; reflow reported {run['reflow_correct']}"
              f"{'' if same else '  MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
