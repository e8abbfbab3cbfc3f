"""Image-folder fixtures: torchvision's evaluation preprocessing on real photos and
synthetic PNGs, the reference of reflow's `io::ImageFolder` and `io::EvalTransform`.

Writes
- tests/fixtures/images/jpeg/*.jpg: public-domain / CC0 photos shipped by scikit-image
  (astronaut, coffee, chelsea, rocket: RGB; camera: gray), cut to small odd sizes and
  encoded by Pillow (libjpeg-turbo) at qualities 95, 75 and 40 with chroma subsampling
  4:4:4, 4:2:2 and 4:2:0, one progressive, one gray;
- tests/fixtures/images/png/*.png: synthetic PNGs of odd sizes and aspect ratios in
  every 8-bit colour type (RGB, L, RGBA, LA, palette with and without transparency,
  1-bit); and tests/fixtures/gray16.png, a 16-bit PNG reflow must refuse;
- tests/fixtures/image_transforms.safetensors: for each image and each transform,
  the uint8 [C, H, W] torchvision gives before ToTensor
  (`<class>/<file>|<mode>|<resize>|<crop>`, `-` for none), as an `ImageFolder` loads it
  (`Image.open(path).convert(mode)`), then `Resize(resize)` and `CenterCrop(crop)`;
  and `logits/<net>/<class>/<file>`: the logits of two networks on the normalised
  tensors: `resnet20_cifar` (RGB, Resize(36), CenterCrop(32), ImageNet mean/std), the
  same network with the ImageNet preset (`resnet20_cifar_imagenet`: Resize(256),
  CenterCrop(224)), and
  the bundled `resnet20_fmnist` (L, Resize(32), CenterCrop(28), Fashion-MNIST
  mean/std).

Usage: /root/venvs/ref/bin/python scripts/make_image_fixtures.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_resnet import infer_from_state_dict  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FOLDER = REPO / "tests/fixtures/images"

# (mode, resize, crop); None keeps the size.
TRANSFORMS = [
    ("RGB", 64, 56),
    ("L", 32, 28),
    ("RGB", None, 48),  # crop only: pads the smaller images
    ("RGB", 40, None),  # resize only
    ("RGB", 256, 224),  # ImageNet's: upsamples these small images
]
# The ImageNet transform only on these (its outputs are large).
IMAGENET_ONLY = {"jpeg/coffee_q75_420.jpg", "png/rgb_37x53.png"}

NETS = {
    "resnet20_cifar": dict(
        path=REPO / "tests/fixtures/resnet20_cifar.safetensors",
        mode="RGB", resize=36, crop=32,
        mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
    ),
    "resnet20_cifar_imagenet": dict(
        path=REPO / "tests/fixtures/resnet20_cifar.safetensors",
        mode="RGB", resize=256, crop=224,
        mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
    ),
    "resnet20_fmnist": dict(
        path=REPO / "assets/fashion-mnist/resnet20_fmnist.safetensors",
        mode="L", resize=32, crop=28, mean=[0.2860], std=[0.3530],
    ),
}


def photos() -> dict[str, Image.Image]:
    """Small odd-sized cuts of scikit-image's photos (Lanczos-reduced, then cropped)."""
    def cut(array, size, box):
        image = Image.fromarray(array)
        return image.reduce(size).crop(box)

    return {
        "astronaut": cut(skimage.data.astronaut(), 3, (5, 3, 156, 170)),   # 151x167
        "coffee": cut(skimage.data.coffee(), 3, (0, 0, 199, 133)),         # 199x133
        "chelsea": cut(skimage.data.chelsea(), 2, (10, 10, 207, 141)),     # 197x131
        "rocket": cut(skimage.data.rocket(), 4, (20, 0, 117, 106)),        # 97x106
        "camera": cut(skimage.data.camera(), 4, (0, 0, 121, 128)),         # 121x128, gray
    }


def write_jpegs() -> None:
    out = FOLDER / "jpeg"
    out.mkdir(parents=True, exist_ok=True)
    shots = photos()
    for name in ["astronaut", "coffee"]:
        for quality in [95, 75, 40]:
            for sub, label in [(0, "444"), (1, "422"), (2, "420")]:
                shots[name].save(out / f"{name}_q{quality}_{label}.jpg", quality=quality, subsampling=sub)
    shots["chelsea"].save(out / "chelsea_q85_420_progressive.jpg", quality=85, subsampling=2, progressive=True)
    shots["rocket"].save(out / "rocket_q90_420.jpg", quality=90, subsampling=2)
    shots["camera"].save(out / "camera_gray_q80.jpg", quality=80)


def write_pngs() -> None:
    out = FOLDER / "png"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)

    def pattern(h, w, c):
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 7 % 256, (x * y) % 256], -1)
        noisy = base[..., :c] + rng.integers(-40, 41, (h, w, c))
        return np.clip(noisy, 0, 255).astype(np.uint8)

    Image.fromarray(pattern(37, 53, 3), "RGB").save(out / "rgb_37x53.png")
    Image.fromarray(pattern(211, 29, 3), "RGB").save(out / "rgb_211x29.png")
    Image.fromarray(pattern(101, 67, 1)[..., 0], "L").save(out / "gray_101x67.png")
    Image.fromarray(pattern(31, 64, 4), "RGBA").save(out / "rgba_31x64.png")
    Image.fromarray(pattern(41, 29, 2), "LA").save(out / "la_41x29.png")
    palette = Image.fromarray(pattern(45, 45, 3), "RGB").quantize(colors=23)
    palette.save(out / "palette_45x45.png")
    palette.save(out / "palette_trns_45x45.png", transparency=5)
    Image.fromarray(pattern(19, 90, 1)[..., 0] > 127).save(out / "bits_19x90.png")
    # Outside the folder: a 16-bit PNG, which reflow refuses.
    deep = (pattern(9, 7, 1)[..., 0].astype(np.uint16) * 257)
    Image.fromarray(deep).save(FOLDER.parent / "gray16.png")


def torchvision_u8(path: Path, mode: str, resize, crop) -> torch.Tensor:
    steps = []
    if resize is not None:
        steps.append(T.Resize(resize))
    if crop is not None:
        steps.append(T.CenterCrop(crop))
    image = T.Compose(steps)(Image.open(path).convert(mode)) if steps else Image.open(path).convert(mode)
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def main() -> None:
    write_jpegs()
    write_pngs()
    files = sorted(p.relative_to(FOLDER).as_posix() for p in FOLDER.rglob("*") if p.suffix in (".jpg", ".png"))
    tensors: dict[str, torch.Tensor] = {}
    for rel in files:
        for mode, resize, crop in TRANSFORMS:
            if (resize, crop) == (256, 224) and rel not in IMAGENET_ONLY:
                continue
            key = f"{rel}|{mode}|{resize or '-'}|{crop or '-'}"
            tensors[key] = torchvision_u8(FOLDER / rel, mode, resize, crop)
    for net_name, spec in NETS.items():
        sd = load_file(spec["path"])
        net = infer_from_state_dict(sd, "cifar")
        net.load_state_dict(sd, strict=True)
        net.eval()
        tf = T.Compose([
            T.Resize(spec["resize"]), T.CenterCrop(spec["crop"]), T.ToTensor(),
            T.Normalize(spec["mean"], spec["std"]),
        ])
        x = torch.stack([tf(Image.open(FOLDER / rel).convert(spec["mode"])) for rel in files])
        with torch.no_grad():
            logits = net(x)
        for rel, row in zip(files, logits):
            tensors[f"logits/{net_name}/{rel}"] = row.clone()
        top2 = logits.topk(2, dim=1).values
        print(f"{net_name}: smallest top-1 margin {float((top2[:, 0] - top2[:, 1]).min()):.4f}")
    save_file(tensors, REPO / "tests/fixtures/image_transforms.safetensors")
    print(f"{len(files)} images, {len(tensors)} tensors")


if __name__ == "__main__":
    main()
