"""OpenVINO as a runtime: the hardened ONNX file read directly, every operator equal to the paper's."""
from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from helpers import EXAMPLE, exported, random_inputs, run_cli

import mstransform as mst
from mstransform.core.operator import sparsify

pytest.importorskip("openvino", reason="the openvino extra is not installed")
from mstransform.runtime.openvino_session import OpenVinoSession  # noqa: E402


@pytest.mark.parametrize("name", ["resnet", "vit"])
def test_each_operator_in_openvino_equals_numpy(name, export_dir, tmp_path):
    """Every Where output of the hardened model, as OpenVINO computes it, against the numpy operator
    applied to OpenVINO's own input of that operator: equal to the last bit (f32 inference)."""
    path = exported(name, "legacy-17-folded", export_dir)
    stats = mst.calibrate(path, {"input": random_inputs(name, 32, seed=1)}, progress=False)
    mst.harden(path, stats, alpha=0.5, output=tmp_path / "h.onnx")
    m = onnx.load(str(tmp_path / "h.onnx"))
    wheres = [n for n in m.graph.node if n.op_type == "Where"]
    assert len(wheres) == len(stats)
    names = [w.output[0] for w in wheres] + [w.input[2] for w in wheres]
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    onnx.save(m, str(tmp_path / "exposed.onnx"))
    s = OpenVinoSession(tmp_path / "exposed.onnx", threads=2)
    outs = s.run(names, {"input": random_inputs(name, 3, seed=3)})
    k = len(wheres)
    moved = 0
    for site, y, x in zip(stats.sites.values(), outs[:k], outs[k:]):
        ref = sparsify(x, site.moments.mean, 0.5 * np.sqrt(site.moments.var), site.axis)
        np.testing.assert_array_equal(y, ref)
        moved += int(np.sum(y != x))
    assert moved > 0  # the operators replaced values: the comparison could fail


def test_run_and_eval_on_openvino(tmp_path, example_hardened):
    hard = example_hardened.hardened
    r = run_cli("run", hard, "--data", EXAMPLE / "test.npz", "--limit", "300", "--runtime", "openvino",
                "-o", tmp_path / "ov.npy")
    assert r.code == 0, r.err
    assert r.out.startswith("OpenVINO ") and "(f32)" in r.out.splitlines()[0]
    r = run_cli("run", hard, "--data", EXAMPLE / "test.npz", "--limit", "300", "-o", tmp_path / "ort.npy")
    assert r.code == 0, r.err
    ov, ort_ = np.load(tmp_path / "ov.npy"), np.load(tmp_path / "ort.npy")
    labels = np.load(EXAMPLE / "test.npz")["labels"][:300]
    assert np.mean(ov == ort_) >= 0.99 and np.mean(ov == labels) > 0.8
    r = run_cli("eval", EXAMPLE / "model.onnx", hard, "--data", EXAMPLE / "test.npz", "-n", "32",
                "--apgd-iters", "3", "--square-queries", "10", "--runtime", "openvino", "--json", tmp_path / "r.json")
    assert r.code == 0, r.err


def test_missing_openvino_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails as if not installed
    r = run_cli("run", EXAMPLE / "model.onnx", "--data", EXAMPLE / "test.npz", "--runtime", "openvino")
    assert r.code == 8 and "pip install 'mstransform[openvino]'" in r.err and r.err.count("\n") == 1


def test_openvino_opens_from_the_table_as_a_session():
    from mstransform.runtime.session import Session, describe, open_session

    s = open_session(EXAMPLE / "model.onnx", runtime="openvino", device="cpu")
    assert type(s) is OpenVinoSession and isinstance(s, Session) and s.why == ""
    assert describe(s).startswith("OpenVINO ") and s.get_providers() == ["OpenVINO CPU"]


def test_openvino_refuses_cuda_and_providers():
    r = run_cli("run", EXAMPLE / "model.onnx", "--data", EXAMPLE / "test.npz", "--runtime", "openvino",
                "--providers", "CUDAExecutionProvider")
    assert r.code == 2 and "--providers" in r.err and r.err.count("\n") == 1
    r = run_cli("eval", EXAMPLE / "model.onnx", "--data", EXAMPLE / "test.npz", "--runtime", "openvino",
                "--device", "cuda")
    assert r.code != 0 and r.err.count("\n") == 1


def test_calibration_on_openvino_within_the_bound(tmp_path):
    """In-graph statistics computed by OpenVINO on a site that is the data itself (a ReLU on the input,
    channel means up to 10^4 spreads), against float64 numpy within the derived bound."""
    import contextlib
    import io

    import torch
    from helpers import ingraph_tolerance

    path = tmp_path / "relu.onnx"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(torch.nn.ReLU(), (torch.zeros(2, 3, 5, 5),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((40, 3, 5, 5)) * [[[[1e-2]], [[1.0]], [[30.0]]]] + [[[[100.0]], [[-2]], [[0]]]])
    x = x.astype(np.float32)
    (s,) = mst.calibrate(path, {"input": x}, batch_size=16, progress=False, runtime="openvino", extent=True).sites.values()
    t = x.astype(np.float64)
    mean_f, var_f = ingraph_tolerance(t.shape, 1, 16)
    assert np.all(np.abs(s.moments.mean - t.mean(axis=(0, 2, 3))) <= mean_f * t.std(axis=(0, 2, 3)))
    assert np.all(np.abs(s.moments.var - t.var(axis=(0, 2, 3))) <= var_f * t.var(axis=(0, 2, 3)))
    np.testing.assert_array_equal(s.moments.absmax, np.abs(t).max(axis=(0, 2, 3)))


def test_calibrate_command_on_openvino(tmp_path):
    r = run_cli("calibrate", EXAMPLE / "model.onnx", "--data", EXAMPLE / "calib.npz", "--limit", "128",
                "--runtime", "openvino", "-o", tmp_path / "ov.npz")
    assert r.code == 0, r.err
    assert "OpenVINO" in r.err + r.out
    ov = mst.load_stats(tmp_path / "ov.npz")
    ort_ = mst.calibrate(EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", limit=128, progress=False)
    for name, s in ort_.sites.items():  # two runtimes' convolutions round differently: 1e-4 of the spread
        o = ov.sites[name].moments
        assert np.all(np.abs(o.mean - s.moments.mean) <= 1e-4 * np.sqrt(s.moments.var) + 1e-7)
        assert np.all(np.abs(o.var - s.moments.var) <= 1e-4 * s.moments.var + 1e-7)
