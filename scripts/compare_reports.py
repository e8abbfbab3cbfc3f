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


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def compare_trust(a: dict, b: dict, images: int | None, tolerance: int) -> int:
    """The fidelity fields, the repair chosen and the calibration check of one run:
    agreement as image counts, KL as relative differences. Returns the largest count
    difference (tolerance + 1 when the repair chosen or the check's verdict differs)."""
    if "agreement_pruned" not in a or "agreement_pruned" not in b or images is None:
        return 0
    worst = 0
    for stage in ("pruned", "repaired"):
        x, y = (round(r[f"agreement_{stage}"] * images) for r in (a, b))
        worst = max(worst, abs(x - y))
        print(f"{'  agreeing, ' + stage:<20} {x:>8} {y:>10} {x - y:>5}   "
              f"KL rel. diff {rel(a[f'kl_{stage}'], b[f'kl_{stage}']):.1e}")
    if a.get("repair") != b.get("repair"):
        print(f"  the repair chosen differs: {a.get('repair')} vs {b.get('repair')}")
        worst = tolerance + 1
    for name, score in b.get("repair_scores", {}).items():
        ours = a["repair_scores"][name]
        print(f"  score {name:<8} KL {ours['kl']:.6f} vs {score['kl']:.6f} (rel. diff {rel(ours['kl'], score['kl']):.1e})")
    ca, cb = a.get("calibration_check"), b.get("calibration_check")
    if ca and cb:
        print(f"  check: halves agree {ca['agreement_between_halves']:.4f} vs {cb['agreement_between_halves']:.4f}, "
              f"KL rel. diff {rel(ca['kl_between_halves'], cb['kl_between_halves']):.1e}")
        if (ca["warning"] is not None) != bool(cb["warning"]):
            print(f"  the check's verdict differs: {ca['warning']!r} vs warning={cb['warning']}")
            worst = tolerance + 1
    return worst


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
        worst = max(worst, compare_trust(a, b, ours["dense"].get("images"), args.tolerance))
    print(f"largest |difference| of correct counts: {worst} (tolerance {args.tolerance})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
