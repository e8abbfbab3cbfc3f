"""Checks reflow's compressed checkpoints against the real compressed-tensors package.

1. reflow writes: `reflow prune` prunes the bundled ResNet-20 (assets/fashion-mnist) to
   80 % by global magnitude, recalibrates it with REFLOW, and saves it twice, with
   `--save-format dense` and `--save-format compressed`.
2. compressed-tensors reads reflow's file: the config in the file's metadata
   (`quantization_config`) builds the compressor (`ModelCompressor.
   from_compression_config`), whose `BitmaskCompressor.decompress` gives every tensor.
   Reshaped to the shapes of the metadata's `reflow.shapes`, each equals the dense
   file's tensor bit for bit (without the reshape, a convolution comes out as its 2-D
   view `weight.flatten(1)`). It also shows why reflow writes 2-D views: the
   compressor unpacks a mask along the dense shape's last dimension only.
3. reflow reads compressed-tensors' file: the dense checkpoint compressed by
   `BitmaskCompressor` itself (every `*.weight`, convolutions masked along their kernel
   width, batch-norm weights as rank-1 tensors) is rewritten dense by the `convert`
   example and equals the original bit for bit; `reflow inspect --json` reports the
   same network and sparsity as for the dense file.

With `--resnet50` it also measures the sizes of a torchvision ResNet-50 (random
initialisation, seeded) pruned to 80 % by `reflow prune`, in both formats.

Builds `reflow` (feature cli) and the `convert` example with cargo first. Needs
`pip install compressed-tensors==0.14.0.1` in the venv (the last version that ships
the bitmask compressor; 0.15 and later keep only its config). Exit status 0 when every
check passes, 1 otherwise. Usage:
    ~/venvs/ref/bin/python scripts/check_compressed.py [--resnet50] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import compressed_tensors
import numpy as np
import torch
from compressed_tensors.compressors import BaseCompressor, ModelCompressor
from compressed_tensors.config import BitmaskConfig, CompressionFormat
from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.dont_write_bytecode = True  # keep scripts/ free of __pycache__

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "assets/fashion-mnist"


def build() -> tuple[Path, Path]:
    """Builds `reflow` and the `convert` example; their paths."""
    subprocess.run(
        ["cargo", "build", "--quiet", "--features", "cli", "--bin", "reflow", "--example", "convert"],
        cwd=REPO,
        check=True,
    )
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    target = Path(json.loads(meta.stdout)["target_directory"]) / "debug"
    return target / "reflow", target / "examples" / "convert"


def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (so +0.0 and -0.0 differ, and NaN equals NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    as_bytes = lambda t: t.contiguous().reshape(-1).view(torch.uint8)  # noqa: E731
    return bool(torch.equal(as_bytes(a), as_bytes(b)))


def size(path: Path) -> int:
    return path.stat().st_size


def reflow_prune(reflow: Path, out: Path, save_format: str, args: list[str]) -> Path:
    """Runs `reflow prune ... --save-dir out/<format>`; the folder."""
    folder = out / save_format
    cmd = [str(reflow), "prune", *args, "--save-dir", str(folder), "--save-format", save_format]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return folder


def decompress_reflow_file(path: Path) -> dict[str, torch.Tensor]:
    """compressed-tensors' decompression of a file reflow wrote, configured by its metadata."""
    config = json.loads(metadata(path)["quantization_config"])
    compressor = ModelCompressor.from_compression_config(config).sparsity_compressor
    assert type(compressor).__name__ == "BitmaskCompressor", type(compressor)
    return dict(compressor.decompress(str(path)))


def check_reflow_file(dense_path: Path, compressed_path: Path) -> list[str]:
    """Step 2; the problems found."""
    problems = []
    dense = load_file(str(dense_path))
    meta = metadata(compressed_path)
    print(f"  metadata: quantization_config = {meta['quantization_config'][:120]}...")
    shapes = json.loads(meta.get("reflow.shapes", "{}"))
    decompressed = decompress_reflow_file(compressed_path)
    if decompressed.keys() != dense.keys():
        problems.append(f"keys differ: {sorted(decompressed.keys() ^ dense.keys())}")
    with safe_open(str(compressed_path), framework="pt") as f:
        stored = set(f.keys())
    compressed = sorted(k for k in dense if k.removesuffix(".weight") + ".bitmask" in stored)
    for name in sorted(dense.keys() & decompressed.keys()):
        got = decompressed[name]
        if name in shapes:
            if list(got.shape) != [dense[name].shape[0], dense[name][0].numel()]:
                problems.append(f"{name}: compressed-tensors gives {list(got.shape)}, not the 2-D view")
            got = got.reshape(shapes[name])
        if not same_bits(got, dense[name]):
            problems.append(f"{name}: compressed-tensors' values differ from reflow's dense file")
    print(
        f"  {len(decompressed)} tensors decompressed by compressed-tensors' BitmaskCompressor "
        f"({len(compressed)} compressed, {len(shapes)} of them 4-D): "
        f"{'all equal to the dense file bit for bit' if not problems else 'PROBLEMS'}"
    )

    # A 2-D mask with the 4-D shape: the compressor unpacks the mask along the last
    # dimension of the shape only (numpy.unpackbits(count=shape[-1])).
    name = next(iter(shapes))
    prefix = name.removesuffix(".weight")
    with safe_open(str(compressed_path), framework="pt") as f:
        parts = {p: f.get_tensor(f"{prefix}.{p}") for p in ("compressed", "bitmask", "row_offsets")}
    parts["shape"] = torch.tensor(shapes[name])
    try:
        BaseCompressor.load_from_registry(
            CompressionFormat.sparse_bitmask.value, config=BitmaskConfig()
        ).decompress_weight(parts)
        problems.append("compressed-tensors decompressed a 2-D mask under a 4-D shape")
    except ValueError as e:
        print(f"  (with the 4-D shape in {prefix}.shape instead, compressed-tensors fails: {e})")
    return problems


def check_compressed_tensors_file(reflow: Path, convert: Path, dense_path: Path, out: Path) -> list[str]:
    """Step 3; the problems found."""
    problems = []
    dense = load_file(str(dense_path))
    compressor = BaseCompressor.load_from_registry(
        CompressionFormat.sparse_bitmask.value, config=BitmaskConfig()
    )
    ct_path = out / "compressed_by_compressed_tensors.safetensors"
    save_file({k: v.contiguous() for k, v in compressor.compress(dense).items()}, str(ct_path))
    back_path = out / "compressed_tensors_read_by_reflow.safetensors"
    subprocess.run([str(convert), str(ct_path), str(back_path), "dense"], check=True, stdout=subprocess.DEVNULL)
    back = load_file(str(back_path))
    negative_zeros = 0
    for name, value in dense.items():
        want = value
        if value.is_floating_point() and name.endswith(".weight"):
            # The compressor's mask drops -0.0: it decompresses as +0.0.
            negative_zeros += int(((value == 0) & torch.signbit(value)).sum())
            want = torch.where(value == 0, torch.zeros_like(value), value)
        if name not in back or not same_bits(back[name], want):
            problems.append(f"{name}: reflow's reading of compressed-tensors' file differs")
    if back.keys() != dense.keys():
        problems.append(f"keys differ: {sorted(back.keys() ^ dense.keys())}")
    print(
        f"  {ct_path.name} ({size(ct_path)} bytes) read by reflow: {len(back)} tensors, "
        f"{'all equal to the dense file bit for bit' if not problems else 'PROBLEMS'}"
        f" ({negative_zeros} -0.0 weights)"
    )
    reports = []
    for path in (dense_path, ct_path):
        cmd = [str(reflow), "inspect", "--json", "--stem", "cifar", str(path)]
        run = subprocess.run(cmd, check=True, capture_output=True, text=True)
        reports.append(json.loads(run.stdout))
    if reports[0] != reports[1]:
        problems.append("reflow inspect reports differ between the dense and compressed-tensors' file")
    print(
        f"  reflow inspect: {reports[1]['arch']}, {reports[1]['params']} parameters, sparsity "
        f"{reports[1]['sparsity']:.4f}, {'the same report as for the dense file' if reports[0] == reports[1] else 'DIFFERENT'}"
    )
    return problems


def resnet50_sizes(reflow: Path, out: Path) -> list[str]:
    """A torchvision ResNet-50 (seeded random initialisation) pruned to 80 % by `reflow
    prune`, written in both formats; the problems found."""
    import torchvision

    torch.manual_seed(0)
    weights = out / "resnet50.safetensors"
    save_file({k: v.contiguous() for k, v in torchvision.models.resnet50().state_dict().items()}, str(weights))
    rng = np.random.default_rng(0)
    for name, count in (("test", 4), ("calib", 8)):
        np.save(out / f"{name}.npy", rng.standard_normal((count, 3, 224, 224), dtype=np.float32))
    np.save(out / "test-labels.npy", np.arange(4, dtype=np.int64))
    args = [
        "--weights", str(weights), "--arch", "resnet", "--stem", "imagenet",
        "--test-npy", str(out / "test.npy"), "--test-labels-npy", str(out / "test-labels.npy"),
        "--calib-npy", str(out / "calib.npy"), "--calib-count", "8", "--calib-batch", "8",
        "--signal-images", "4", "--mean", "0,0,0", "--std", "1,1,1", "--sparsity", "0.8",
    ]
    files = {f: reflow_prune(reflow, out / "resnet50", f, args) / "s0.8.safetensors" for f in ("dense", "compressed")}
    dense, compressed = size(files["dense"]), size(files["compressed"])
    ratio = compressed / dense
    print(f"  torchvision checkpoint: {size(weights)} bytes")
    print(f"  80 % pruned, dense:      {dense} bytes")
    print(f"  80 % pruned, compressed: {compressed} bytes ({100 * ratio:.1f} % of dense)")
    problems = check_reflow_file(files["dense"], files["compressed"])
    if ratio > 0.35:
        problems.append(f"the compressed ResNet-50 is {100 * ratio:.1f} % of the dense file, over 35 %")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resnet50", action="store_true", help="also measure an 80 %% pruned ResNet-50 (a few minutes)")
    parser.add_argument("--out", type=Path, help="keep the files here (default: a temporary folder)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    print(f"compressed-tensors {compressed_tensors.__version__}, torch {torch.__version__}")
    reflow, convert = build()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        bundled = [
            "--weights", str(ASSETS / "resnet20_fmnist.safetensors"), "--stem", "cifar",
            "--test-images", str(ASSETS / "t10k-images-idx3-ubyte.gz"),
            "--test-labels", str(ASSETS / "t10k-labels-idx1-ubyte.gz"),
            "--calib-images", str(ASSETS / "calib-images-idx3-ubyte.gz"),
            "--mean", "0.2860", "--std", "0.3530", "--sparsity", "0.8", "--signal-images", "100",
        ]
        print("1. reflow prune --sparsity 0.8 on the bundled ResNet-20, saved dense and compressed")
        files = {f: reflow_prune(reflow, out, f, bundled) / "s0.8.safetensors" for f in ("dense", "compressed")}
        for f, path in files.items():
            print(f"  {f}: {size(path)} bytes")
        print("2. compressed-tensors decompresses reflow's compressed file")
        problems = check_reflow_file(files["dense"], files["compressed"])
        print("3. reflow reads the dense file compressed by compressed-tensors")
        problems += check_compressed_tensors_file(reflow, convert, files["dense"], out)
        if args.resnet50:
            print("4. ResNet-50 (torchvision, random initialisation) pruned to 80 % by reflow prune")
            problems += resnet50_sizes(reflow, out)
    for p in problems:
        print(f"PROBLEM: {p}")
    print("all checks passed" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
