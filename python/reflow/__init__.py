"""One-shot pruning of convolutional networks without gradients, with REFLOW.

Python bindings of the Rust crate ``reflow``: prune a torchvision-layout state dict
(ResNet/ResNeXt/Wide ResNet, RegNet X/Y, MobileNetV2/V3, EfficientNet, VGG-BN,
ShuffleNetV2) and re-estimate its batch-norm statistics on a few calibration images,
which gives back the accuracy one-shot magnitude pruning takes away.

>>> import reflow, torch, torchvision                      # doctest: +SKIP
>>> model = torchvision.models.resnet18(weights="DEFAULT")  # doctest: +SKIP
>>> state, report = reflow.prune(model.state_dict(), calibration, 0.8)  # doctest: +SKIP
>>> model.load_state_dict(state, strict=True)              # doctest: +SKIP

State dicts cross as dicts of numpy arrays or of torch tensors (without torch being
needed: tensors are read through ``.detach().cpu().numpy()``); the result is of the
same kind as the input's values. Errors of the crate are raised as
:class:`ReflowError` (a :class:`ValueError`) with the crate's message.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Iterable, Mapping
from os import PathLike
from typing import Any

import numpy as np

from . import _reflow
from ._reflow import Images, ReflowError, version
from ._reflow import prune as _prune

__all__ = [
    "Images",
    "Network",
    "ReflowError",
    "image_folder",
    "load_safetensors",
    "prune",
    "version",
]

# numpy dtypes a state dict may hold, by their safetensors names (read as float32,
# counters as int64, as the crate reads them).
_TO_SAFETENSORS = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
}
# What `load_safetensors` reads: those, and masks' bytes and booleans.
_FROM_SAFETENSORS = {name: dtype for dtype, name in _TO_SAFETENSORS.items()} | {
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "BOOL": np.dtype(np.bool_),
}


def _is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _as_array(value: Any, what: str) -> np.ndarray:
    """``value`` (a numpy array, a torch tensor, anything ``np.asarray`` takes) as an
    array, torch's bfloat16 as float32 (numpy has no bfloat16)."""
    if _is_torch(value):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    try:
        return np.asarray(value)
    except Exception as e:  # an object numpy cannot read
        raise ReflowError(f"{what}: not an array ({type(value).__name__}): {e}") from None


def _to_safetensors(state: Mapping[str, Any]) -> bytes:
    """``state`` in the safetensors layout (8-byte header length, JSON header, data)."""
    header: dict[str, Any] = {}
    chunks = []
    offset = 0
    for name, value in state.items():
        if not isinstance(name, str):
            raise ReflowError(f"state dict: key {name!r} is not a string")
        array = _as_array(value, f"state dict: key {name!r}")
        dtype = _TO_SAFETENSORS.get(array.dtype)
        if dtype is None:
            raise ReflowError(
                f"state dict: key {name!r}: dtype {array.dtype} is not supported "
                "(float32, float64, float16, bfloat16; int64 or int32 for counters)"
            )
        # The array's own bytes (a view, no copy, when it is contiguous and
        # little-endian already): the one copy is the join below.
        data = memoryview(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))).cast("B")
        header[name] = {
            "dtype": dtype,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return b"".join([struct.pack("<Q", len(head)), head, *chunks])


def _from_safetensors(data: bytes | bytearray) -> dict[str, np.ndarray]:
    """The tensors of safetensors ``data``, in the file's order: views of a
    ``bytearray`` where they can be (writable, no copy; the buffer lives as long as
    one of them does), else copies."""
    if len(data) < 8:
        raise ReflowError(f"safetensors: {len(data)} bytes, too short for a header")
    (size,) = struct.unpack_from("<Q", data, 0)
    if 8 + size > len(data):
        raise ReflowError(f"safetensors: a header of {size} bytes in {len(data)} bytes")
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError as e:
        raise ReflowError(f"safetensors: the header is not JSON: {e}") from None
    base = 8 + size
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _FROM_SAFETENSORS.get(info.get("dtype"))
        if dtype is None:
            raise ReflowError(f"safetensors: key {name!r}: dtype {info.get('dtype')!r} is not supported")
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        if end - start != count * dtype.itemsize or base + end > len(data):
            raise ReflowError(f"safetensors: key {name!r}: the data does not fit shape {list(shape)}")
        stored = dtype.newbyteorder("<")
        values = np.frombuffer(data, dtype=stored, count=count, offset=base + start)
        # A copy when the view would be read-only (bytes), big-endian, or unaligned.
        if not values.flags.writeable or stored != dtype or not values.flags.aligned:
            values = values.astype(dtype)
        tensors[name] = values.reshape(shape)
    return tensors


def load_safetensors(path: str | PathLike[str]) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as numpy arrays (float32, float64, float16,
    int64, int32, uint8, int8 and bool tensors), in the file's order."""
    with open(path, "rb") as f:
        data = bytearray(os.fstat(f.fileno()).st_size)
        if f.readinto(data) != len(data):
            raise ReflowError(f"{path}: the file changed while it was read")
    return _from_safetensors(data)


def prune(
    state_dict: Mapping[str, Any],
    calibration: Any,
    sparsity: float,
    *,
    pattern: str = "unstructured",
    method: str = "magnitude",
    inputs: str = "dense",
    repair: str = "reflow",
    scope: str = "global",
    stem: str | None = None,
    arch: str | None = None,
    batch_size: int = 64,
    seed: int | None = None,
    exclude: Iterable[str] = (),
    progress: bool | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Prunes the network ``state_dict`` holds and repairs it on ``calibration``.

    Args:
        state_dict: a torchvision-layout state dict (numpy arrays or torch tensors);
            its family is read off its keys unless ``arch`` names it.
        calibration: the calibration images, normalised as the network expects them,
            float32 ``(N, C, H, W)`` (a numpy array or a torch tensor). They are also
            the images the report's signal and fidelity are measured on.
        sparsity: the fraction of the prunable weights to remove, in [0, 1) (for
            ``pattern="channel"`` the fraction of channels; ignored for N:M).
        pattern: ``"unstructured"``, ``"N:M"`` (``"2:4"``) or ``"channel"``.
        method: ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"``.
        inputs: what ``"wanda"`` and ``"sparsegpt"`` measure each layer's inputs
            on: ``"dense"`` (the dense network, one pass) or ``"sequential"`` (the
            network pruned so far, layer by layer).
        repair: ``"reflow"`` (re-estimate every batch norm's statistics), ``"none"``
            or ``"auto"`` (REFLOW only where the calibration set can be trusted).
        scope: ``"global"`` (one ranking over the network) or ``"layer"``.
        stem: a ResNet's stem, ``"cifar"`` or ``"imagenet"``; read off the stem's
            kernel when not given.
        arch: a family (``"resnet"``) or preset (``"resnet18"``) to read the state
            dict as, checked against its shapes; ``None`` detects it.
        batch_size: calibration batch size.
        seed: draws the calibration batches by a seeded shuffle instead of in order.
        exclude: parameter names or prefixes never pruned.
        progress: draw a progress bar on standard error (the dense network's
            evaluation, then the pruned and the repaired network's); by default when
            standard error is a terminal.

    Returns:
        The pruned and repaired state dict (every key of the input, loadable with
        ``strict=True``; torch tensors if the input's were, else numpy arrays), and
        the report as a dict (the fields of ``reflow prune --report``).

    Raises:
        ReflowError: bad input (shapes, keys, NaN, out-of-range numbers, empty data),
            a network the crate does not read, or a step that failed.
    """
    torch_out = any(_is_torch(v) for v in state_dict.values())
    images = np.ascontiguousarray(_as_array(calibration, "calibration"), dtype="<f4")
    if images.ndim != 4:
        raise ReflowError(
            f"calibration: expected shape [N, C, H, W], found {list(images.shape)}"
        )
    if isinstance(exclude, str):
        exclude = [exclude]
    options = {
        "sparsity": float(sparsity),
        "pattern": pattern,
        "method": method,
        "inputs": inputs,
        "repair": repair,
        "scope": scope,
        "stem": stem,
        "arch": arch,
        "batch_size": int(batch_size),
        "seed": None if seed is None else int(seed),
        "exclude": list(exclude),
        "progress": sys.stderr.isatty() if progress is None else bool(progress),
    }
    result, report = _prune(_to_safetensors(state_dict), images.tobytes(), tuple(images.shape), options)
    # The crate writes the keys in the network's order, which is the state dict's.
    tensors = _from_safetensors(result)
    if torch_out:
        import torch

        return {k: torch.from_numpy(v) for k, v in tensors.items()}, json.loads(report)
    return tensors, json.loads(report)


# torchvision's ImageNet preprocessing: Resize(256), CenterCrop(224), Normalize.
_IMAGENET = {"resize": 256, "crop": 224, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def image_folder(
    path: str | PathLike[str],
    *,
    mean: Iterable[float] | None = None,
    std: Iterable[float] | None = None,
    resize: int | None = None,
    crop: int | None = None,
    channels: int = 3,
    preset: str | None = None,
) -> Images:
    """The JPEG and PNG images of a folder, read and preprocessed as torchvision does.

    The folder is in torchvision's ``ImageFolder`` layout (one sub-folder per class,
    classes sorted by name: the images are labelled) or holds the images directly
    (no labels). Each image is read as ``channels`` channels, resized so that its
    shorter side is ``resize`` (``Resize(resize)``: bilinear, antialiased),
    centre-cropped to ``crop`` x ``crop`` (``CenterCrop``), and normalised by
    ``mean`` and ``std`` (``ToTensor`` then ``Normalize``). ``preset="imagenet"``
    gives 256, 224 and ImageNet's mean and std; arguments given win.

    The result goes wherever a :class:`Network` stage takes images.
    """
    if preset not in (None, "imagenet"):
        raise ReflowError(f"preset: {preset!r} (expected 'imagenet')")
    base = _IMAGENET if preset == "imagenet" else {}
    mean = base.get("mean") if mean is None else mean
    std = base.get("std") if std is None else std
    if mean is None or std is None:
        raise ReflowError("image_folder: give mean and std (or preset='imagenet')")
    return Images.from_folder(
        str(path),
        int(channels),
        [float(m) for m in mean],
        [float(s) for s in std],
        base.get("resize") if resize is None else int(resize),
        base.get("crop") if crop is None else int(crop),
    )


def _images(images: Any, what: str) -> Images:
    """``images`` as the extension takes them: an :class:`Images` as it is, an array
    (numpy or torch) of normalised float32 ``(N, C, H, W)`` values as bytes."""
    if isinstance(images, Images):
        return images
    array = np.ascontiguousarray(_as_array(images, what), dtype="<f4")
    if array.ndim != 4:
        raise ReflowError(f"{what}: expected shape [N, C, H, W], found {list(array.shape)}")
    return Images.from_array(array.tobytes(), tuple(array.shape))


class Network:
    """A network of one of the crate's families, loaded from a state dict, and the
    stages of the protocol one at a time: prune, repair, measure, evaluate.

    >>> net = reflow.Network(model.state_dict())                 # doctest: +SKIP
    >>> net.evaluate(reflow.image_folder("val", preset="imagenet"))["top1"]  # doctest: +SKIP
    >>> net.prune(0.8)                                           # doctest: +SKIP
    >>> net.reflow(calibration)                                  # doctest: +SKIP
    >>> model.load_state_dict(net.state_dict(), strict=True)     # doctest: +SKIP

    Images are normalised float32 ``(N, C, H, W)`` arrays (numpy or torch) or
    :func:`image_folder`'s. Every stage runs with the interpreter released.
    """

    def __init__(
        self, state_dict: Mapping[str, Any], *, arch: str | None = None, stem: str | None = None
    ) -> None:
        """Reads ``state_dict`` (torchvision layout; numpy arrays or torch tensors) as
        the family its keys say, or as ``arch`` (a family or a preset, checked against
        the shapes); a ResNet's ``stem`` (``"cifar"``, ``"imagenet"``) is read off its
        stem kernel unless given."""
        self._torch = any(_is_torch(v) for v in state_dict.values())
        self._net = _reflow.Network(_to_safetensors(state_dict), arch, stem)

    @property
    def family(self) -> str:
        """``resnet``, ``regnet``, ``mobilenet_v2``, ``mobilenet_v3``, ``efficientnet``,
        ``vgg`` or ``shufflenet_v2``."""
        return self._net.family

    @property
    def arch(self) -> str:
        """The torchvision preset its shapes match (``resnet18``), else the family."""
        return self._net.arch

    @property
    def parameters(self) -> int:
        """Parameters, as PyTorch counts them."""
        return self._net.parameters

    @property
    def prunable(self) -> int:
        """Convolution and linear weights."""
        return self._net.prunable

    @property
    def in_channels(self) -> int:
        return self._net.in_channels

    @property
    def num_classes(self) -> int:
        return self._net.num_classes

    def __repr__(self) -> str:
        return f"Network({self.arch}, {self.parameters} parameters)"

    def state_dict(self) -> dict[str, Any]:
        """The network's state dict: every key torchvision's model has, loadable with
        ``strict=True`` (the compact shapes after channel pruning); torch tensors if
        the state dict it was made from held them, else numpy arrays."""
        tensors = _from_safetensors(self._net.state())
        if self._torch:
            import torch

            return {k: torch.from_numpy(v) for k, v in tensors.items()}
        return tensors

    def logits(self, images: Any, *, batch_size: int = 256) -> np.ndarray:
        """The outputs on ``images``, float32 ``(N, classes)``."""
        images = _images(images, "images")
        data = self._net.logits(images, int(batch_size))
        return np.frombuffer(data, dtype="<f4").reshape(len(images), self.num_classes).copy()

    def evaluate(
        self,
        images: Any,
        labels: Any = None,
        *,
        batch_size: int = 256,
        signal_images: int | None = None,
    ) -> dict[str, Any]:
        """Top-1 on ``images`` and the signal metric of every batch norm, in one pass.

        ``labels`` (integers, one per image) default to an image folder's classes.
        Returns ``{"images", "correct", "top1", "bn_signal"}``: ``correct`` and
        ``top1`` are ``None`` without labels; ``bn_signal`` maps each batch norm, in
        forward order, to the mean over its channels of each channel's variance over
        the first ``signal_images`` images (1000, or all when there are fewer) — the
        signal whose collapse REFLOW repairs.
        """
        images = _images(images, "images")
        if labels is not None:
            labels = [int(v) for v in _as_array(labels, "labels").reshape(-1)]
            if any(v < 0 for v in labels):
                raise ReflowError("labels: negative values")
        report = self._net.evaluate(
            images,
            labels,
            int(batch_size),
            None if signal_images is None else int(signal_images),
        )
        return json.loads(report)

    def signal(self, images: Any, *, batch_size: int = 256) -> dict[str, float]:
        """The signal metric of every batch norm on all of ``images``, in forward
        order (see :meth:`evaluate`)."""
        images = _images(images, "images")
        report = self._net.evaluate(images, None, int(batch_size), len(images))
        return {k: float(v) for k, v in json.loads(report)["bn_signal"].items()}

    def prune(
        self,
        sparsity: float,
        *,
        pattern: str = "unstructured",
        method: str = "magnitude",
        inputs: str = "dense",
        scope: str = "global",
        exclude: Iterable[str] = (),
        calibration: Any = None,
        batch_size: int = 64,
        count: int | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Prunes the network in place (no repair: see :meth:`reflow`).

        ``sparsity``, ``pattern``, ``method``, ``scope`` and ``exclude`` as in
        :func:`prune`; ``method="wanda"`` and ``"sparsegpt"`` measure each layer's
        inputs on ``calibration`` (``count`` of its images in batches of
        ``batch_size``; on the dense network, or layer by layer with
        ``inputs="sequential"``). Channel pruning makes the network compact.

        Returns what was pruned: ``{"pattern", "sparsity", "actual_sparsity",
        "layers"}``, with ``"skipped"`` (N:M: tensors left dense; channel:
        convolutions kept whole) and ``"params"`` (channel: the compact network's).
        """
        if isinstance(exclude, str):
            exclude = [exclude]
        options = {
            "sparsity": float(sparsity),
            "pattern": pattern,
            "method": method,
            "inputs": inputs,
            "scope": scope,
            "exclude": list(exclude),
            "batch_size": int(batch_size),
            "count": None if count is None else int(count),
            "seed": None if seed is None else int(seed),
        }
        images = None if calibration is None else _images(calibration, "calibration")
        return json.loads(self._net.prune(options, images))

    def reflow(
        self,
        calibration: Any,
        *,
        mode: str = "cumulative",
        momentum: float | None = None,
        batch_size: int = 64,
        count: int | None = None,
        seed: int | None = None,
    ) -> None:
        """REFLOW: re-estimates every batch norm's running statistics on
        ``calibration`` (``count`` of its images, all by default, in batches of
        ``batch_size``, in order or by a shuffle seeded with ``seed``), as PyTorch's
        train-mode pass with ``momentum=None`` (``mode="cumulative"``), an
        exponential average (``"ema"``, ``momentum`` 0.1 by default) or over the whole
        set at once (``"exact"``). No trainable weight changes."""
        images = _images(calibration, "calibration")
        self._net.reflow(
            images,
            mode,
            None if momentum is None else float(momentum),
            int(batch_size),
            None if count is None else int(count),
            None if seed is None else int(seed),
        )
