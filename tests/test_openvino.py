"""OpenVINO as a runtime: the hardened ONNX file read directly, every operator equal to the paper's."""
from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from conftest import EXAMPLE, exported, random_inputs, run_cli

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


def test_run_and_eval_on_openvino(tmp_path):
    stats = mst.calibrate(EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", limit=256, progress=False)
    mst.harden(EXAMPLE / "model.onnx", stats, alpha=0.3, output=tmp_path / "h.onnx")
    r = run_cli("run", tmp_path / "h.onnx", "--data", EXAMPLE / "test.npz", "--limit", "300", "--runtime", "openvino",
                "-o", tmp_path / "ov.npy")
    assert r.code == 0, r.err
    assert r.out.startswith("OpenVINO ") and "(f32)" in r.out.splitlines()[0]
    r = run_cli("run", tmp_path / "h.onnx", "--data", EXAMPLE / "test.npz", "--limit", "300", "-o", tmp_path / "ort.npy")
    assert r.code == 0, r.err
    ov, ort_ = np.load(tmp_path / "ov.npy"), np.load(tmp_path / "ort.npy")
    labels = np.load(EXAMPLE / "test.npz")["labels"][:300]
    assert np.mean(ov == ort_) >= 0.99 and np.mean(ov == labels) > 0.8
    r = run_cli("eval", EXAMPLE / "model.onnx", tmp_path / "h.onnx", "--data", EXAMPLE / "test.npz", "-n", "32",
                "--apgd-iters", "3", "--square-queries", "10", "--runtime", "openvino", "--json", tmp_path / "r.json")
    assert r.code == 0, r.err


def test_missing_openvino_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails as if not installed
    r = run_cli("run", EXAMPLE / "model.onnx", "--data", EXAMPLE / "test.npz", "--runtime", "openvino")
    assert r.code == 8 and "pip install 'mstransform[openvino]'" in r.err and r.err.count("\n") == 1


def test_openvino_refuses_cuda_and_providers():
    r = run_cli("run", EXAMPLE / "model.onnx", "--data", EXAMPLE / "test.npz", "--runtime", "openvino",
                "--providers", "CUDAExecutionProvider")
    assert r.code == 2 and "--providers" in r.err and r.err.count("\n") == 1
    r = run_cli("eval", EXAMPLE / "model.onnx", "--data", EXAMPLE / "test.npz", "--runtime", "openvino",
                "--device", "cuda")
    assert r.code != 0 and r.err.count("\n") == 1
