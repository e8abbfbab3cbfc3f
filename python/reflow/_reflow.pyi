"""The Rust extension inside the package (see ``reflow.prune`` for the documented API)."""

from typing import TypedDict

class ReflowError(ValueError):
    """An error of the reflow crate, with its message."""

def version() -> str:
    """The version of the reflow crate inside."""

class _Options(TypedDict):
    sparsity: float
    pattern: str
    method: str
    repair: str
    scope: str
    stem: str | None
    arch: str | None
    batch_size: int
    seed: int | None
    exclude: list[str]
    progress: bool

def prune(
    state: bytes, images: bytes, dims: tuple[int, int, int, int], options: _Options
) -> tuple[bytes, str]:
    """Safetensors bytes and little-endian float32 images in; the pruned state dict's
    safetensors bytes and the report's JSON out."""
