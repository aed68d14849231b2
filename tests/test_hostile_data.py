"""Bad input, third round: silent wrong results, constants that overflow, malformed files and supported
inputs once refused. One parametrized case per input, so one failure hides none of the rest."""
from __future__ import annotations

import json
import os
import shutil
import zipfile

import numpy as np
import onnx
import pytest
from conftest import EXAMPLE, run_cli
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import mstransform as mst
from mstransform.core.stats import Stats

MODEL, CALIB, TEST = EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", EXAMPLE / "test.npz"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile3")
    mst.calibrate(MODEL, CALIB, limit=256, progress=False).save(d / "stats.npz")
    return d


def _one_line(r, code, words):
    lines = r.err.strip().splitlines()
    assert r.code == code, (r.code, r.err)
    assert len(lines) == 1 and lines[0].startswith("mstransform: error:") and "Traceback" not in r.err, r.err
    assert words.lower() in lines[0].lower(), lines[0]


def _stats_with(base, tmp, **changes):
    with np.load(base / "stats.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    np.savez(tmp / "bad.npz", **arrays)
    return tmp / "bad.npz"


def _retrained(tmp):
    """The example's architecture with other weights: a second training of the same graph."""
    m = onnx.load(str(MODEL))
    for init in m.graph.initializer:
        a = nh.to_array(init)
        if a.dtype == np.float32 and a.size > 1:
            init.CopyFrom(nh.from_array((a * np.float32(1.01)).astype(np.float32), init.name))
    onnx.save(m, str(tmp / "retrained.onnx"))
    return tmp / "retrained.onnx"


# -- malformed stats, data and flags: exit code and one line ---------------------------------------
def _case_stats(base, tmp, key):
    if key == "version-string":
        return [MODEL, "--stats", _stats_with(base, tmp, version=np.array("2")), "-o", tmp / "o.onnx"], 4, "version"
    if key == "axis-beyond-rank":
        return [MODEL, "--stats", _stats_with(base, tmp, site_axes=np.full(7, 9, np.int64)), "-o", tmp / "o.onnx"], \
            4, "outside its rank"
    if key == "deep-selection":
        return [MODEL, "--stats", _stats_with(base, tmp, selection=np.array("[" * 100_000 + "]" * 100_000)),
                "-o", tmp / "o.onnx"], 4, "selection record"
    if key == "variance-1e80":
        return [MODEL, "--stats", _stats_with(base, tmp, **{"var/0": np.full(16, 1e80)}), "-o", tmp / "o.onnx"], \
            4, "not finite in float32"
    if key == "fp16-center-7e4":
        return [MODEL, "--stats", _stats_with(base, tmp, **{"mean/0": np.full(16, 7e4)}), "--precision", "fp16",
                "-o", tmp / "o.onnx"], 4, "not finite in float16"
    raise KeyError(key)


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


BAD = ["version-string", "axis-beyond-rank", "deep-selection", "variance-1e80", "fp16-center-7e4", "deflate64",
       "encrypted", "size-nan", "nan-labels-run", "nan-labels-eval", "retrained-weights", "merge-retrained",
       "bomb-image", "no-graph-outputs", "truncated-external-data"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_with_its_code(base, tmp_path, case):
    before = set(os.listdir(tmp_path))
    if case in ("version-string", "axis-beyond-rank", "deep-selection", "variance-1e80", "fp16-center-7e4"):
        argv, code, words = _case_stats(base, tmp_path, case)
    elif case in ("deflate64", "encrypted"):
        data = _zip_member(tmp_path / "z.npz", compress_type=9 if case == "deflate64" else None,
                           encrypted=case == "encrypted")
        argv, code, words = ["calibrate", MODEL, "--data", data, "-o", tmp_path / "s.npz"], 5, \
            "compression method 9" if case == "deflate64" else "encrypted"
    elif case == "size-nan":
        argv, code, words = ["calibrate", MODEL, "--data", CALIB, "--size", "nan,28", "-o", tmp_path / "s.npz"], 2, \
            "finite"
    elif case.startswith("nan-labels"):
        x = np.load(TEST)["input"][:8]
        labels = np.arange(8, dtype=np.float64)
        labels[3] = np.nan
        np.savez(tmp_path / "l.npz", input=x, labels=labels)
        if case == "nan-labels-run":
            argv = ["run", MODEL, "--data", tmp_path / "l.npz"]
        else:
            argv = [MODEL, "--stats", base / "stats.npz", "--eval", tmp_path / "l.npz", "-o", tmp_path / "o.onnx"]
        code, words = 5, "NaN"
    elif case == "retrained-weights":
        argv, code, words = [_retrained(tmp_path), "--stats", base / "stats.npz", "-o", tmp_path / "o.onnx"], 4, \
            "other weights"
    elif case == "merge-retrained":
        other = mst.calibrate(_retrained(tmp_path), CALIB, limit=128, progress=False)
        other.save(tmp_path / "other.npz")
        argv, code, words = ["stats", "merge", base / "stats.npz", tmp_path / "other.npz", "-o", tmp_path / "m.npz"], \
            4, "different weights"
    elif case == "bomb-image":
        from PIL import Image

        (tmp_path / "imgs").mkdir()
        Image.new("L", (1, 1)).save(tmp_path / "imgs" / "a.png")
        big = Image.new("L", (14000, 14000))  # 196 Mpx: above PIL's decompression-bomb limit
        big.save(tmp_path / "imgs" / "b.png", optimize=False)
        argv, code, words = ["calibrate", MODEL, "--data", tmp_path / "imgs", "-o", tmp_path / "s.npz"], 5, \
            "too large"
    elif case == "no-graph-outputs":
        m = onnx.load(str(MODEL))
        del m.graph.output[:]
        onnx.save(m, str(tmp_path / "noout.onnx"))
        argv, code, words = [tmp_path / "noout.onnx", "--data", CALIB, "-o", tmp_path / "o.onnx"], 3, "no graph outputs"
    elif case == "truncated-external-data":
        onnx.save(onnx.load(str(MODEL)), str(tmp_path / "ext.onnx"), save_as_external_data=True,
                  location="ext.onnx.data", size_threshold=0)
        data = (tmp_path / "ext.onnx.data").read_bytes()
        (tmp_path / "ext.onnx.data").write_bytes(data[: len(data) // 2])
        argv, code, words = [tmp_path / "ext.onnx", "--data", CALIB, "-o", tmp_path / "o.onnx"], 3, "truncated"
    before = set(os.listdir(tmp_path))
    r = run_cli(*argv)
    _one_line(r, code, words)
    assert set(os.listdir(tmp_path)) == before, set(os.listdir(tmp_path)) - before


def test_retrained_weights_pass_with_ignore_fingerprint(base, tmp_path):
    r = run_cli(_retrained(tmp_path), "--stats", base / "stats.npz", "--ignore-fingerprint", "-o", tmp_path / "o.onnx")
    assert r.code == 0, r.err


# -- silent wrong results, now right -------------------------------------------------------------------
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


# -- supported inputs once refused -------------------------------------------------------------------------
def _conv_relu(tmp, name, opset, ir_version, domain="", inits_as_inputs=False):
    rng = np.random.default_rng(0)
    w = nh.from_array((rng.standard_normal((4, 1, 3, 3)) * 0.3).astype(np.float32), "W")
    inputs = [h.make_tensor_value_info("input", T.FLOAT, [1, 1, 28, 28])]
    if inits_as_inputs:
        inputs.append(h.make_tensor_value_info("W", T.FLOAT, [4, 1, 3, 3]))
    nodes = [h.make_node("Conv", ["input", "W"], ["c"], pads=[1, 1, 1, 1], domain=domain),
             h.make_node("Relu", ["c"], ["y"], domain=domain)]
    graph = h.make_graph(nodes, "m", inputs, [h.make_tensor_value_info("y", T.FLOAT, [1, 4, 28, 28])], [w])
    model = h.make_model(graph, opset_imports=[h.make_opsetid(domain, opset)])
    model.ir_version = ir_version
    onnx.save(model, str(tmp / name))
    return tmp / name


@pytest.mark.parametrize("case", ["latin1-name", "opset-7-ir-3", "ai.onnx-domain"])
def test_supported_inputs_harden(tmp_path, case):
    if case == "latin1-name":
        name = os.fsdecode(b"mod\xe9l.onnx")
        shutil.copy(MODEL, tmp_path / name)
        model = tmp_path / name
    elif case == "opset-7-ir-3":
        model = _conv_relu(tmp_path, "op7.onnx", 7, 3, inits_as_inputs=True)
    else:
        model = _conv_relu(tmp_path, "dom.onnx", 13, 7, domain="ai.onnx")
    data = CALIB if case == "latin1-name" else _single(tmp_path)
    out = tmp_path / (os.fsdecode(b"out\xe9.onnx") if case == "latin1-name" else "out.onnx")
    r = run_cli(model, "--data", data, "-o", out)
    assert r.code == 0, r.err
    assert "max |diff| = 0" in r.out
    onnx.checker.check_model(onnx.load(open(out, "rb")), full_check=True)


def _single(tmp):
    np.savez(tmp / "one.npz", input=np.load(CALIB)["input"][:1])  # batch fixed at 1 by the model
    return tmp / "one.npz"


def test_one_step_on_a_hardened_model_refuses_before_calibrating(base, tmp_path):
    assert run_cli(MODEL, "--stats", base / "stats.npz", "-o", tmp_path / "hard.onnx").code == 0
    r = run_cli(tmp_path / "hard.onnx", "--data", CALIB, "-o", tmp_path / "again.onnx")
    _one_line(r, 2, "already holds")
    assert "calibrating" not in r.err


def test_stats_record_the_weights_digest(base):
    z = np.load(base / "stats.npz")
    assert len(str(z["weights"])) == 16 and json.loads(str(z["inputs"]))[0]["name"] == "input"
    assert Stats.load(base / "stats.npz").weights == str(z["weights"])
