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
from helpers import run_cli, tiny_model

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
    """A per-sample score ``[N]`` (a MatMul by a vector) feeding a Relu: by rank its channel axis is the batch."""
    n = 4 if fixed_batch else "N"
    model = tiny_model([oh.make_node("MatMul", ["x", "w"], ["r"], name="score"),
                        oh.make_node("Relu", ["r"], ["y"], name="relu")], [("x", [n, 3])], [("y", [n])],
                       {"w": np.ones(3, np.float32)}, opset=13)
    onnx.save(onnx.shape_inference.infer_shapes(model), str(tmp_path / "m.onnx"))
    table = mst.find_sites(tmp_path / "m.onnx")
    if fixed_batch:  # a fixed batch of 4 is a fixed size: nothing in the graph says it is not channels
        assert [s.axis for s in table] == [0]
    else:
        assert len(table) == 0 and table.rejected[0].reason.startswith("no channel axis of fixed size")


def test_a_bias_names_the_channel_axis_where_no_layer_does(tmp_path):
    """jax2tf writes a Conv1D as Conv on [N, C, L, 1], Squeeze, then the bias ``(1, C, 1)``: the channels are
    axis 1 (16), not the last axis the rank rule of a rank-3 tensor gives (10 positions)."""
    rng = np.random.default_rng(0)
    nodes = [oh.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             oh.make_node("Squeeze", ["c", "ax3"], ["sq"], name="sq"),
             oh.make_node("Add", ["sq", "b"], ["z"], name="bias"), oh.make_node("Relu", ["z"], ["y"], name="relu")]
    consts = {"w": rng.standard_normal((16, 3, 1, 1)).astype(np.float32), "ax3": np.array([3], np.int64),
              "b": rng.standard_normal((1, 16, 1)).astype(np.float32)}
    model = onnx.shape_inference.infer_shapes(tiny_model(nodes, [("x", ["N", 3, 10, 1])], [("y", None)], consts))
    onnx.save(model, str(tmp_path / "m.onnx"))
    (site,) = mst.find_sites(tmp_path / "m.onnx").sites
    assert (site.axis, site.channels, site.axis_rule) == (1, 16, "per-channel constant (bias, scale) along it")


def test_a_normalizations_variance_guard_is_no_activation(tmp_path):
    """``Max(E[x^2] - E[x]^2, 0)`` (jax's LayerNorm) computes a Relu of a statistic, not of a feature."""
    nodes = [oh.make_node("Mul", ["x", "x"], ["sq"], name="sq"),
             oh.make_node("ReduceMean", ["sq"], ["m2"], axes=[-1], name="m2"),
             oh.make_node("ReduceMean", ["x"], ["m1"], axes=[-1], name="m1"),
             oh.make_node("Mul", ["m1", "m1"], ["m1sq"], name="m1sq"), oh.make_node("Sub", ["m2", "m1sq"], ["var"], name="v"),
             oh.make_node("Max", ["var", "zero"], ["guard"], name="guard"),
             oh.make_node("Add", ["guard", "eps"], ["ve"], name="ve"), oh.make_node("Sqrt", ["ve"], ["sd"], name="sd"),
             oh.make_node("Sub", ["x", "m1"], ["d"], name="d"), oh.make_node("Div", ["d", "sd"], ["n"], name="n"),
             oh.make_node("Relu", ["n"], ["y"], name="relu")]
    model = tiny_model(nodes, [("x", ["N", 8])], [("y", None)],
                       {"zero": np.float32(0), "eps": np.float32(1e-6)}, opset=13)
    onnx.save(onnx.shape_inference.infer_shapes(model), str(tmp_path / "ln.onnx"))
    table = mst.find_sites(tmp_path / "ln.onnx")
    assert [s.name for s in table] == ["relu"]
    assert [(r.node, r.reason) for r in table.rejected] == [
        ("guard", "input is a statistic reduced by 'm2' (a normalization's variance, say), not a feature")]
