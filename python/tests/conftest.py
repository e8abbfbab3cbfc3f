"""What the test files share: the committed fixtures PyTorch made
(scripts/make_fixtures.py, scripts/make_prune_fixtures.py), read through the wheel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import reflow

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"


def fixture(name: str) -> dict[str, np.ndarray]:
    return reflow.load_safetensors(FIXTURES / name)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-12))


@pytest.fixture(scope="module")
def resnet20() -> dict[str, np.ndarray]:
    """A CIFAR ResNet-20 (3 input channels, 10 classes) in torchvision's names."""
    return fixture("resnet20_cifar.safetensors")


@pytest.fixture(scope="module")
def torch_reflow() -> dict[str, np.ndarray]:
    """PyTorch's global magnitude pruning at 0.9 then REFLOW (momentum=None, train
    mode) on three batches of eight 16x16 images: `calib`, and the statistics under
    `cumulative/`."""
    return fixture("reflow_resnet20.safetensors")
