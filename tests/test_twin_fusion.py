"""The twin's fused chains (exact GELU as Div/Erf/Add/Mul/Mul, MatMul + bias as one linear) compute what
the chains compute: the twin's output against ONNX Runtime, and its input gradient against the gradient
of the torch module the graph was exported from (an independent reference), on plain and hardened models."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
import zoo
from conftest import exported, random_inputs

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
