"""Check the checkpoints the `prune` example saved (--save-dir) against PyTorch, for any
family: each `s<sparsity>.safetensors` is loaded with strict=True into the torchvision
model that `--like` (the dense checkpoint, with its `families.py` spec in the metadata)
describes, evaluated on the test set, and its correct count compared with the report's
`reflow_correct` for that sparsity.

    /root/venvs/ref/bin/python scripts/check_family_saved.py --like DENSE.safetensors \
        --saved DIR --report REPORT.json --test-images X.gz --test-labels Y.gz \
        --mean 0.2860 --std 0.3530

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--like", required=True, type=Path)
    ap.add_argument("--saved", required=True, type=Path)
    ap.add_argument("--report", required=True, type=Path)
    ap.add_argument("--test-images", required=True)
    ap.add_argument("--test-labels", required=True)
    ap.add_argument("--mean", type=float_list, required=True)
    ap.add_argument("--std", type=float_list, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = families.spec_of(args.like)
    if spec is None:
        sys.exit(f"{args.like} has no {families.METADATA_KEY} metadata")
    x = load_images(args.test_images, args.mean, args.std)
    y = load_labels(args.test_labels)
    runs = json.loads(args.report.read_text())["runs"]
    ok = True
    for run in runs:
        path = args.saved / f"s{run['sparsity']}.safetensors"
        model = families.build(spec)
        model.load_state_dict(load_file(str(path)), strict=True)
        _, correct = evaluate(model, x, y)
        same = correct == run["reflow_correct"]
        ok &= same
        print(f"{path.name}: strict load ok, {correct} correct; reflow reported {run['reflow_correct']}"
              f"{'' if same else '  MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
