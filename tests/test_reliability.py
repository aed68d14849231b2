"""Reliability: more bad inputs, interruption, zero-variance channels, property tests on random graphs."""
from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from conftest import EXAMPLE, bad_input_cases, check_bad_input, numpy_moments
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mstransform as mst
from mstransform.core.errors import OutputError
from mstransform.core.moments import Moments

MODEL = EXAMPLE / "model.onnx"
CALIB = EXAMPLE / "calib.npz"


def export(model: nn.Module, shape, path: Path) -> Path:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model.eval(), (torch.zeros(2, *shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    return path


@pytest.fixture(scope="module")
def bad(tmp_path_factory, example_hardened):
    """The bad files of the table below, written once; ``folder`` must gain no file from any case."""
    tmp = tmp_path_factory.mktemp("rel-bad")
    stats = example_hardened.stats
    raw = MODEL.read_bytes()
    (tmp / "trunc.onnx").write_bytes(raw[: len(raw) // 2])
    m = onnx.load(str(MODEL))
    m.opset_import[0].version = 99
    onnx.save(m, str(tmp / "opset99.onnx"))
    export(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), (1, 28, 28), tmp / "linear.onnx")
    with np.load(stats, allow_pickle=False) as z:
        arr = {k: z[k] for k in z.files}
    extra = dict(arr, site_names=np.append(arr["site_names"], "ghost"), site_feeds=np.append(arr["site_feeds"], "g"),
                 site_kinds=np.append(arr["site_kinds"], "Relu"), site_axes=np.append(arr["site_axes"], 1),
                 site_ranks=np.append(arr["site_ranks"], 4), site_dtypes=np.append(arr["site_dtypes"], "float32"),
                 site_counts=np.append(arr["site_counts"], 10), **{"mean/7": arr["mean/0"], "var/7": arr["var/0"]})
    np.savez(tmp / "extra.npz", **extra)
    np.savez(tmp / "inf.npz", **dict(arr, **{"mean/3": np.full_like(arr["mean/3"], np.inf)}))
    np.savez(tmp / "v9.npz", **dict(arr, version=np.array(9)))
    (tmp / "text.npz").write_text("not a zip")
    np.savez(tmp / "strings.npz", input=np.array([["a"] * 784] * 2).reshape(2, 1, 28, 28))
    np.savez(tmp / "objdata.npz", input=np.array([object()] * 2, dtype=object))
    (tmp / "imgs").mkdir()
    (tmp / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return SimpleNamespace(tmp=tmp, stats=stats, out=tmp / "o.onnx", s=tmp / "s.npz", folder=tmp,
                           protected=[MODEL, CALIB, stats])


# Bad inputs beyond tests/test_cli.py's table: (label, argv of the prepared files, exit code, words in the message)
MORE_BAD_CASES = [
    ("truncated ONNX", lambda f: ["sites", f.tmp / "trunc.onnx"], 3, "not an ONNX model"),
    ("unsupported opset", lambda f: ["sites", f.tmp / "opset99.onnx"], 3, "opset 99"),
    ("no activations", lambda f: ["calibrate", f.tmp / "linear.onnx", "--data", CALIB, "-o", f.s], 3, "no sites"),
    ("extra site in stats", lambda f: [MODEL, "--stats", f.tmp / "extra.npz", "-o", f.out], 4, "lacks"),
    ("Inf in stats", lambda f: [MODEL, "--stats", f.tmp / "inf.npz", "-o", f.out], 4, "Inf"),
    ("stats version", lambda f: [MODEL, "--stats", f.tmp / "v9.npz", "-o", f.out], 4, "version '9'"),
    ("stats not a zip", lambda f: [MODEL, "--stats", f.tmp / "text.npz", "-o", f.out], 4, "not a readable"),
    ("merge stats of two models", lambda f: ["stats", "merge", f.stats, f.tmp / "inf.npz", "-o", f.s], 4,
     "NaN or Inf"),
    ("string data", lambda f: ["calibrate", MODEL, "--data", f.tmp / "strings.npz", "-o", f.s], 5, "not numeric"),
    ("pickled data", lambda f: ["calibrate", MODEL, "--data", f.tmp / "objdata.npz", "-o", f.s], 5, "object arrays"),
    ("unreadable image", lambda f: ["calibrate", MODEL, "--data", f.tmp / "imgs", "-o", f.s], 5, "cannot read image"),
    ("data path missing", lambda f: ["calibrate", MODEL, "--data", f.tmp / "none.npz", "-o", f.s], 5,
     "does not exist"),
    ("batch size 0", lambda f: ["calibrate", MODEL, "--data", CALIB, "--batch-size", "0", "-o", f.s], 2,
     "--batch-size"),
    ("bad shard", lambda f: ["calibrate", MODEL, "--data", CALIB, "--shard", "3/2", "-o", f.s], 2, "shard"),
    ("bad axis override", lambda f: ["sites", MODEL, "--axis", "/Relu=x"], 2, "integer axis"),
    ("axis for unknown site", lambda f: ["sites", MODEL, "--axis", "nosuch=1"], 2, "unknown site"),
    ("unknown TensorRT version", lambda f: ["check-trt", MODEL, "--trt-version", "1.0"], 2, "trt-version"),
    ("stats output equals data", lambda f: ["calibrate", MODEL, "--data", CALIB, "-o", CALIB], 6, "is the input"),
]


@bad_input_cases(MORE_BAD_CASES)
def test_more_bad_inputs(label, argv, code, words, bad):
    check_bad_input(label, argv(bad), code, words, bad.folder, bad.protected)


def test_debug_shows_traceback(tmp_path):
    r = subprocess.run([*CLI, "--debug", "sites", str(tmp_path / "x.onnx")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_nan_in_data_names_the_sample(tmp_path, cli):
    x = np.zeros((10, 1, 28, 28), np.float32)
    x[6, 0, 3, 3] = np.inf
    np.savez(tmp_path / "d.npz", input=x)
    r = cli("calibrate", MODEL, "--data", tmp_path / "d.npz", "--batch-size", "4", "-o", tmp_path / "s.npz")
    assert r.code == 5 and "sample 6" in r.err


def test_disk_full_maps_to_output_error(tmp_path, monkeypatch):
    from mstransform.core import fileio as atomic

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full)
    with pytest.raises(OutputError, match="disk full"):
        with atomic.atomic_output(tmp_path / "x.npz") as tmp:
            tmp.write_bytes(b"data")
    assert os.listdir(tmp_path) == []


CLI = [sys.executable, "-m", "mstransform.tools.entry"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_calibration_leaves_nothing(sig, tmp_path):
    """The signal goes out once the run shows progress (its first line on stderr), not after a fixed delay."""
    big = tmp_path / "big.npz"
    np.savez(big, input=np.random.default_rng(0).integers(0, 255, (60000, 1, 28, 28), dtype=np.uint8))
    out = tmp_path / "stats.npz"
    proc = subprocess.Popen([*CLI, "calibrate", str(MODEL), "--data", str(big), "--batch-size", "1", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()
    assert first.startswith("calibrating"), first
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and ("interrupted" in err or "terminated" in err), err
    assert sorted(os.listdir(tmp_path)) == ["big.npz"]


STARTUP = """
import importlib.abc, os, signal, sys
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), {sig})
        return None
sys.meta_path.insert(0, Hook())
from mstransform.tools.entry import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize("module", ["numpy", "onnx", "onnx_ir", "sympy", "onnxruntime", "tqdm"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_startup_imports(module, sig, tmp_path):
    """The signal arrives while the command is still importing its libraries: one line, exit 130."""
    out = tmp_path / "s.npz"
    argv = ["calibrate", str(MODEL), "--data", str(CALIB), "-o", str(out)]
    r = subprocess.run([sys.executable, "-c", STARTUP.format(module=module, sig=int(sig), argv=argv)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 130, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()


def test_zero_variance_channel_is_left_alone(tmp_path):
    path = export(nn.ReLU(), (3, 4, 4), tmp_path / "relu.onnx")
    x = np.random.default_rng(1).standard_normal((16, 3, 4, 4)).astype(np.float32)
    x[:, 0] = 0.25  # channel 0 is constant: variance 0
    stats = mst.calibrate(path, {"input": x}, progress=False)
    (s,) = stats.sites.values()
    assert s.moments.var[0] == 0
    out = tmp_path / "h.onnx"
    mst.harden(path, stats, alpha=0.5, output=out)
    import onnxruntime as ort

    probe = x.copy()
    probe[:, 0] = 0.25 + np.linspace(-1e-3, 1e-3, 16)[:, None, None]
    y = ort.InferenceSession(str(out)).run(None, {"input": probe})[0]
    np.testing.assert_array_equal(y[:, 0], np.maximum(probe[:, 0], 0))  # untouched: threshold 0, strict <
    assert not np.array_equal(y[:, 1:], np.maximum(probe[:, 1:], 0))


# -- property tests over random small graphs -------------------------------------------------

ACTS = [nn.ReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.ELU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Mish, nn.Softplus,
        nn.SELU, nn.ReLU6]


@st.composite
def graphs(draw):
    conv = draw(st.booleans())
    depth = draw(st.integers(1, 3))
    acts = [draw(st.sampled_from(ACTS)) for _ in range(depth)]
    widths = [draw(st.integers(2, 6)) for _ in range(depth)]
    layers, c = [], 2
    for act, w in zip(acts, widths):
        layers += [nn.Conv2d(c, w, 3, padding=1) if conv else nn.Linear(c, w), act()]
        c = w
    torch.manual_seed(draw(st.integers(0, 1000)))
    model = nn.Sequential(*layers)
    shape = (2, 5, 5) if conv else (draw(st.integers(1, 4)), 2)
    n = draw(st.integers(5, 20))
    splits = draw(st.integers(1, n))
    return model, shape, depth, n, splits, draw(st.integers(0, 2**16))


PROPS = settings(max_examples=30, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPS
@given(graphs())
def test_random_graphs_properties(tmp_path, case):
    model, shape, depth, n, batch, seed = case
    path = export(model, shape, tmp_path / f"g{seed}.onnx")
    x = np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
    table = mst.find_sites(path)
    assert len(table) == depth
    stats = mst.calibrate(path, {"input": x}, batch_size=batch, progress=False)
    # alpha = 0 is the identity, bit for bit
    a0 = tmp_path / f"a0-{seed}.onnx"
    mst.harden(path, stats, alpha=0.0, output=a0)
    import onnxruntime as ort

    run = lambda p: ort.InferenceSession(str(p)).run(None, {"input": x})[0]  # noqa: E731
    assert np.array_equal(run(a0), run(path))
    # every operator equals the numpy reference (checked on the probe batch by the verifier)
    out1, out2 = tmp_path / f"h1-{seed}.onnx", tmp_path / f"h2-{seed}.onnx"
    rep = mst.harden(path, stats, alpha=0.3, output=out1, probe={"input": x[:4]})
    assert rep.max_abs_diff == 0.0
    # the transform is deterministic: same bytes twice
    mst.harden(path, stats, alpha=0.3, output=out2, probe={"input": x[:4]})
    assert out1.read_bytes() == out2.read_bytes()


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(1, 60), st.integers(1, 5), st.data())
def test_moments_merge_associative_and_one_pass(n, channels, data):
    rng = np.random.default_rng(n * 7 + channels)
    x = (rng.standard_normal((n, channels, 3)) * rng.uniform(0.1, 10, channels)[None, :, None]
         + rng.uniform(-5, 5, channels)[None, :, None])
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=4)))
    parts = [x[a:b] for a, b in zip([0, *cuts], [*cuts, n])]
    ms = [numpy_moments(p, 1, shift=p.mean(axis=(0, 2)) if len(p) else None) for p in parts]
    left = Moments.empty(channels)
    for m in ms:
        left = left.merge(m)
    right = Moments.empty(channels)
    for m in reversed(ms):
        right = m.merge(right)
    one = numpy_moments(x, 1)
    for m in (left, right):
        assert m.count == one.count
        np.testing.assert_allclose(m.mean, x.mean(axis=(0, 2)), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(m.var, x.var(axis=(0, 2)), rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(m.absmax, one.absmax)
