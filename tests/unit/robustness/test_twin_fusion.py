"""The twin's fused chains (a GELU spelled in any way the site finder knows, MatMul + bias as one linear) compute
what the chains compute: the twin's output against ONNX Runtime, and its input gradient against the gradient
of the torch module the graph was exported from (an independent reference), on plain and hardened models;
and the catalogue's activations run by the table's torch call (ThresholdedRelu, which no code names)."""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
import zoo
from helpers import exported, random_inputs, tiny_model

import mstransform as mst
from mstransform.robustness.twin import OnnxTwin

LABELS = ("legacy-17-folded", "dynamo-18-folded")


def _ops(twin):
    return [s[0] for s in twin.program if isinstance(s, tuple)]


def test_exact_gelu_and_linear_chains_are_fused_and_equal_the_module(export_dir):
    x = random_inputs("vit", 6)
    module = zoo.build("vit")
    xt = torch.from_numpy(x).requires_grad_(True)
    module(xt).square().sum().backward()
    want_grad = xt.grad.numpy()
    fused_somewhere = set()
    for label in LABELS:
        path = exported("vit", label, export_dir)
        twin = OnnxTwin(path).eval()
        fused_somewhere.update(op for op in _ops(twin) if op.startswith("_"))
        ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        xt = torch.from_numpy(x).requires_grad_(True)
        out = twin(xt)
        np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
        out.square().sum().backward()
        np.testing.assert_allclose(xt.grad.numpy(), want_grad, rtol=1e-4, atol=1e-4 * np.abs(want_grad).max())
    assert {"_GeluErf", "_Linear"} <= fused_somewhere  # the legacy export spells both chains


def test_a_hardened_gelu_site_stays_a_unit_before_the_fused_chain(export_dir, tmp_path):
    path = exported("vit", "legacy-17-folded", export_dir)
    x = random_inputs("vit", 8)
    stats = mst.calibrate(path, {"input": x}, progress=False)
    hard = tmp_path / "h.onnx"
    mst.harden(path, stats, alpha=0.5, output=hard)
    twin = OnnxTwin(hard).eval()
    assert len(twin.units) == 2 and "_GeluErf" in _ops(twin)
    ref = ort.InferenceSession(str(hard), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    out = twin(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def _save(tmp_path, nodes, consts, name="m.onnx"):
    path = tmp_path / name
    onnx.save(tiny_model(nodes, [("x", ["N", 8])], [("y", None)], consts, opset=17), str(path))
    return path


def _ort(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def tanh_gelu(k=math.sqrt(2 / math.pi)):
    """``MatMul -> 0.5 * h * (1 + Tanh(k * (h + 0.044715 * h^3)))``, as the legacy exporter spells tanh GELU."""
    w = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
    consts = {"w": w, "p3": np.float32(3.0), "c": np.float32(0.044715), "k": np.float32(k),
              "one": np.float32(1.0), "half": np.float32(0.5)}
    nodes = [oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("Pow", ["h", "p3"], ["cube"]),
             oh.make_node("Mul", ["cube", "c"], ["cubic"]), oh.make_node("Add", ["h", "cubic"], ["inner"]),
             oh.make_node("Mul", ["inner", "k"], ["scaled"]), oh.make_node("Tanh", ["scaled"], ["t"]),
             oh.make_node("Add", ["t", "one"], ["a"]), oh.make_node("Mul", ["h", "a"], ["m"]),
             oh.make_node("Mul", ["m", "half"], ["y"])]
    return nodes, consts


def test_a_tanh_gelu_is_fused_from_the_computed_matcher_and_equals_the_chain(tmp_path):
    nodes, consts = tanh_gelu()
    path = _save(tmp_path, nodes, consts)
    twin = OnnxTwin(path).eval()
    assert _ops(twin) == ["MatMul", "_GeluTanh"]
    x = np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32) * 2
    xt = torch.from_numpy(x).requires_grad_(True)
    out = twin(xt)
    np.testing.assert_allclose(out.detach().numpy(), _ort(path, x), rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    xr = torch.from_numpy(x).requires_grad_(True)
    F.gelu(xr @ torch.from_numpy(consts["w"]), approximate="tanh").square().sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), xr.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_a_spelling_with_rounded_constants_runs_as_written(tmp_path):
    """sqrt(2/pi) written 0.7979: a GELU to the site finder, but fusing it would change the deployed values."""
    nodes, consts = tanh_gelu(k=0.7979)
    path = _save(tmp_path, nodes, consts)
    twin = OnnxTwin(path).eval()
    assert "_GeluTanh" not in _ops(twin) and "Tanh" in _ops(twin)
    x = np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32) * 2
    np.testing.assert_allclose(twin(torch.from_numpy(x)).detach().numpy(), _ort(path, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op, attrs", [("ThresholdedRelu", {}), ("ThresholdedRelu", {"alpha": 0.3}),
                                       ("Softsign", {})])
def test_the_catalogues_single_ops_run_by_the_tables_torch_call(tmp_path, op, attrs):
    w = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
    path = _save(tmp_path, [oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node(op, ["h"], ["y"], **attrs)],
                 {"w": w})
    x = np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32) * 2
    out = OnnxTwin(path).eval()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out, _ort(path, x), rtol=1e-6, atol=1e-6)
