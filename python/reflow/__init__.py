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
import struct
import sys
from collections.abc import Iterable, Mapping
from os import PathLike
from typing import Any

import numpy as np

from ._reflow import ReflowError, version
from ._reflow import prune as _prune

__all__ = ["ReflowError", "load_safetensors", "prune", "version"]

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
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def _from_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """The tensors of safetensors ``data``, in the file's order."""
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
        values = np.frombuffer(data, dtype=dtype.newbyteorder("<"), count=count, offset=base + start)
        tensors[name] = values.astype(dtype).reshape(shape)
    return tensors


def load_safetensors(path: str | PathLike[str]) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as numpy arrays (float32, float64, float16,
    int64, int32, uint8, int8 and bool tensors), in the file's order."""
    with open(path, "rb") as f:
        return _from_safetensors(f.read())


def prune(
    state_dict: Mapping[str, Any],
    calibration: Any,
    sparsity: float,
    *,
    pattern: str = "unstructured",
    method: str = "magnitude",
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
