"""The "trust without labels" tables of docs/results.md: `reflow prune` with --repair
reflow, none and auto on 16, 64, 256 and 1,024 calibration images, and for each the
top-1, the fidelity to the dense network (top-1 agreement, mean KL) and the calibration
check's verdict. Needs only the `reflow` binary (cargo build --release --features cli)
and Python's standard library.

    python3 scripts/trust_table.py [--weights W --stem S ...] [--out DIR]

Defaults: the bundled ResNet-20 and Fashion-MNIST files in assets/. Prints one
Markdown table; the JSON reports stay in --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "assets" / "fashion-mnist"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=ASSETS / "resnet20_fmnist.safetensors")
    ap.add_argument("--stem", default="cifar")
    ap.add_argument("--sparsity", default="0,0.3,0.5,0.8")
    ap.add_argument("--counts", default="16,64,256,1024")
    ap.add_argument("--repairs", default="reflow,none,auto")
    ap.add_argument("--out", type=Path, default=REPO / "target" / "trust")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    binary = REPO / "target" / "release" / "reflow"
    rows = []
    for count in args.counts.split(","):
        for repair in args.repairs.split(","):
            report = args.out / f"{args.weights.stem}-{count}-{repair}.json"
            subprocess.run(
                [str(binary), "prune", "--weights", str(args.weights), "--stem", args.stem,
                 "--test-images", str(ASSETS / "t10k-images-idx3-ubyte.gz"),
                 "--test-labels", str(ASSETS / "t10k-labels-idx1-ubyte.gz"),
                 "--calib-images", str(ASSETS / "calib-images-idx3-ubyte.gz"),
                 "--calib-count", count, "--mean", "0.2860", "--std", "0.3530",
                 "--sparsity", args.sparsity, "--repair", repair, "--json", str(report)],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rows.append((count, repair, json.loads(report.read_text())))

    sparsities = [r["sparsity"] for r in rows[0][2]["runs"]]
    dense = rows[0][2]["dense"]["top1"]
    print(f"dense top-1 {100 * dense:.2f} %; each cell: top-1 % / agreement with dense % / KL"
          " (auto: the repair it chose)")
    print()
    print("| images | repair | " + " | ".join(f"{s:g}" for s in sparsities) + " | calibration check |")
    print("|---:|---|" + "---:|" * len(sparsities) + "---|")
    for count, repair, report in rows:
        cells = []
        for run in report["runs"]:
            cell = (f"{100 * run['reflow_top1']:.2f} / {100 * run['agreement_repaired']:.1f} / "
                    f"{run['kl_repaired']:.4f}")
            if repair == "auto":
                cell += f" ({run['repair']})"
            cells.append(cell)
        calib = report["calibration"]
        if calib.get("agreement_between_halves") is None:
            verdict = "-"
        else:
            verdict = (f"halves agree {100 * calib['agreement_between_halves']:.1f} %, "
                       f"KL {calib['kl_between_halves']:.4f}: ")
            verdict += (f"**warns**, about {calib['images_needed']} needed" if calib["warning"]
                        else "enough")
        print(f"| {count} | {repair} | " + " | ".join(cells) + f" | {verdict} |")


if __name__ == "__main__":
    main()
