"""The differentiable twin (``robustness.twin``): its straight-through (BPDA) gradient is the identity where the
operator replaced a value and the plain gradient is zero, and the switch leaves the forward values alone."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

import mstransform as mst
from mstransform.robustness.twin import OnnxTwin


def test_bpda_gradient_is_identity_where_plain_gradient_is_zero(tmp_path):
    path = tmp_path / "relu.onnx"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(torch.nn.ReLU(), (torch.zeros(1, 2, 3, 3),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    x = (np.random.default_rng(0).standard_normal((32, 2, 3, 3)) + 2).astype(np.float32)
    mst.harden(path, mst.calibrate(path, {"input": x}, progress=False), alpha=1.0, output=tmp_path / "h.onnx")
    twin = OnnxTwin(tmp_path / "h.onnx")
    xt = torch.from_numpy(x[:4]).requires_grad_(True)
    (plain,) = torch.autograd.grad(twin(xt).sum(), xt)
    twin.straight_through = True
    y_st = twin(xt)
    (bpda,) = torch.autograd.grad(y_st.sum(), xt)
    replaced = (plain == 0) & (xt.detach() > 0)  # zero gradient on a positive input: the operator replaced it
    assert replaced.any() and (~replaced).any()
    assert torch.all(bpda[replaced] == 1)  # the replaced values are the (positive) means: ReLU passes them
    assert torch.all(bpda[~replaced] == plain[~replaced])
    twin.straight_through = False
    assert torch.equal(y_st, twin(xt))  # forward values unchanged by the switch
