"""Fashion-MNIST as JPEG folders, and a torchvision ResNet-18 trained on them: the end
to end check of `reflow prune --test-dir/--calib-dir` against `reference.py`.

Writes under --out (default target/jpeg-fmnist):
- test/<class>/<index>.jpg: the 10,000 test images, each upscaled (Pillow bicubic) to
  a seeded size between 40 and 56 pixels a side, as RGB JPEG, quality 90, 4:2:0;
- calib/<class>/<index>.jpg: the first 4,096 training images, made the same way;
- test_png/, calib_png/: the same images as PNG (lossless);
- x_test.npy (float32 [N, 3, 32, 32], torchvision's preprocessed test tensors),
  x_test_u8.npy (uint8 [N, 3, 32, 32], the same before ToTensor), y_test.npy (int64),
  x_calib_u8.npy (the calibration folder's, uint8);
- resnet18_fmnist.safetensors: `torchvision.models.resnet18(num_classes=10)`
  (ImageNet stem) trained --epochs on the training set through the same pipeline,
  saved from its `state_dict()`.

The evaluation transform is torchvision's Resize(36), CenterCrop(32), ToTensor,
Normalize(0.2860 x3, 0.3530 x3), each image opened with Pillow and convert("RGB").

Usage: /root/venvs/ref/bin/python scripts/make_jpeg_folders.py [--out DIR] [--epochs N]
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_families_fmnist import fit  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["0_tshirt", "1_trouser", "2_pullover", "3_dress", "4_coat",
           "5_sandal", "6_shirt", "7_sneaker", "8_bag", "9_boot"]
MEAN, STD = [0.2860] * 3, [0.3530] * 3
EVAL = T.Compose([T.Resize(36), T.CenterCrop(32)])
TO_TENSOR = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def upscaled(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    w, h = (int(v) for v in rng.integers(40, 57, 2))
    return Image.fromarray(pixels).convert("RGB").resize((w, h), Image.BICUBIC)


def write_folder(folder: Path, images: np.ndarray, labels: np.ndarray, seed: int, ext: str) -> None:
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (folder / c).mkdir(parents=True, exist_ok=True)
    for i, (pixels, label) in enumerate(zip(images, labels)):
        image = upscaled(pixels, rng)
        if ext == "jpg":
            image.save(folder / CLASSES[label] / f"{i:05d}.jpg", quality=90, subsampling=2)
        else:
            image.save(folder / CLASSES[label] / f"{i:05d}.png")


def training_tensors(images: np.ndarray, seed: int) -> torch.Tensor:
    """The training images through the evaluation pipeline, without the JPEG step."""
    rng = np.random.default_rng(seed)
    return torch.stack([TO_TENSOR(EVAL(upscaled(p, rng))) for p in images])


def flip(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2."""
    mirrored = torch.rand(len(batch), generator=gen) < 0.5
    return torch.where(mirrored[:, None, None, None], batch.flip(3), batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "target" / "jpeg-fmnist")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = args.out
    train_x = read_idx(DATA / "train-images-idx3-ubyte.gz")
    train_y = read_idx(DATA / "train-labels-idx1-ubyte.gz").astype(np.int64)
    test_x = read_idx(DATA / "t10k-images-idx3-ubyte.gz")
    test_y = read_idx(DATA / "t10k-labels-idx1-ubyte.gz").astype(np.int64)

    t0 = time.time()
    write_folder(out / "test", test_x, test_y, seed=1, ext="jpg")
    write_folder(out / "calib", train_x[:4096], train_y[:4096], seed=2, ext="jpg")
    # The same images, lossless: no decoder difference is left.
    write_folder(out / "test_png", test_x, test_y, seed=1, ext="png")
    write_folder(out / "calib_png", train_x[:4096], train_y[:4096], seed=2, ext="png")
    print(f"folders written ({time.time() - t0:.0f}s)", flush=True)

    test_set = torchvision.datasets.ImageFolder(out / "test", transform=EVAL)
    u8 = np.stack([np.asarray(img).transpose(2, 0, 1) for img, _ in test_set])
    np.save(out / "x_test_u8.npy", u8)
    np.save(out / "x_test.npy", np.stack([TO_TENSOR(img).numpy() for img, _ in test_set]).astype(np.float32))
    np.save(out / "y_test.npy", np.array(test_set.targets, dtype=np.int64))
    calib_set = torchvision.datasets.ImageFolder(out / "calib", transform=EVAL)
    np.save(out / "x_calib_u8.npy", np.stack([np.asarray(img).transpose(2, 0, 1) for img, _ in calib_set]))
    print(f"npy written ({time.time() - t0:.0f}s)", flush=True)

    x = training_tensors(train_x, seed=3)
    y = torch.from_numpy(train_y)
    tx = torch.from_numpy(np.load(out / "x_test.npy"))
    ty = torch.from_numpy(np.load(out / "y_test.npy"))
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    fit(model, x, y, tx, ty, args.epochs, flip, "resnet18_fmnist")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / "resnet18_fmnist.safetensors")
    print(f"-> {out / 'resnet18_fmnist.safetensors'}", flush=True)


if __name__ == "__main__":
    main()
