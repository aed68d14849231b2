"""Calibration data in every accepted form gives the same statistics as the .npz route."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import EXAMPLE, ingraph_tolerance
from PIL import Image

import mstransform as mst
from mstransform.core.errors import DataError
from mstransform.runtime.data import DataSource, InputSpec, Preprocess

MODEL = EXAMPLE / "model.onnx"
N = 96


@pytest.fixture(scope="module")
def images():
    with np.load(EXAMPLE / "val.npz") as z:
        return z["input"][:N], z["labels"][:N]


@pytest.fixture(scope="module")
def reference(images):
    return mst.calibrate(MODEL, {"input": images[0]}, batch_size=32, progress=False, extent=True)


def same(a, b, batch=32):
    """Equal within twice the in-graph bound (each side is within it of the truth; orders differ)."""
    assert list(a.sites) == list(b.sites) and a.samples == b.samples
    for name in a.sites:
        ma, mb = a.sites[name].moments, b.sites[name].moments
        inner = ma.count // a.samples  # positions per sample
        mean_f, var_f = ingraph_tolerance((batch, ma.channels, inner), 1, batch)
        assert np.all(np.abs(ma.mean - mb.mean) <= 2 * mean_f * np.sqrt(ma.var) + 1e-300), name
        assert np.all(np.abs(ma.var - mb.var) <= 2 * var_f * ma.var + 1e-300), name
        # x / 255 here and x * float32(1/255) in the loader round a few inputs differently
        np.testing.assert_allclose(ma.absmax, mb.absmax, rtol=1e-6)


def test_image_folder_with_class_subfolders(images, reference, tmp_path):
    x, y = images
    for i, (img, label) in enumerate(zip(x, y)):
        d = tmp_path / f"class{label}"
        d.mkdir(exist_ok=True)
        Image.fromarray(img[0]).save(d / f"{i:04d}.png")
    stats = mst.calibrate(MODEL, tmp_path, batch_size=32, progress=False, extent=True)
    assert stats.samples == N
    same(stats, reference)  # PNG is lossless and the order does not matter to the statistics
    src = DataSource(tmp_path, [InputSpec("input", np.dtype(np.float32), (None, 1, 28, 28))], batch_size=50)
    labels = np.concatenate([b.labels for b in src])
    assert sorted(set(labels)) == list(range(len(set(y))))


def test_rgb_images_are_converted_and_resized(images, tmp_path):
    Image.fromarray(np.stack([images[0][0, 0]] * 3, axis=-1)).resize((56, 56)).save(tmp_path / "a.jpg")
    src = DataSource(tmp_path, [InputSpec("input", np.dtype(np.float32), (None, 1, 28, 28))])
    (batch,) = list(src)
    x = batch.inputs["input"]
    assert x.shape == (1, 1, 28, 28) and 0 <= x.min() and x.max() <= 1


def test_iterable_of_dicts_and_calibration_data_reader(images, reference):
    x = images[0]

    def batches():
        for i in range(0, N, 32):
            yield {"input": (x[i:i + 32] / 255).astype(np.float32)}

    same(mst.calibrate(MODEL, batches(), progress=False, extent=True), reference)

    class Reader:  # onnxruntime.quantization.CalibrationDataReader protocol
        def __init__(self):
            self.it = batches()

        def get_next(self):
            return next(self.it, None)

    same(mst.calibrate(MODEL, Reader(), progress=False, extent=True), reference)


def test_npy_single_array_and_limit(images, reference, tmp_path):
    np.save(tmp_path / "x.npy", images[0])
    same(mst.calibrate(MODEL, tmp_path / "x.npy", batch_size=40, progress=False, extent=True), reference)
    assert mst.calibrate(MODEL, tmp_path / "x.npy", limit=10, progress=False).samples == 10


def test_mean_std_preprocessing(images):
    spec = [InputSpec("input", np.dtype(np.float32), (None, 1, 28, 28))]
    src = DataSource({"input": images[0][:4]}, spec, preprocess=Preprocess(mean=(0.5,), std=(0.25,)))
    (batch,) = list(src)
    np.testing.assert_allclose(batch.inputs["input"], (images[0][:4] / 255 - 0.5) / 0.25, rtol=1e-6, atol=1e-6)
    with pytest.raises(DataError, match="channels"):
        list(DataSource({"input": images[0][:4]}, spec, preprocess=Preprocess(mean=(0.5, 0.5, 0.5))))
