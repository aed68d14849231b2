"""Reliability beyond bad input (that is in tests/test_hostile_*.py, by class): zero-variance channels,
property tests on random graphs, and the default attacks importable from the declared extras."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from helpers import numpy_moments
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mstransform as mst
from mstransform.core.moments import Moments


def export(model: nn.Module, shape, path: Path) -> Path:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model.eval(), (torch.zeros(2, *shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    return path


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


def test_default_attacks_import_from_declared_extras():
    """Every default attack's module is importable from what the `eval` extra declares (nothing installed here)."""
    import importlib
    import tomllib
    from pathlib import Path

    from mstransform.robustness.attacks import DEFAULT_ATTACKS

    extra = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["eval"]
    declared = {e.split("=")[0].split(">")[0].strip().replace("-", "_").lower() for e in extra}
    modules = {"apgd-ce": "pyautoattack.autopgd_base", "apgd-dlr": "pyautoattack.autopgd_base",
               "square": "pyautoattack.square", "bpda": "pyautoattack.autopgd_base"}
    for attack in DEFAULT_ATTACKS:
        module = modules[attack]
        assert module.split(".")[0] in declared, f"{attack}: {module} is not in the eval extra {sorted(declared)}"
        importlib.import_module(module)
