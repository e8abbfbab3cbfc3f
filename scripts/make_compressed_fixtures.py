"""A checkpoint compressed by compressed-tensors itself, for reflow's reader
(`tests/compressed.rs`), so that CI, which has no Python, checks that reflow reads
what the real `BitmaskCompressor` writes.

Writes, deterministically:

- `tests/fixtures/compressed_tensors_bitmask.safetensors`: a small CNN-like state dict
  compressed by compressed-tensors' `BitmaskCompressor` (format "sparse-bitmask",
  every `*.weight` compressed as the compressor does when no target is named, and
  saved with `safetensors.torch.save_file`, no metadata, as the compressor's output
  is). Its tensors cover the layouts the compressor writes: a 3x3 convolution and a
  1x1 convolution (rank 4: masks along the kernel width, offsets along the first
  dimension), a linear layer of 13 columns (two mask bytes a row, one row all zero,
  a -0.0 that the mask drops), a float16 linear layer, and a batch norm's weight
  (rank 1: one mask row, a scalar offset); biases, running statistics and the int64
  `num_batches_tracked` stay dense.
- `tests/fixtures/compressed_tensors_bitmask.dense.safetensors`: compressed-tensors'
  own decompression of that file (`BitmaskCompressor.decompress`), the values reflow
  must rebuild, float16 kept as float16.

Needs `pip install compressed-tensors==0.14.0.1` in the venv (the last version that
ships the bitmask compressor). Usage:
    ~/venvs/ref/bin/python scripts/make_compressed_fixtures.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import compressed_tensors
import torch
from compressed_tensors.compressors import BaseCompressor
from compressed_tensors.config import BitmaskConfig, CompressionFormat
from safetensors.torch import save_file

sys.dont_write_bytecode = True  # keep scripts/ free of __pycache__

REPO = Path(__file__).resolve().parent.parent
COMPRESSED = REPO / "tests/fixtures/compressed_tensors_bitmask.safetensors"
DENSE = REPO / "tests/fixtures/compressed_tensors_bitmask.dense.safetensors"


def sparse(shape: tuple[int, ...], keep: float, gen: torch.Generator) -> torch.Tensor:
    """Seeded values, about a fraction `keep` of them non-zero."""
    values = torch.randn(shape, generator=gen)
    return values * (torch.rand(shape, generator=gen) < keep)


def state_dict() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(19)
    conv = sparse((8, 3, 3, 3), 0.3, gen)
    conv[5] = 0.0  # an output channel pruned whole
    fc = sparse((5, 13), 0.4, gen)
    fc[3] = 0.0  # a row with no value
    fc[0, 0] = -0.0  # dropped by the mask: decompressed as +0.0
    return {
        "features.0.weight": conv,
        "features.1.weight": torch.tensor([1.0, 0.0, 0.5, 2.0, 0.0, 1.5, 0.25, 3.0]),
        "features.1.bias": torch.randn(8, generator=gen),
        "features.1.running_mean": torch.randn(8, generator=gen),
        "features.1.running_var": torch.rand(8, generator=gen) + 0.5,
        "features.1.num_batches_tracked": torch.tensor(11, dtype=torch.int64),
        "features.3.weight": sparse((6, 8, 1, 1), 0.5, gen),
        "classifier.weight": fc,
        "classifier.bias": torch.randn(5, generator=gen),
        "head.weight": sparse((3, 9), 0.5, gen).half(),
    }


def main() -> None:
    original = state_dict()
    compressor = BaseCompressor.load_from_registry(
        CompressionFormat.sparse_bitmask.value, config=BitmaskConfig()
    )
    compressed = compressor.compress(original)
    save_file({k: v.contiguous() for k, v in compressed.items()}, str(COMPRESSED))
    dense = dict(compressor.decompress(str(COMPRESSED)))
    assert dense.keys() == original.keys(), sorted(dense)
    for name, value in original.items():
        got = dense[name]
        assert got.dtype == value.dtype and got.shape == value.shape, name
        assert torch.equal(got, value), name
    assert dense["classifier.weight"][0, 0].item() == 0.0
    assert not torch.signbit(dense["classifier.weight"][0, 0]), "-0.0 decompressed as +0.0"
    save_file({k: v.contiguous() for k, v in sorted(dense.items())}, str(DENSE))
    print(f"compressed-tensors {compressed_tensors.__version__}")
    for name, value in sorted(compressed.items()):
        print(f"  {name:34} {str(value.dtype):14} {list(value.shape)}")
    for path in (COMPRESSED, DENSE):
        print(f"{path.relative_to(REPO)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
