"""The model's batch rules: a batch size the model fixes is honoured in calibration and in the
self-check's probe, a declared-dynamic batch that the graph contradicts gets one line saying so and
what to do, ``--batch-size`` and ``--data`` reach the probe, an ambiguous batch axis follows the main
input's, and a runtime's error line keeps the runtime's reason. Each model is built with onnx.helper;
statistics are checked against float64 numpy moments of the site tensor computed here."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from helpers import run_cli, tiny_model

import mstransform as mst
from mstransform.core.errors import DataError

RNG = np.random.default_rng(7)
W = RNG.standard_normal((6, 4)).astype(np.float32)


def _dense_relu(path, batch, *, baked_one: bool = False):
    """x [batch, 6] -> MatMul -> Relu (the site: MatMul's output); ``baked_one`` adds a Reshape to [1, 4]
    as an export traced at batch 1 does, while the input still declares its batch dynamic."""
    nodes = [oh.make_node("MatMul", ["x", "W"], ["h"]), oh.make_node("Relu", ["h"], ["r"])]
    consts = {"W": W}
    if baked_one:
        nodes.append(oh.make_node("Reshape", ["r", "shape"], ["y"]))
        consts["shape"] = np.array([1, 4], np.int64)
    else:
        nodes.append(oh.make_node("Identity", ["r"], ["y"]))
    onnx.save(tiny_model(nodes, [("x", [batch, 6])], [("y", None)], consts), path)
    return path


def _site_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance per channel of the site tensor x @ W, in float64."""
    h = x.astype(np.float64) @ W.astype(np.float64)
    return h.mean(0), h.var(0)


def _only_site(stats):
    (site,) = stats.sites.values()
    return site


def test_fixed_batch_of_eight_is_calibrated_and_probed(tmp_path):
    """A model fixed at batch 8 was refused by ONNX Runtime: calibration placed its shifts on a 4-sample
    head run. Now every batch holds 8 samples, the statistics count all 64 and match numpy, and the
    self-check probes at batch 8 from data and synthetically."""
    model = _dense_relu(tmp_path / "fixed8.onnx", 8)
    x = RNG.standard_normal((64, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    stats = mst.calibrate(model, tmp_path / "d.npz", batch_size=5, progress=False)
    site = _only_site(stats)
    mean, var = _site_moments(x)
    assert stats.samples == 64
    np.testing.assert_allclose(site.moments.mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(site.moments.var, var, rtol=1e-4, atol=1e-6)
    for probe in (tmp_path / "d.npz", None):
        report = mst.harden(model, stats, tmp_path / "h.onnx", probe=probe)
        assert any(c.startswith("numerics: 1 operator(s)") for c in report.checks), report.checks


def test_fixed_batch_leaves_out_a_partial_batch_and_says_so(tmp_path):
    model = _dense_relu(tmp_path / "fixed8.onnx", 8)
    x = RNG.standard_normal((60, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    notes = []
    stats = mst.calibrate(model, tmp_path / "d.npz", progress=False, log=notes.append)
    assert stats.samples == 56
    np.testing.assert_allclose(_only_site(stats).moments.mean, _site_moments(x[:56])[0], rtol=1e-5, atol=1e-6)
    assert any("batches of exactly 8" in n and "last 4 sample(s)" in n for n in notes), notes
    notes.clear()
    stats = mst.calibrate(model, tmp_path / "d.npz", progress=False, log=notes.append, limit=3)
    assert stats.samples == 8 and any("limit of 3 sample(s) is raised to 8" in n for n in notes), notes
    np.savez(tmp_path / "few.npz", x=x[:5])
    with pytest.raises(DataError, match="holds 5 sample.*exactly 8"):
        mst.calibrate(model, tmp_path / "few.npz", progress=False)


def test_runtime_error_line_keeps_the_runtimes_reason(tmp_path):
    """ONNX Runtime's reason sits on the lines after its first ('... for the following indices' /
    'index: 0 Got: 4 Expected: 8'); the error line was cut before it."""
    from mstransform.runtime.session import make_session, run_step

    session = make_session(_dense_relu(tmp_path / "fixed8.onnx", 8))
    with pytest.raises(DataError) as e:
        run_step(session, None, {"x": np.zeros((4, 6), np.float32)}, DataError, "a probe run")
    text = str(e.value)
    assert "\n" not in text and text.startswith("a probe run: ONNX Runtime failed:")
    assert "Got: 4 Expected: 8" in text


def test_batch_baked_into_a_reshape_says_so_and_batch_size_one_reaches_the_probe(tmp_path):
    model = _dense_relu(tmp_path / "baked.onnx", "batch", baked_one=True)
    x = RNG.standard_normal((24, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    r = run_cli(model, "--data", tmp_path / "d.npz", "-o", tmp_path / "h.onnx")
    assert r.code == 5, r.err
    (line,) = r.err.strip().splitlines()
    assert "declares its batch dynamic but runs only at batch 1" in line and "--batch-size 1" in line
    assert "cannot be reshaped" in line  # ONNX Runtime's own reason stays on the line
    assert not (tmp_path / "h.onnx").exists()
    # with --batch-size 1, calibration and the probe both run at batch 1 (the probe took 8 samples before)
    r = run_cli(model, "--data", tmp_path / "d.npz", "-o", tmp_path / "h.onnx", "--batch-size", "1")
    assert r.code == 0, r.err
    assert "check: numerics: 1 operator(s)" in r.out
    stats = mst.load_stats(tmp_path / "h.stats.npz")
    assert stats.samples == 24
    np.testing.assert_allclose(_only_site(stats).moments.mean, _site_moments(x)[0], rtol=1e-5, atol=1e-6)
    # the two-step form: --data with --stats probes at --batch-size too
    r = run_cli(model, "--stats", tmp_path / "h.stats.npz", "--data", tmp_path / "d.npz", "-o",
                tmp_path / "h2.onnx", "--batch-size", "1")
    assert r.code == 0, r.err
    r = run_cli(model, "--stats", tmp_path / "h.stats.npz", "-o", tmp_path / "h3.onnx", "--batch-size", "1")
    assert r.code == 0, r.err  # synthetic probe at batch 1
    # the batch dim cannot be varied in this model: the second-size check skips it rather than fail
    assert "skipped, the base model does not run there either: batch 1 -> 2" in r.out


def _streaming(path):
    """A streaming model as exported by speech toolkits: the main input [1, T, 400] and a cache
    [1, 128, 19, 1] (two dims of size 1), each feeding its own site."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((400, 16)) * 0.05).astype(np.float32)
    nodes = [oh.make_node("MatMul", ["x", "W"], ["h"]), oh.make_node("Relu", ["h"], ["y"]),
             oh.make_node("Mul", ["in_cache0", "two"], ["c"]), oh.make_node("Tanh", ["c"], ["out_cache0"])]
    onnx.save(tiny_model(nodes, [("x", [1, "T", 400]), ("in_cache0", [1, 128, 19, 1])],
                         [("y", [1, "T", 16]), ("out_cache0", [1, 128, 19, 1])], {"W": w, "two": np.float32(2.0)}),
              path)
    return path, w


@pytest.mark.parametrize("batch_size", [None, 1])
def test_ambiguous_batch_axis_follows_the_main_input(tmp_path, batch_size):
    """The cache's batch axis was ambiguous (axes 0 and 3 both of size 1), so it had none and the whole
    data array was fed: 'expects shape [1,128,19,1]; data has shape (32, 128, 19, 1)'."""
    model, w = _streaming(tmp_path / "stream.onnx")
    spec = {s.name: s for s in mst.runtime.inputs.input_specs(mst.load_model(model))}
    assert spec["in_cache0"].batch_axis == 0
    rng = np.random.default_rng(5)
    x = rng.standard_normal((32, 7, 400)).astype(np.float32)
    cache = rng.standard_normal((32, 128, 19, 1)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, in_cache0=cache)
    options = {} if batch_size is None else {"batch_size": batch_size}
    stats = mst.calibrate(model, tmp_path / "d.npz", progress=False, **options)
    assert stats.samples == 32
    by_feed = {s.feed: s for s in stats.sites.values()}
    h = x.astype(np.float64) @ w.astype(np.float64)  # [32, 7, 16]: channels on the last axis
    np.testing.assert_allclose(by_feed["h"].moments.mean, h.reshape(-1, 16).mean(0), rtol=1e-5, atol=1e-6)
    c = 2.0 * cache.astype(np.float64)  # [32, 128, 19, 1]: channels on axis 1
    np.testing.assert_allclose(by_feed["c"].moments.mean, c.transpose(1, 0, 2, 3).reshape(128, -1).mean(1),
                               rtol=1e-5, atol=1e-6)
    report = mst.harden(model, stats, tmp_path / "h.onnx", probe=tmp_path / "d.npz")
    assert any(c.startswith("numerics: 2 operator(s)") for c in report.checks), report.checks
    assert "second size: T 7 -> 8: runs like the base model" in report.checks, report.checks
