"""Data from Python by one rule on the ONNX and torch paths (`mst.Dataset`, `(x, y)` pairs, arrays and
tensors), one scaling rule (uint8 given whole scaled as float32(x) * float32(1/255) on both paths,
batches formed in Python never scaled), several-input torch modules, and the note an image folder
gets when it is converted to fit the model. Statistics are checked against numpy in float64."""
from __future__ import annotations

import io
import contextlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import mstransform as mst
from mstransform.core.errors import DataError

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "fashion_mnist"


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(12, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b = nn.Linear(4, 6), nn.Linear(3, 6)

    def forward(self, x, z):
        return torch.relu(self.a(x) + self.b(z))


def _pre_relu(model: Mlp, x: np.ndarray) -> np.ndarray:
    """The site tensor (fc1's output) in float64 numpy: the independent reference."""
    w, b = model.fc1.weight.detach().double().numpy(), model.fc1.bias.detach().double().numpy()
    return x.astype(np.float64) @ w.T + b


def _only(stats) -> np.ndarray:
    (site,) = stats.sites.values()
    return site.moments.mean


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    model = Mlp().eval()
    path = tmp_path_factory.mktemp("ds") / "mlp.onnx"
    with contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model, (torch.zeros(1, 12),), str(path), dynamo=False, input_names=["input"],
                          output_names=["out"], dynamic_axes={"input": {0: "batch"}})
    rng = np.random.default_rng(0)
    return model, path, rng.standard_normal((40, 12)).astype(np.float32), rng.integers(0, 3, 40)


def _form(name: str, x: np.ndarray, y: np.ndarray):
    """The same 40 float samples in one of the forms a user has at hand."""
    t, ty = torch.from_numpy(x), torch.from_numpy(y)
    pairs = [(t[i:i + 16], ty[i:i + 16]) for i in range(0, 40, 16)]
    return {
        "array": lambda: x,
        "tensor": lambda: t,
        "(x, y) tensor pairs": lambda: pairs,
        "(x, y) array pairs": lambda: [(x[i:i + 16], y[i:i + 16]) for i in range(0, 40, 16)],
        "bare tensor batches": lambda: [t[i:i + 16] for i in range(0, 40, 16)],
        "Dataset with transform_fn": lambda: mst.Dataset(pairs, lambda b: b[0]),
    }[name]()


FORMS = ["array", "tensor", "(x, y) tensor pairs", "(x, y) array pairs", "bare tensor batches",
         "Dataset with transform_fn"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("path", ["onnx", "torch"])
def test_every_form_on_both_paths(mlp, form, path):
    model, onnx_path, x, y = mlp
    stats = mst.calibrate(onnx_path if path == "onnx" else model, _form(form, x, y), batch_size=16, progress=False)
    assert stats.samples == 40
    np.testing.assert_allclose(_only(stats), _pre_relu(model, x).mean(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", ["onnx", "torch"])
def test_uint8_given_whole_is_scaled_alike_on_both_paths(mlp, path):
    model, onnx_path, _, _ = mlp
    raw = np.random.default_rng(3).integers(0, 256, (24, 12), dtype=np.uint8)
    stats = mst.calibrate(onnx_path if path == "onnx" else model, raw, batch_size=8, progress=False)
    scaled = raw.astype(np.float32) * np.float32(1 / 255)
    np.testing.assert_allclose(_only(stats), _pre_relu(model, scaled).mean(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", ["onnx", "torch"])
def test_uint8_batches_formed_in_python_are_refused_in_one_line(mlp, path):
    model, onnx_path, _, _ = mlp
    raw = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (8, 12), dtype=np.uint8))
    with pytest.raises(DataError, match="scale them") as e:
        mst.calibrate(onnx_path if path == "onnx" else model, [(raw, torch.zeros(8))], progress=False)
    assert "\n" not in str(e.value)


def test_two_input_torch_module_takes_a_tuple_per_batch():
    model = TwoInputs().eval()
    rng = np.random.default_rng(2)
    x, z = rng.standard_normal((30, 4)).astype(np.float32), rng.standard_normal((30, 3)).astype(np.float32)
    pairs = [(torch.from_numpy(x[i:i + 10]), torch.from_numpy(z[i:i + 10])) for i in range(0, 30, 10)]
    pre = (x.astype(np.float64) @ model.a.weight.detach().double().numpy().T + model.a.bias.detach().double().numpy()
           + z.astype(np.float64) @ model.b.weight.detach().double().numpy().T
           + model.b.bias.detach().double().numpy())
    for data in (mst.Dataset(pairs, tuple), [(p, torch.zeros(10)) for p in pairs],
                 [{"x": a, "z": b, "labels": torch.zeros(10)} for a, b in pairs]):
        stats = mst.calibrate(model, data, progress=False)
        assert stats.samples == 30
        np.testing.assert_allclose(_only(stats), pre.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(next(iter(stats.sites.values())).moments.var, pre.var(0), rtol=1e-4, atol=1e-6)


def test_two_input_torch_module_given_one_tensor_is_one_line():
    x = torch.randn(8, 4)
    with pytest.raises(DataError, match=r"takes 2 input\(s\) \(x, z\); a batch holds 1") as e:
        mst.calibrate(TwoInputs().eval(), [x], progress=False)
    assert "\n" not in str(e.value)


def test_dataset_refuses_what_is_not_iterable():
    with pytest.raises(DataError, match="iterable"):
        mst.Dataset(3)


def _images(folder: Path, mode: str, size: tuple[int, int], n: int = 3) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"{i}.png")


@pytest.mark.parametrize("mode, size, expected", [
    ("RGB", (32, 30), ["converted from RGB (3 channel(s)) to L (1 channel(s))",
                       "resized (bilinear) from 32x30 to 28x28 (WxH)"]),
    ("L", (28, 28), []),
])
def test_an_image_folder_that_does_not_fit_says_what_it_converted(tmp_path, mode, size, expected):
    folder = tmp_path / "imgs"
    _images(folder, mode, size)
    r = subprocess.run([sys.executable, "-m", "mstransform", "calibrate", str(EXAMPLE / "model.onnx"), "--data",
                        str(folder), "-o", str(tmp_path / "s.npz")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith("note: images of")]
    if not expected:
        assert notes == []
        return
    assert len(notes) == 1
    for words in expected:
        assert words in notes[0]
