"""`sites --stats S --alpha A --data D` (``tools.site_view`` over ``runtime.replaced``): the fraction of values
each operator replaces, counted on data, against numpy in float64 on a small hand-built model; the figure
across depth; the one-line refusals."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import mstransform as mst
from mstransform.tools.site_view import site_fractions

RNG = np.random.default_rng(0)
W1, B1 = RNG.standard_normal((6, 8)).astype(np.float32), RNG.standard_normal(8).astype(np.float32)
W2, B2 = RNG.standard_normal((8, 5)).astype(np.float32), RNG.standard_normal(5).astype(np.float32)


def _mlp(path):
    """x -> MatMul -> Add -> Relu -> MatMul -> Add -> Relu -> y: two sites, channel axis 1."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
             helper.make_node("Add", ["m1", "b1"], ["h1"], name="add1"),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="mm2"),
             helper.make_node("Add", ["m2", "b2"], ["h2"], name="add2"),
             helper.make_node("Relu", ["h2"], ["y"], name="relu2")]
    inits = [numpy_helper.from_array(a, n) for a, n in ((W1, "w1"), (B1, "b1"), (W2, "w2"), (B2, "b2"))]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def _reference(x: np.ndarray) -> list[np.ndarray]:
    """The two site tensors (pre-activations) in float64 numpy."""
    h1 = x.astype(np.float64) @ W1 + B1
    h2 = np.maximum(h1, 0) @ W2 + B2
    return [h1, h2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sv")
    model = _mlp(tmp / "mlp.onnx")
    x = RNG.standard_normal((300, 6)).astype(np.float32)
    np.save(tmp / "x.npy", x)
    stats = mst.calibrate(model, {"x": x}, progress=False)
    stats.save(tmp / "s.npz")
    return tmp, model, x, stats


def _numpy_fractions(stats, x, alphas):
    out = []
    for (name, site), h in zip(stats.sites.items(), _reference(x)):
        mu, sigma = site.moments.mean, np.sqrt(site.moments.var)
        out.append(np.mean(np.abs(h - mu) < alphas[name] * sigma))
    return out


@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.7])
def test_fractions_match_numpy(setup, alpha):
    _, model, x, stats = setup
    rows = site_fractions(model, stats, {"x": x}, alpha, batch_size=64)
    assert [r.depth for r in rows] == [0, 1] and [r.channels for r in rows] == [8, 5]
    expected = _numpy_fractions(stats, x, {n: alpha for n in stats.sites})
    for r, e in zip(rows, expected):
        assert r.values == x.shape[0] * r.channels
        # float32 runtime vs float64 numpy: only values within rounding of the band edge may differ
        assert abs(r.replaced - e * r.values) <= 2, (r, e)
    if alpha == 0:
        assert all(r.replaced == 0 for r in rows)


def test_per_site_alphas(setup):
    _, model, x, stats = setup
    first, second = stats.sites
    plan = mst.AlphaPlan.parse(["0.1", f"{second}=0.9"])
    rows = site_fractions(model, stats, {"x": x}, plan)
    assert [r.alpha for r in rows] == [0.1, 0.9]
    expected = _numpy_fractions(stats, x, {first: 0.1, second: 0.9})
    for r, e in zip(rows, expected):
        assert abs(r.replaced - e * r.values) <= 2


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mstransform", *map(str, args)], capture_output=True, text=True)


def test_cli_table_and_figure(setup):
    tmp, model, x, stats = setup
    png = tmp / "depth.png"
    r = _cli("sites", model, "--stats", tmp / "s.npz", "--data", tmp / "x.npy", "--alpha", "0.3", "--plot", png)
    assert r.returncode == 0, r.stderr
    expected = _numpy_fractions(stats, x, {n: 0.3 for n in stats.sites})
    lines = [line.split() for line in r.stdout.splitlines() if line.split()[:1] in (["0"], ["1"])]
    assert len(lines) == 2
    for cells, e in zip(lines, expected):
        assert float(cells[5].rstrip("%")) == pytest.approx(100 * e, abs=0.01)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, words", [
    (["--stats", "{s}"], "--stats needs --data"),
    (["--alpha", "0.2"], "--alpha needs --stats"),
    (["--stats", "{s}", "--data", "{x}", "--alpha", "-1"], "--alpha"),
])
def test_cli_refusals_are_one_line_and_write_nothing(setup, args, words):
    tmp, model, _, _ = setup
    png = tmp / "never.png"
    args = [a.format(s=tmp / "s.npz", x=tmp / "x.npy") for a in args]
    r = _cli("sites", model, *args, "--plot", png)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not png.exists()
