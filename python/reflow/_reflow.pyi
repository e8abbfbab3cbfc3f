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
    inputs: str
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
) -> tuple[bytearray, str]:
    """Safetensors bytes and little-endian float32 images in; the pruned state dict's
    safetensors bytes and the report's JSON out."""

class Images:
    """Images for a network's stages (see ``reflow.image_folder``)."""

    @staticmethod
    def from_array(data: bytes, dims: tuple[int, int, int, int]) -> Images: ...
    @staticmethod
    def from_folder(
        path: str,
        channels: int,
        mean: list[float],
        std: list[float],
        resize: int | None = None,
        crop: int | None = None,
    ) -> Images: ...
    def __len__(self) -> int: ...
    @property
    def dims(self) -> tuple[int, int, int]: ...
    @property
    def labels(self) -> list[int] | None: ...

class _PruneOptions(TypedDict):
    sparsity: float
    pattern: str
    method: str
    inputs: str
    scope: str
    exclude: list[str]
    batch_size: int
    count: int | None
    seed: int | None

class Network:
    """A network of the crate (see ``reflow.Network`` for the documented API)."""

    def __init__(self, state: bytes, arch: str | None = None, stem: str | None = None) -> None: ...
    @property
    def family(self) -> str: ...
    @property
    def arch(self) -> str: ...
    @property
    def parameters(self) -> int: ...
    @property
    def prunable(self) -> int: ...
    @property
    def in_channels(self) -> int: ...
    @property
    def num_classes(self) -> int: ...
    def state(self) -> bytearray: ...
    def logits(self, images: Images, batch_size: int) -> bytes: ...
    def evaluate(
        self, images: Images, labels: list[int] | None, batch_size: int, signal_count: int | None
    ) -> str: ...
    def prune(self, options: _PruneOptions, calibration: Images | None = None) -> str: ...
    def reflow(
        self,
        calibration: Images,
        mode: str,
        momentum: float | None,
        batch_size: int,
        count: int | None = None,
        seed: int | None = None,
    ) -> None: ...
