"""reflow.prune against PyTorch, through the installed wheel: the fixtures were made by
PyTorch (scripts/make_fixtures.py, scripts/make_prune_fixtures.py) and are committed in
tests/fixtures; neither torch nor the Rust toolchain is needed here."""

from __future__ import annotations

import ast
import re
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import reflow
from conftest import fixture, relative_error

def calibration(torch_reflow: dict[str, np.ndarray]) -> np.ndarray:
    return torch_reflow["calib"].reshape(24, 3, 16, 16)


def test_prune_and_reflow_equal_pytorch(resnet20, torch_reflow):
    state, report = reflow.prune(resnet20, calibration(torch_reflow), 0.9, batch_size=8)
    assert list(state) == list(resnet20), "every key, in the input's order"
    stats = 0
    for key, value in state.items():
        assert value.shape == resnet20[key].shape, key
        assert value.dtype == resnet20[key].dtype, key
        if key.endswith(("running_mean", "running_var")):
            err = relative_error(value, torch_reflow[f"cumulative/{key}"])
            assert err <= 1e-5, f"{key}: relative error {err:.1e}"
            stats += 1
        elif key.endswith("num_batches_tracked"):
            assert value == torch_reflow[f"cumulative/{key}"], key
    assert stats == 2 * 21


def test_pruned_weights_are_pytorch_s_global_magnitude_masks(resnet20, torch_reflow):
    state, _ = reflow.prune(resnet20, calibration(torch_reflow), 0.9, batch_size=8)
    masks = fixture("prune_masks.safetensors")
    compared = 0
    for key, keep in masks.items():
        if not key.startswith("global/0.9/"):
            continue
        name = key.removeprefix("global/0.9/")
        np.testing.assert_array_equal(state[name] != 0, keep != 0, err_msg=name)
        compared += 1
    assert compared == 22, "21 convolutions and fc"


def test_report_says_what_was_done(resnet20, torch_reflow):
    _, report = reflow.prune(resnet20, calibration(torch_reflow), 0.9, batch_size=8)
    assert report["model"]["family"] == "resnet"
    assert report["model"]["stem"] == "cifar"
    assert (report["method"], report["repair"]) == ("magnitude", "reflow")
    assert report["calibration"]["count"] == 24
    (run,) = report["runs"]
    assert run["sparsity"] == 0.9
    assert abs(run["actual_sparsity"] - 0.9) < 1e-3
    assert run["repair"] == "reflow"
    assert len(run["bn_signal_pruned"]) == len(run["bn_signal_reflow"]) == 21


def test_the_input_is_left_as_it_was(resnet20, torch_reflow):
    before = {k: v.copy() for k, v in resnet20.items()}
    images = calibration(torch_reflow)
    images_before = images.copy()
    reflow.prune(resnet20, images, 0.5, batch_size=8)
    for key, value in before.items():
        np.testing.assert_array_equal(resnet20[key], value, err_msg=key)
    np.testing.assert_array_equal(images, images_before)


def test_two_of_four_leaves_at_most_two_of_each_four_inputs(resnet20, torch_reflow):
    state, report = reflow.prune(
        resnet20, calibration(torch_reflow), 0.0, pattern="2:4", repair="none", batch_size=8
    )
    (run,) = report["runs"]
    assert run["sparsity"] == 0.5, "2:4 removes half, whatever sparsity is given"
    skipped = set(run["skipped"])
    assert skipped == {"conv1.weight"}, "the 3-channel stem stays dense"
    checked = 0
    for key, value in state.items():
        if not key.endswith("weight") or value.ndim not in (2, 4) or key in skipped:
            continue
        rows = np.moveaxis(value, 1, -1).reshape(-1, value.shape[1]) if value.ndim == 4 else value
        groups = rows.reshape(rows.shape[0], -1, 4)
        assert ((groups != 0).sum(axis=-1) <= 2).all(), key
        checked += 1
    assert checked > 0


def test_float64_and_float16_state_dicts_are_read(resnet20, torch_reflow):
    wide = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in resnet20.items()}
    state, _ = reflow.prune(wide, calibration(torch_reflow), 0.9, batch_size=8)
    assert state["fc.weight"].dtype == np.float32
    narrow = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in resnet20.items()}
    reflow.prune(narrow, calibration(torch_reflow), 0.5, batch_size=8)


def test_safetensors_round_trip():
    state = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "n": np.array(7, dtype=np.int64),
        "h": np.ones(3, dtype=np.float16),
    }
    data = reflow._to_safetensors(state)
    for back in (reflow._from_safetensors(data), reflow._from_safetensors(bytearray(data))):
        assert list(back) == ["w", "n", "h"]
        for key, value in state.items():
            assert back[key].dtype == value.dtype
            np.testing.assert_array_equal(back[key], value)
            # Writable (views of a bytearray, or copies), and each its own values.
            assert back[key].flags.writeable and back[key].flags.aligned
        back["w"][...] = -1
        np.testing.assert_array_equal(back["n"], 7)
        np.testing.assert_array_equal(back["h"], 1)


def test_returned_and_loaded_arrays_are_writable(resnet20, torch_reflow, tmp_path):
    state, _ = reflow.prune(resnet20, calibration(torch_reflow), 0.5, batch_size=8)
    path = tmp_path / "pruned.safetensors"
    path.write_bytes(reflow._to_safetensors(state))
    loaded = reflow.load_safetensors(path)
    for tensors in (state, loaded, reflow.Network(resnet20).state_dict()):
        for key, value in tensors.items():
            assert value.flags.writeable, key
        tensors["fc.weight"][...] = 0
    np.testing.assert_array_equal(loaded["fc.bias"], state["fc.bias"])


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x01\x00", "too short for a header"),
        (struct.pack("<Q", 100) + b"{}", "a header of 100 bytes in 10 bytes"),
        (struct.pack("<Q", 3) + b"{x}", "the header is not JSON"),
        (struct.pack("<Q", 42) + b'{"w":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}'[:42], "not JSON"),
        (
            struct.pack("<Q", 56) + b'{"w":{"dtype":"U16","shape":[1],"data_offsets":[0,2]}}  ' + b"\0\0",
            "dtype 'U16' is not supported",
        ),
        (
            struct.pack("<Q", 56) + b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}  ' + b"\0" * 4,
            "the data does not fit shape [2]",
        ),
    ],
    ids=["short", "header past the end", "not json", "cut header", "dtype", "data"],
)
def test_a_corrupt_safetensors_file_is_a_one_line_error(tmp_path, data, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(reflow.ReflowError) as caught:
        reflow.load_safetensors(path)
    assert message in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s, x: (s, x[:, :1]), "calibration images: expected shape [N, 3, H, W]"),
        (lambda s, x: (s, x[0]), "calibration: expected shape [N, C, H, W]"),
        (lambda s, x: (s, np.where(np.arange(x.size).reshape(x.shape) == 700, np.nan, x)), "NaN in image 0"),
        (lambda s, x: ({k: v for k, v in s.items() if k != "layer2.0.bn1.running_var"}, x), "layer2.0.bn1.running_var"),
        (lambda s, x: ({**s, "fc.weight": s["fc.weight"].astype(bool)}, x), "dtype bool is not supported"),
        (lambda s, x: (s, x[:0]), "calibration images: none given (N = 0)"),
    ],
    ids=["channels", "not 4-d", "nan", "missing key", "bool weights", "no images"],
)
def test_bad_input_raises_the_crate_s_message(resnet20, torch_reflow, change, message):
    state, images = change(resnet20, calibration(torch_reflow))
    with pytest.raises(reflow.ReflowError, match=None) as caught:
        reflow.prune(state, images, 0.5, batch_size=8)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": 0.5, "pattern": "4:2"}, "pattern"),
        ({"sparsity": 0.5, "method": "random"}, "method"),
        ({"sparsity": 0.5, "method": "wanda", "inputs": "bogus"}, "invalid inputs"),
        ({"sparsity": 0.5, "scope": "network"}, "scope"),
        ({"sparsity": 0.5, "stem": "imagenet"}, "stem"),
        ({"sparsity": 0.5, "arch": "vgg11_bn"}, "VGG"),
        ({"sparsity": 0.5, "batch_size": 0}, "batch size"),
        ({"sparsity": 0.5, "exclude": ["layer9"]}, "layer9"),
    ],
    ids=["sparsity 1", "pattern", "method", "inputs", "scope", "stem", "arch", "batch 0", "exclude"],
)
def test_bad_options_raise_the_crate_s_message(resnet20, torch_reflow, options, message):
    sparsity = options.pop("sparsity")
    with pytest.raises(reflow.ReflowError) as caught:
        reflow.prune(resnet20, calibration(torch_reflow), sparsity, **{"batch_size": 8, **options})
    assert message in str(caught.value), str(caught.value)


def test_the_interpreter_is_released_during_the_work(resnet20, torch_reflow):
    """While a prune runs on another thread, this one keeps running Python: were the
    interpreter held, it would wait for the whole prune."""
    images = np.concatenate([calibration(torch_reflow)] * 4)
    done = []
    worker = threading.Thread(target=lambda: done.append(reflow.prune(resnet20, images, 0.9, batch_size=8)))
    ticks = 0
    started = time.perf_counter()
    worker.start()
    while worker.is_alive():
        ticks += 1
        time.sleep(0.001)
    elapsed = time.perf_counter() - started
    assert done, "the prune finished"
    assert ticks >= min(20, elapsed / 0.004), f"{ticks} ticks in {elapsed:.2f} s"


def test_a_progress_bar_asked_for_does_not_change_the_result(resnet20, torch_reflow):
    # (The bar itself is drawn only on a terminal, which pytest's standard error is not.)
    quiet, _ = reflow.prune(resnet20, calibration(torch_reflow), 0.9, batch_size=8, progress=False)
    shown, _ = reflow.prune(resnet20, calibration(torch_reflow), 0.9, batch_size=8, progress=True)
    for key, value in quiet.items():
        np.testing.assert_array_equal(shown[key], value, err_msg=key)


def test_the_error_is_a_value_error():
    assert issubclass(reflow.ReflowError, ValueError)


def test_the_readme_reads_fields_the_report_has(resnet20, torch_reflow):
    # Every `report[...]...` the package's README prints is in a real report.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    reads = re.findall(r"report((?:\[[^\]]+\])+)", readme)
    assert reads, "the README reads the report"
    _, report = reflow.prune(resnet20, calibration(torch_reflow), 0.5, batch_size=8)
    for path in reads:
        value = report
        for key in re.findall(r"\[([^\]]+)\]", path):
            value = value[ast.literal_eval(key)]
        assert value is not None, path
