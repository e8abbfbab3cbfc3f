"""Image-folder reading, reflow next to Pillow + torchvision, in the same run.

Makes --count ImageNet-sized JPEGs (500x375 and 375x500, quality 90, from
scikit-image's public-domain photos) in an ImageFolder under --dir, then times, on the
same files, the ImageNet evaluation pipeline (open, convert("RGB"), Resize(256),
CenterCrop(224), ToTensor, Normalize): reflow's `bench_images` example (in batches on
every core, and one thread), and torchvision's ImageFolder on one thread and in a
DataLoader with as many workers as cores. Prints the CPU and the ratios.

Usage: /root/venvs/ref/bin/python scripts/bench_images.py [--count 400] [--dir target/bench-images]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import time
from pathlib import Path

import skimage.data
import torch
from PIL import Image
from torchvision import datasets, transforms as T

REPO = Path(__file__).resolve().parent.parent


def cpu() -> str:
    text = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.*)", text).group(1)
    flags = sorted({f for f in ("avx512f", "avx2") if re.search(rf"\b{f}\b", text)})
    return f"{model} ({', '.join(flags)}), {os.cpu_count()} cores"


def make(folder: Path, count: int) -> None:
    out = folder / "photos"
    if out.is_dir() and len(list(out.iterdir())) == count:
        return
    out.mkdir(parents=True, exist_ok=True)
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(),
              skimage.data.rocket(), skimage.data.hubble_deep_field(), skimage.data.immunohistochemistry()]
    for i in range(count):
        size = (500, 375) if i % 2 == 0 else (375, 500)
        Image.fromarray(photos[i % len(photos)]).resize(size, Image.LANCZOS).save(out / f"{i:05d}.jpg", quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--dir", type=Path, default=REPO / "target" / "bench-images")
    args = ap.parse_args()
    make(args.dir, args.count)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--features", "image", "--example", "bench_images"],
                   cwd=REPO, check=True)
    ours = subprocess.run([str(REPO / "target/release/examples/bench_images"), str(args.dir)],
                          check=True, capture_output=True, text=True).stdout.strip()
    numbers = [float(x) for x in re.findall(r"([\d.]+) ms/image", ours)]
    ours_batches, ours_single = numbers[0], numbers[1]

    torch.set_num_threads(1)
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = datasets.ImageFolder(args.dir, transform=tf)
    _ = [ds[i] for i in range(min(8, len(ds)))]
    start = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    single = (time.perf_counter() - start) / len(ds) * 1e3
    workers = os.cpu_count()
    loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=workers)
    for _ in loader:  # start the workers once
        break
    start = time.perf_counter()
    for _ in loader:
        pass
    batches = (time.perf_counter() - start) / len(ds) * 1e3
    print(cpu())
    print(ours)
    print(f"torchvision: one thread {single:.2f} ms/image; DataLoader, {workers} workers: {batches:.2f} ms/image")
    print(f"ratio torchvision / reflow: one thread {single / ours_single:.2f}x, all cores {batches / ours_batches:.2f}x")


if __name__ == "__main__":
    main()
