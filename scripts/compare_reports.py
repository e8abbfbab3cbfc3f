"""Compare two JSON reports of the `prune` example contract, e.g. reflow's and
scripts/reference.py's for the same flags: correct counts side by side, their
differences, and the largest relative difference of the per-BN signal metric.

Usage:
    python3 scripts/compare_reports.py reflow.json reference.json [--tolerance 2]

Exits 1 when a correct count differs by more than --tolerance. Needs only the
Python standard library.
"""

from __future__ import annotations

import argparse
import json
import sys


def signal_diff(a: dict, b: dict) -> float:
    """Largest |a - b| / |b| over the BN layers both have."""
    common = a.keys() & b.keys()
    return max((abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in common), default=0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ours")
    parser.add_argument("reference")
    parser.add_argument("--tolerance", type=int, default=2, help="allowed |difference| of correct counts")
    args = parser.parse_args()
    ours, ref = (json.load(open(p)) for p in (args.ours, args.reference))

    worst = abs(ours["dense"]["correct"] - ref["dense"]["correct"])
    print(f"{'run':<20} {'reflow':>8} {'reference':>10} {'diff':>5}   {'signal rel. diff':>16}")
    print(f"{'dense':<20} {ours['dense']['correct']:>8} {ref['dense']['correct']:>10} "
          f"{ours['dense']['correct'] - ref['dense']['correct']:>5}   "
          f"{signal_diff(ours['dense']['bn_signal'], ref['dense']['bn_signal']):>16.1e}")
    for a, b in zip(ours["runs"], ref["runs"], strict=True):
        key = lambda r: (r.get("pattern", "unstructured"), r["scope"], r["sparsity"])  # noqa: E731
        assert key(a) == key(b), f"runs differ: {key(a)} vs {key(b)}"
        if a.get("skipped") != b.get("skipped"):
            print(f"skipped tensors differ: {a.get('skipped')} vs {b.get('skipped')}")
            worst = max(worst, args.tolerance + 1)
        if a.get("params") != b.get("params"):
            print(f"compact parameter counts differ: {a.get('params')} vs {b.get('params')}")
            worst = max(worst, args.tolerance + 1)
        label = a["scope"] if a.get("pattern", "unstructured") == "unstructured" else a["pattern"]
        for stage in ("pruned", "reflow"):
            x, y = a[f"{stage}_correct"], b[f"{stage}_correct"]
            worst = max(worst, abs(x - y))
            d = signal_diff(a[f"bn_signal_{stage}"], b[f"bn_signal_{stage}"])
            print(f"{label + ' ' + str(a['sparsity']) + ' ' + stage:<20} {x:>8} {y:>10} {x - y:>5}   {d:>16.1e}")
    print(f"largest |difference| of correct counts: {worst} (tolerance {args.tolerance})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
