"""Write the small Fashion-MNIST data files committed under assets/fashion-mnist/.

- t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz: the full test set,
  copied byte for byte from the Debian package `dataset-fashion-mnist`.
- calib-images-idx3-ubyte.gz, calib-labels-idx1-ubyte.gz: the first 2,048
  *training* images and labels (REFLOW calibration data must come from the
  training split), written as valid IDX files and gzip-compressed with
  mtime=0, so that rerunning this script gives identical bytes.

Usage (from the repository root):

    /root/venvs/ref/bin/python scripts/make_assets.py
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import shutil
import struct
from pathlib import Path

SRC = Path("/usr/share/datasets/fashion-mnist")
OUT = Path(__file__).resolve().parent.parent / "assets" / "fashion-mnist"
CALIB_COUNT = 2048


def read_idx_u8(path: Path) -> tuple[list[int], bytes]:
    """Return (dims, payload bytes) of a gzip-compressed u8 IDX file, validating the header."""
    raw = gzip.decompress(path.read_bytes())
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not a u8 IDX file")
    dims = list(struct.unpack(f">{ndim}I", raw[4: 4 + 4 * ndim]))
    payload = raw[4 + 4 * ndim:]
    expected = 1
    for d in dims:
        expected *= d
    if len(payload) != expected:
        raise ValueError(f"{path}: header {dims} needs {expected} bytes, found {len(payload)}")
    return dims, payload


def write_idx_u8_gz(path: Path, dims: list[int], payload: bytes) -> None:
    """Write a u8 IDX file (magic 0x0000_08_<ndim>, big-endian u32 dims), gzip with mtime=0."""
    header = struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    # filename is not stored by gzip.compress; mtime=0 makes the output reproducible.
    path.write_bytes(gzip.compress(header + payload, compresslevel=9, mtime=0))


def main() -> None:
    ap = argparse.ArgumentParser(description="write assets/fashion-mnist/ data files")
    ap.add_argument("--src", type=Path, default=SRC)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--calib-count", type=int, default=CALIB_COUNT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. The test set, unchanged.
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copyfile(args.src / name, args.out / name)

    # 2. Calibration set: first N training images / labels, in file order.
    n = args.calib_count
    dims, pixels = read_idx_u8(args.src / "train-images-idx3-ubyte.gz")
    if len(dims) != 3 or dims[0] < n:
        raise ValueError(f"unexpected training image dims {dims}")
    per_image = dims[1] * dims[2]
    write_idx_u8_gz(args.out / "calib-images-idx3-ubyte.gz", [n, dims[1], dims[2]], pixels[: n * per_image])

    ldims, labels = read_idx_u8(args.src / "train-labels-idx1-ubyte.gz")
    if len(ldims) != 1 or ldims[0] < n:
        raise ValueError(f"unexpected training label dims {ldims}")
    write_idx_u8_gz(args.out / "calib-labels-idx1-ubyte.gz", [n], labels[:n])

    # 3. Round-trip check and a summary.
    cdims, cpix = read_idx_u8(args.out / "calib-images-idx3-ubyte.gz")
    assert cdims == [n, dims[1], dims[2]] and cpix == pixels[: n * per_image]
    cl_dims, cl = read_idx_u8(args.out / "calib-labels-idx1-ubyte.gz")
    assert cl_dims == [n] and cl == labels[:n]
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                 "calib-images-idx3-ubyte.gz", "calib-labels-idx1-ubyte.gz"):
        data = (args.out / name).read_bytes()
        d, _ = read_idx_u8(args.out / name)
        print(f"{name:30s} {len(data):9d} bytes  dims {d}  sha256 {hashlib.sha256(data).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
