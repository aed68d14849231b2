"""Hostile data (exit 5): data files that are missing, not arrays, of the wrong shape or type, empty, NaN,
pickled, zip members compressed or encrypted in ways numpy cannot read, array headers that announce
more than the file holds, images that cannot be read or are too large, and labels that are NaN, not
integers or beyond the model's classes. Each gives one line, its exit code, no new file, inputs intact.
Also here: data once read silently wrong (16-bit images, an empty class folder), now read right."""
from __future__ import annotations

import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import EXAMPLE, bad_input_cases, check_bad_input, run_cli

import mstransform as mst

MODEL, CALIB, TEST = EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", EXAMPLE / "test.npz"


def _absurd_npz(path):
    """A valid zip whose array header announces 10^12 samples but holds 16 bytes."""
    header = {"descr": "|u1", "fortran_order": False, "shape": (10**12, 1, 28, 28)}
    with zipfile.ZipFile(path, "w") as z, z.open("input.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 16)


def _zip_member(path, compress_type=None, encrypted=False):
    """A one-member npz whose header claims Deflate64 or encryption (flag bit 0), as hostile files do."""
    arr = np.load(CALIB)["input"][:4]
    np.savez(path, input=arr)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.infolist()[0]
    local, central = info.header_offset, data.rfind(b"PK\x01\x02")
    if compress_type is not None:
        data[local + 8:local + 10] = compress_type.to_bytes(2, "little")
        data[central + 10:central + 12] = compress_type.to_bytes(2, "little")
    if encrypted:
        data[local + 6] |= 1
        data[central + 8] |= 1
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def bad(tmp_path_factory, example_hardened):
    """The hostile data files of the table below, built once; ``folder`` must gain no file from any case."""
    from PIL import Image

    tmp = tmp_path_factory.mktemp("hostile-data")
    (tmp / "garbage.npz").write_bytes(b"PK\x03\x04garbage")
    np.savez(tmp / "flat.npz", input=np.zeros((4, 28, 28), np.uint8))
    np.savez(tmp / "nan.npz", input=np.full((4, 1, 28, 28), np.nan, np.float32))
    np.savez(tmp / "empty.npz", input=np.zeros((0, 1, 28, 28), np.uint8))
    np.savez(tmp / "strings.npz", input=np.array([["a"] * 784] * 2).reshape(2, 1, 28, 28))
    np.savez(tmp / "objdata.npz", input=np.array([object()] * 2, dtype=object))
    _absurd_npz(tmp / "absurd.npz")
    _zip_member(tmp / "deflate64.npz", compress_type=9)
    _zip_member(tmp / "encrypted.npz", encrypted=True)
    x = np.load(TEST)["input"][:8]
    np.savez(tmp / "labels99.npz", input=x, labels=np.full(8, 99))
    np.savez(tmp / "labelsf.npz", input=x, labels=np.full(8, 0.5))
    labels = np.arange(8, dtype=np.float64)
    labels[3] = np.nan
    np.savez(tmp / "nanlabels.npz", input=x, labels=labels)
    (tmp / "broken").mkdir()
    (tmp / "broken" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp / "bomb").mkdir()
    Image.new("L", (1, 1)).save(tmp / "bomb" / "a.png")
    big = Image.new("L", (14000, 14000))  # 196 Mpx: above PIL's decompression-bomb limit
    big.save(tmp / "bomb" / "b.png", optimize=False)
    return SimpleNamespace(tmp=tmp, stats=example_hardened.stats, out=tmp / "o.onnx", s=tmp / "s.npz", folder=tmp,
                           protected=[MODEL, CALIB, TEST, example_hardened.stats])


def _calibrate(f, name):
    return ["calibrate", MODEL, "--data", f.tmp / name, "-o", f.s]


# (label, argv of the prepared files, exit code, words in the message)
DATA_CASES = [
    # not readable as arrays
    ("data path missing", lambda f: _calibrate(f, "none.npz"), 5, "does not exist"),
    ("unreadable data", lambda f: _calibrate(f, "garbage.npz"), 5, "cannot read"),
    ("absurd array header", lambda f: _calibrate(f, "absurd.npz"), 5, "announces"),
    ("Deflate64 member", lambda f: _calibrate(f, "deflate64.npz"), 5, "compression method 9"),
    ("encrypted member", lambda f: _calibrate(f, "encrypted.npz"), 5, "encrypted"),
    ("pickled data", lambda f: _calibrate(f, "objdata.npz"), 5, "object arrays"),
    ("unreadable image", lambda f: _calibrate(f, "broken"), 5, "cannot read image"),
    ("decompression bomb image", lambda f: _calibrate(f, "bomb"), 5, "too large"),
    # arrays the model cannot take
    ("string data", lambda f: _calibrate(f, "strings.npz"), 5, "not numeric"),
    ("wrong input shape", lambda f: _calibrate(f, "flat.npz"), 5, "expects shape"),
    ("NaN in data", lambda f: _calibrate(f, "nan.npz"), 5, "NaN"),
    ("empty data", lambda f: _calibrate(f, "empty.npz"), 5, "no samples"),
    # labels
    ("labels beyond the classes", lambda f: ["eval", MODEL, "--data", f.tmp / "labels99.npz", "-n", "8"], 5,
     "classes"),
    ("labels not integers", lambda f: ["eval", MODEL, "--data", f.tmp / "labelsf.npz", "-n", "8"], 5, "integers"),
    ("accuracy on foreign labels", lambda f: [MODEL, "--stats", f.stats, "-o", f.out, "--eval",
                                              f.tmp / "labels99.npz"], 5, "labels"),
    ("NaN labels in run", lambda f: ["run", MODEL, "--data", f.tmp / "nanlabels.npz"], 5, "NaN"),
    ("NaN labels in eval", lambda f: [MODEL, "--stats", f.stats, "--eval", f.tmp / "nanlabels.npz", "-o", f.out], 5,
     "NaN"),
]


@bad_input_cases(DATA_CASES)
def test_hostile_data(label, argv, code, words, bad):
    check_bad_input(label, argv(bad), code, words, bad.folder, bad.protected)


def test_nan_in_data_names_the_sample(tmp_path, cli):
    x = np.zeros((10, 1, 28, 28), np.float32)
    x[6, 0, 3, 3] = np.inf
    np.savez(tmp_path / "d.npz", input=x)
    r = cli("calibrate", MODEL, "--data", tmp_path / "d.npz", "--batch-size", "4", "-o", tmp_path / "s.npz")
    assert r.code == 5 and "sample 6" in r.err


# -- data once read silently wrong, now right --------------------------------------------------------
def test_sixteen_bit_grayscale_is_not_clipped(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65536, (6, 28, 28), dtype=np.uint16)
    (tmp_path / "imgs").mkdir()
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / "imgs" / f"{i}.png")
    from_images = mst.calibrate(MODEL, tmp_path / "imgs", progress=False)
    from_arrays = mst.calibrate(MODEL, {"input": (pixels[:, None] / 65535).astype(np.float32)}, progress=False)
    for name, s in from_arrays.sites.items():
        np.testing.assert_allclose(from_images.sites[name].moments.mean, s.moments.mean, rtol=1e-6, atol=1e-7)


def test_empty_class_folder_keeps_every_label(tmp_path):
    """c0 empty: c1's images are still class 1 (classes are all sorted sub-folders), and a note says so."""
    from PIL import Image

    x, labels = np.load(TEST)["input"][:40], np.load(TEST)["labels"][:40]
    for c in range(10):
        (tmp_path / "imgs" / f"c{c}").mkdir(parents=True)
    kept = labels != 0
    for i in np.flatnonzero(kept):
        Image.fromarray(x[i, 0]).save(tmp_path / "imgs" / f"c{labels[i]}" / f"{i:03d}.png")
    r = run_cli("run", MODEL, "--data", tmp_path / "imgs")
    assert r.code == 0, r.err
    assert "class folder(s) 'c0'" in r.err and "hold no images" in r.err
    direct = run_cli("run", MODEL, "--data", _npz(tmp_path, x[kept], labels[kept]))
    assert r.out.splitlines()[1] == direct.out.splitlines()[1]  # the same accuracy line: labels kept their classes


def _npz(tmp, x, labels):
    np.savez(tmp / "direct.npz", input=x, labels=labels)
    return tmp / "direct.npz"
