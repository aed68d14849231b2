"""A half-precision ONNX export of a real trained network (MTCNN's ONet from facenet-pytorch 2.6.0, exported
with torch in float16): the user's commands on it, statistics against the float32 torch model, and its
face / non-face accuracy before and after hardening in ONNX Runtime's float16."""
from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import run_cli

import realmodels as rm
from mstransform.core.stats import Stats
from mtcnn import ONet, _faces, _non_faces

ALPHA = 0.2


@pytest.fixture(scope="module")
def half(tmp_path_factory):
    d = tmp_path_factory.mktemp("fp16")
    model = ONet().eval()
    model.load_state_dict(rm.state_dict_or_skip("mtcnn-onet"))
    portrait, imagenet = rm.faces_or_skip()
    calib = torch.cat([_faces(portrait, 24, seed=100), _non_faces(portrait, imagenet, 40, seed=101)])
    x = torch.cat([_faces(portrait, 32, seed=0), _non_faces(portrait, imagenet, 32, seed=1)])
    logging.disable(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(_half(model), (calib[:2].half(),),
                          str(d / "onet16.onnx"), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["box", "landmarks", "face"], dynamic_axes={"input": {0: "batch"}})
    logging.disable(logging.NOTSET)
    np.savez(d / "calib.npz", input=calib.half().numpy())
    runs = {"sites": run_cli("sites", d / "onet16.onnx"),
            "calibrate": run_cli("calibrate", d / "onet16.onnx", "--data", d / "calib.npz", "-o", d / "s.npz"),
            "harden": run_cli(d / "onet16.onnx", "--stats", d / "s.npz", "--alpha", str(ALPHA))}  # the user's command
    return dict(dir=d, model=model, calib=calib, x=x, labels=np.array([1] * 32 + [0] * 32), runs=runs)


def _half(model: ONet) -> ONet:
    copy = ONet().eval()
    copy.load_state_dict(model.state_dict())
    return copy.half()


def test_the_export_is_half_precision(half):
    m = onnx.load(str(half["dir"] / "onet16.onnx"))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert all(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer if i.dims)


def test_users_commands_on_the_fp16_export(half):
    d, runs = half["dir"], half["runs"]
    assert runs["sites"].code == 0 and "5 site(s)" in runs["sites"].out, runs["sites"].out
    assert runs["calibrate"].code == 0, runs["calibrate"].err
    stats = Stats.load(d / "s.npz")
    assert [s.dtype for s in stats.sites.values()] == ["float16"] * 5 and stats.inputs[0].dtype == "float16"
    # the statistics against the float32 torch model's site tensors (float64 moments): the export computes
    # in float16, so the means agree to float16 accuracy of the tensors (2^-11 relative), not better
    seen = []
    hooks = [mod.register_forward_pre_hook(lambda _, a: seen.append(a[0].double()))
             for mod in (half["model"].prelu1, half["model"].prelu2, half["model"].prelu3, half["model"].prelu4,
                         half["model"].prelu5)]
    with torch.no_grad():
        half["model"](half["calib"])
    for h in hooks:
        h.remove()
    for site, x in zip(stats.sites.values(), seen):
        axes = [a for a in range(x.ndim) if a != site.axis]
        mean, std = x.mean(dim=axes).numpy(), x.std(dim=axes, unbiased=False).numpy()
        np.testing.assert_allclose(site.moments.mean, mean, atol=4e-3 * float(np.abs(mean).max() + std.max()))
        np.testing.assert_allclose(np.sqrt(site.moments.var), std, rtol=2e-2, atol=1e-3 * float(std.max()))
    r = runs["harden"]
    assert r.code == 0, r.err
    assert "numerics: 5 operator(s) vs numpy reference" in r.out


def test_fp16_hardened_face_accuracy(half):
    d = half["dir"]
    assert half["runs"]["harden"].code == 0, half["runs"]["harden"].err
    x = half["x"].half().numpy()

    def accuracy(path):
        face = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["face"], {"input": x})[0]
        return float(((face[:, 1] > 0.7) == (half["labels"] == 1)).mean())

    base, hard = accuracy(d / "onet16.onnx"), accuracy(d / "onet16.meansparse.onnx")
    print(f"fp16 ONet face/non-face accuracy: base {base:.3f}, hardened alpha {ALPHA} {hard:.3f}")
    assert base >= 0.95 and hard >= base - 0.05
