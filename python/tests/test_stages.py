"""reflow.Network: the stages one at a time, against PyTorch's outputs (committed
fixtures from scripts/make_fixtures.py and the image-pipeline fixtures) and against
the one-call reflow.prune."""

from __future__ import annotations


import numpy as np
import pytest

import reflow
from conftest import FIXTURES, fixture, relative_error

STATS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def outputs() -> dict[str, np.ndarray]:
    """PyTorch's ResNet-20 on two 16x16 images: `input`, `logits`, and every batch
    norm's output under `bn/`."""
    return fixture("resnet20_cifar.io.safetensors")


def calibration() -> np.ndarray:
    return fixture("reflow_resnet20.safetensors")["calib"].reshape(24, 3, 16, 16)


def test_a_network_reads_its_family_and_gives_its_state_back(resnet20):
    net = reflow.Network(resnet20)
    assert (net.family, net.in_channels, net.num_classes) == ("resnet", 3, 10)
    weights = {k: v for k, v in resnet20.items() if not k.endswith(STATS)}
    assert net.parameters == sum(v.size for v in weights.values())
    assert net.prunable == sum(v.size for k, v in weights.items() if k.endswith("weight") and v.ndim > 1)
    assert "parameters" in repr(net)
    state = net.state_dict()
    assert list(state) == list(resnet20)
    assert all(np.array_equal(state[k], resnet20[k]) for k in state)


def test_logits_and_signal_are_pytorchs(resnet20, outputs):
    net = reflow.Network(resnet20)
    logits = net.logits(outputs["input"], batch_size=1)
    assert logits.shape == (2, 10) and logits.dtype == np.float32
    assert relative_error(logits, outputs["logits"]) <= 1e-5
    signal = net.signal(outputs["input"])
    names = [k[len("bn/") :] for k in outputs if k.startswith("bn/")]
    assert list(signal) == names, "every batch norm, in forward order"
    for name in names:
        x = outputs[f"bn/{name}"].astype(np.float64)
        want = x.var(axis=(0, 2, 3)).mean()  # biased, per channel over (N, H, W)
        assert abs(signal[name] - want) <= 1e-5 * want, name
    report = net.evaluate(outputs["input"], [3, 7])
    assert report["images"] == 2
    top1 = outputs["logits"].argmax(axis=1)
    assert report["correct"] == int((top1 == [3, 7]).sum())
    assert report["bn_signal"] == pytest.approx(signal, rel=1e-12)
    assert net.evaluate(outputs["input"])["top1"] is None


def test_the_stages_one_at_a_time_are_the_one_call(resnet20):
    images = calibration()
    net = reflow.Network(resnet20)
    pruned = net.prune(0.9)
    assert pruned["pattern"] == "unstructured"
    assert abs(pruned["actual_sparsity"] - 0.9) < 1e-3
    net.reflow(images, batch_size=8)
    state, _ = reflow.prune(resnet20, images, 0.9, batch_size=8)
    mine = net.state_dict()
    assert list(mine) == list(state)
    for key in state:
        assert np.array_equal(mine[key], state[key]), key


def test_reflow_is_pytorchs_and_changes_no_weight(resnet20):
    torch_reflow = fixture("reflow_resnet20.safetensors")
    net = reflow.Network(resnet20)
    net.prune(0.9)
    before = net.state_dict()
    net.reflow(calibration(), batch_size=8)
    after = net.state_dict()
    for key, value in after.items():
        if key.endswith(("running_mean", "running_var")):
            assert relative_error(value, torch_reflow[f"cumulative/{key}"]) <= 1e-5, key
        elif key.endswith("num_batches_tracked"):
            assert value == torch_reflow[f"cumulative/{key}"], key
        else:
            assert np.array_equal(value, before[key]), key


def test_an_image_folder_is_read_as_torchvision_reads_it(resnet20):
    folder = FIXTURES / "images"
    images = reflow.image_folder(
        folder, resize=36, crop=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )
    files = sorted(
        f"{c.name}/{f.name}" for c in folder.iterdir() if c.is_dir() for f in sorted(c.iterdir())
    )
    assert len(images) == len(files) and images.dims == (3, 32, 32)
    assert images.labels == [0 if f.startswith("jpeg/") else 1 for f in files]
    expected = fixture("image_transforms.safetensors")
    want = np.stack([expected[f"logits/resnet20_cifar/{f}"] for f in files])
    net = reflow.Network(resnet20)
    logits = net.logits(images, batch_size=7)
    assert np.array_equal(logits.argmax(axis=1), want.argmax(axis=1))
    png = [i for i, f in enumerate(files) if f.endswith(".png")]
    assert relative_error(logits[png], want[png]) <= 1e-4
    report = net.evaluate(images)
    assert report["correct"] == int((want.argmax(axis=1) == images.labels).sum())
    preset = reflow.image_folder(folder, preset="imagenet", resize=36, crop=32)
    assert np.array_equal(net.logits(preset, batch_size=7), logits)


@pytest.mark.parametrize("inputs", ["dense", "sequential"])
def test_the_one_call_measures_wanda_s_inputs_as_asked(resnet20, inputs):
    images = calibration()
    net = reflow.Network(resnet20)
    net.prune(0.7, method="wanda", inputs=inputs, calibration=images, batch_size=8)
    net.reflow(images, batch_size=8)
    state, report = reflow.prune(resnet20, images, 0.7, method="wanda", inputs=inputs, batch_size=8)
    assert report["inputs"] == inputs
    other, _ = reflow.prune(
        resnet20, images, 0.7, method="wanda", batch_size=8,
        inputs="dense" if inputs == "sequential" else "sequential",
    )
    mine = net.state_dict()
    for key in state:
        assert np.array_equal(mine[key], state[key]), key
    assert any(not np.array_equal(state[k], other[k]) for k in state if k.endswith("conv2.weight"))


def test_channel_pruning_and_wanda_through_a_network(resnet20):
    net = reflow.Network(resnet20)
    report = net.prune(0.5, pattern="channel")
    assert report["params"] == net.parameters < reflow.Network(resnet20).parameters
    state = net.state_dict()
    assert state["layer1.0.conv1.weight"].shape[0] < resnet20["layer1.0.conv1.weight"].shape[0]
    wanda = reflow.Network(resnet20)
    with pytest.raises(reflow.ReflowError, match="calibration"):
        wanda.prune(0.5, method="wanda")
    report = wanda.prune(0.5, method="wanda", calibration=calibration(), batch_size=8)
    assert abs(report["actual_sparsity"] - 0.5) < 0.02
    nm = reflow.Network(resnet20).prune(0.0, pattern="2:4")
    assert nm["skipped"] == ["conv1.weight"]


def test_bad_input_raises_the_crates_error(resnet20, outputs):
    net = reflow.Network(resnet20)
    gray = np.zeros((2, 1, 16, 16), np.float32)
    cases = [
        (lambda: net.logits(gray), "[N, 3, H, W]"),
        (lambda: net.logits(np.zeros((3, 16, 16), np.float32)), "[N, C, H, W]"),
        (lambda: net.logits(outputs["input"], batch_size=0), "batch_size"),
        (lambda: net.evaluate(outputs["input"], [1]), "1 labels for 2 images"),
        (lambda: net.evaluate(outputs["input"], [1, 10]), "10 classes"),
        (lambda: net.reflow(calibration(), mode="fast"), "cumulative, ema or exact"),
        (lambda: net.reflow(calibration(), momentum=0.2), "momentum"),
        (lambda: net.reflow(calibration(), count=25), "calibration"),
        (lambda: net.prune(1.5), "sparsity"),
        (lambda: net.prune(0.5, exclude=["nothing"]), "nothing"),
        (lambda: reflow.image_folder(FIXTURES / "no-such-folder", preset="imagenet"), "no-such-folder"),
        (lambda: reflow.image_folder(FIXTURES / "images"), "mean and std"),
        (lambda: reflow.Network({"a.weight": np.zeros(3, np.float32)}), "family"),
    ]
    for call, needle in cases:
        with pytest.raises(reflow.ReflowError) as e:
            call()
        assert needle in str(e.value), (needle, str(e.value))
    assert np.array_equal(net.state_dict()["fc.weight"], resnet20["fc.weight"]), "unchanged"
