"""Channel axes only where channels are: a site's channel axis has a fixed size in the graph.

An additive-attention score ``tanh(Wq h_i + Wk h_j)`` of a BiLSTM text model is a rank-4
``[batch, T, T, H]`` tensor; the rank rule alone picks axis 1, the sequence length, so statistics
would be per sequence position and the hardened model would fail at every other length. The one
fixed-size axis (H) holds the channels; where no single one does, the site is not matched and
says why, unless ``--axis`` names one.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest
from conftest import run_cli, tiny_model

import mstransform as mst


def attention(path, last="H"):
    """``Tanh(Unsqueeze(a, 2) + Unsqueeze(b, 1)) @ v``: scores [N, T, T, H] (or [N, T, T, S] symbolic last)."""
    rng = np.random.default_rng(0)
    h = 8
    nodes = [oh.make_node("MatMul", ["x", "wq"], ["q"], name="q"), oh.make_node("MatMul", ["x", "wk"], ["k"], name="k"),
             oh.make_node("Unsqueeze", ["q", "ax2"], ["qu"], name="qu"),
             oh.make_node("Unsqueeze", ["k", "ax1"], ["ku"], name="ku"),
             oh.make_node("Add", ["qu", "ku"], ["s"], name="s"), oh.make_node("Tanh", ["s"], ["t"], name="tanh"),
             oh.make_node("MatMul", ["t", "v"], ["y"], name="score")]
    consts = {"wq": rng.standard_normal((4, h)).astype(np.float32),
              "wk": rng.standard_normal((4, h)).astype(np.float32),
              "v": rng.standard_normal((h, 1)).astype(np.float32),
              "ax1": np.array([1], np.int64), "ax2": np.array([2], np.int64)}
    model = tiny_model(nodes, [("x", ["N", "T", 4])], [("y", None)], consts)
    model = onnx.shape_inference.infer_shapes(model)
    if last != "H":  # a second fixed axis: nothing says which is the channel axis
        for vi in model.graph.value_info:
            if vi.name in ("s", "t"):
                vi.type.tensor_type.shape.dim[2].ClearField("dim_param")
                vi.type.tensor_type.shape.dim[2].dim_value = 5
    onnx.save(model, str(path))
    return path


def test_a_dynamic_axis_is_no_channel_axis(tmp_path):
    (site,) = mst.find_sites(attention(tmp_path / "att.onnx")).sites
    assert (site.axis, site.channels) == (3, 8)
    assert site.axis_rule.startswith("the one fixed-size axis")


def test_the_hardened_model_runs_at_any_sequence_length(tmp_path):
    """Statistics per H: calibrated at T=3, the hardened model runs at T=5 and guards every score."""
    path = attention(tmp_path / "att.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((32, 3, 4)).astype(np.float32))
    out = tmp_path / "hard.onnx"
    r = run_cli(str(path), "--data", str(tmp_path / "calib.npz"), "--alpha", "0.3", "-o", str(out))
    assert r.code == 0, r.err
    stats = mst.load_stats(tmp_path / "hard.stats.npz")
    assert [(s.axis, s.moments.channels) for s in stats.sites.values()] == [(3, 8)]
    x5 = rng.standard_normal((2, 5, 4)).astype(np.float32)
    y = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x5})[0]
    assert y.shape == (2, 5, 5, 1)


def test_no_single_fixed_axis_is_reported_and_the_override_applies(tmp_path):
    path = attention(tmp_path / "att.onnx", last="S")
    table = mst.find_sites(path)
    assert len(table) == 0
    assert [(r.node, r.reason) for r in table.rejected] == [
        ("tanh", "no channel axis of fixed size: conv (N,C,...) by rank gives axis 1, dynamic ('T') in [N,T,5,8]; "
                 "--axis tanh=AXIS names one")]
    (site,) = mst.find_sites(path, selection=mst.Selection(axes=(("tanh", 3),))).sites
    assert (site.axis, site.channels, site.axis_rule) == (3, 8, "override")


@pytest.mark.parametrize("fixed_batch", [False, True])
def test_a_rank_1_tensor_has_no_channels(tmp_path, fixed_batch):
    """A per-sample scalar ``[N]`` feeding a Relu: by rank its channel axis would be the batch."""
    n = 4 if fixed_batch else "N"
    model = tiny_model([oh.make_node("ReduceSum", ["x", "ax"], ["r"], keepdims=0, name="sum"),
                        oh.make_node("Relu", ["r"], ["y"], name="relu")], [("x", [n, 3])], [("y", [n])],
                       {"ax": np.array([1], np.int64)}, opset=13)
    onnx.save(onnx.shape_inference.infer_shapes(model), str(tmp_path / "m.onnx"))
    table = mst.find_sites(tmp_path / "m.onnx")
    if fixed_batch:  # a fixed batch of 4 is a fixed size: nothing in the graph says it is not channels
        assert [s.axis for s in table] == [0]
    else:
        assert len(table) == 0 and table.rejected[0].reason.startswith("no channel axis of fixed size")
