"""Hardened ONNX models against independent references.

* end to end: ONNX Runtime on the hardened export vs the PyTorch model with the paper's
  operator attached by hooks (``zoo.with_reference_operator``), split at the operators by
  teacher forcing (``conftest.check_operators``): continuous parts within 1e-5 of scale, every
  operator exact on its own input, a differing decision only at the band edge;
* the check itself refuses planted errors (a wrong center, threshold, axis, weight, a dropped
  or inverted operator) and accepts a decision flipped one rounding step from the edge;
* per operator: each inserted operator's output vs the numpy operator on its input, bit for bit;
* alpha = 0 is bit-identical to the original model; dynamic batch survives.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest
import torch
from helpers import (EXPORTS, OperatorValues, assert_onnx_matches_reference, check_operators, exported,
                      random_inputs)

import mstransform as mst
import zoo


def run(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def calib_cache():
    return {}


def stats_for(name, label, export_dir, cache):
    key = (name, label)
    if key not in cache:
        cache[key] = mst.calibrate(exported(name, label, export_dir), {"input": random_inputs(name, 64, seed=1)},
                                   batch_size=16, progress=False)
    return cache[key]


@pytest.mark.parametrize("label", [e[0] for e in EXPORTS])
@pytest.mark.parametrize("name", list(zoo.EXPECTED))
def test_hardened_matches_torch_reference(name, label, export_dir, tmp_path, calib_cache):
    path = exported(name, label, export_dir)
    stats = stats_for(name, label, export_dir, calib_cache)
    alpha = 0.25
    out = tmp_path / "hard.onnx"
    report = mst.harden(path, stats, alpha=alpha, output=out)
    assert len(report.sites) == sum(zoo.EXPECTED[name].values())

    x = random_inputs(name, 4, seed=7)
    params = [(s.moments.mean, alpha * np.sqrt(s.moments.var), s.axis) for s in stats.sites.values()]
    # the change must be well above the tolerance, or the comparison could not catch a wrong pass
    assert np.max(np.abs(run(out, x) - run(path, x))) > 1e-4
    checked = assert_onnx_matches_reference(out, name, params, x)
    assert checked.operators == len(report.sites)


ALPHA = 0.25


@pytest.fixture(scope="module")
def resnet_hardened(export_dir, tmp_path_factory, calib_cache):
    """The ResNet export hardened at ALPHA, with the paper's parameters and the names of its sites."""
    stats = stats_for("resnet", "legacy-17-folded", export_dir, calib_cache)
    out = tmp_path_factory.mktemp("planted") / "hard.onnx"
    report = mst.harden(exported("resnet", "legacy-17-folded", export_dir), stats, alpha=ALPHA, output=out)
    params = [(s.moments.mean, ALPHA * np.sqrt(s.moments.var), s.axis) for s in stats.sites.values()]
    return out, params, report.sites


def _plant(path, site: str, error: str, out):
    """The hardened file with one planted error at ``site``'s operator."""
    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    c_init, t_init = inits[f"mstransform/{site}/center"], inits[f"mstransform/{site}/threshold"]
    c, t = onnx.numpy_helper.to_array(c_init), onnx.numpy_helper.to_array(t_init)
    where = next(n for n in m.graph.node if n.name == f"mstransform/{site}/Where")
    if error == "center":  # the band shifted by a whole threshold
        c_init.CopyFrom(onnx.numpy_helper.from_array(c + t, c_init.name))
        # the Where's replacement value is the same initializer: the matcher still sees one operator
    elif error == "threshold":
        t_init.CopyFrom(onnx.numpy_helper.from_array(t * np.float32(1.5), t_init.name))
    elif error == "axis":  # per-channel constants applied to the wrong channels
        c_init.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(c[:, ::-1]), c_init.name))
        t_init.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(t[:, ::-1]), t_init.name))
    elif error == "weights":  # the first convolution after the operator, off by 1%
        after = list(m.graph.node)[list(m.graph.node).index(where):]
        conv = next(n for n in after if n.op_type == "Conv")
        w = inits[conv.input[1]]
        w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w) * np.float32(1.01), w.name))
    elif error == "dropped":  # a pass that skipped the site: its nodes gone, its readers read its input
        for n in [n for n in m.graph.node if n.name.startswith(f"mstransform/{site}/")]:
            m.graph.node.remove(n)
        for n in m.graph.node:
            for k, name in enumerate(n.input):
                if name == where.output[0]:
                    n.input[k] = where.input[2]
    elif error == "inverted":  # Where(m, x, c): keeps inside the band, replaces outside; not the operator
        where.input[1], where.input[2] = where.input[2], where.input[1]
    onnx.save(m, str(out))
    return out


PLANTED = {
    "center": "decides .* value\\(s\\) differently from the paper's operator",
    "threshold": "decides .* value\\(s\\) differently from the paper's operator",
    "axis": "decides .* value\\(s\\) differently from the paper's operator",
    "weights": "differs from the reference's by",
    "dropped": "runs 4 sparsify operator\\(s\\) where the reference has 5",
    "inverted": "runs 4 sparsify operator\\(s\\) where the reference has 5",
}


@pytest.mark.parametrize("error", list(PLANTED))
def test_forced_check_refuses_a_planted_error(error, resnet_hardened, tmp_path):
    """Each planted error makes the check fail, and fail at the part that exists to catch it: a wrong
    center, threshold or axis at the decisions (the teacher-forced continuous parts still agree), a
    wrong weight at the continuous parts, a dropped operator, or one inverted into something that is not
    the paper's operator, at the count of operators."""
    path, params, sites = resnet_hardened
    x = random_inputs("resnet", 4, seed=7)
    assert_onnx_matches_reference(path, "resnet", params, x)  # the unplanted file passes
    bad = _plant(path, sites[2], error, tmp_path / "bad.onnx")
    with pytest.raises(AssertionError, match=PLANTED[error]):
        assert_onnx_matches_reference(bad, "resnet", params, x)


def _one_operator(x_impl, x_ref, t_impl=0.5, y_impl=None):
    """check_operators on one hand-made operator with center 0 over 1 channel: the implementation saw
    ``x_impl`` (threshold ``t_impl``) and computed ``y_impl`` (default: the operator), the reference saw
    ``x_ref`` (the paper's threshold, 0.5)."""
    x_impl, x_ref = np.asarray(x_impl, np.float32).reshape(1, 1, -1), np.asarray(x_ref, np.float32).reshape(1, 1, -1)
    c, t = np.zeros((1, 1, 1), np.float32), np.full((1, 1, 1), t_impl, np.float32)
    y = (np.where(np.abs(x_impl - c) < t, c, x_impl) if y_impl is None
         else np.asarray(y_impl, np.float32).reshape(1, 1, -1))
    ref = {0: (x_ref, np.abs(x_ref - np.float32(0)) < np.float32(0.5))}
    out = np.ones(3, np.float32)
    return check_operators(out, [OperatorValues(x_impl, y, c, t)], out.copy(), ref, [(np.zeros(1), np.full(1, 0.5), 1)])


def test_forced_check_accepts_a_flip_one_rounding_step_from_the_edge():
    below = np.nextafter(np.float32(0.5), np.float32(0))  # replaced by the implementation
    above = np.float32(0.5)  # kept by the reference: its segment rounded one step up
    report = _one_operator([below, 0.1, 0.9, -2.0], [above, 0.1, 0.9, -2.0])
    assert report.flips == 1 and report.replaced == 2  # `below` and 0.1


def test_forced_check_refuses_a_flip_far_from_the_edge():
    """The implementation replaces 0.6 (its threshold 0.75), the paper's operator keeps it: 0.1 from the edge."""
    with pytest.raises(AssertionError, match="decides 1 value\\(s\\) differently .* up to 0.1 away") as e:
        _one_operator([0.6, 0.1, 0.9, -2.0], [0.6, 0.1, 0.9, -2.0], t_impl=0.75)
    assert "its threshold is not the paper's" in str(e.value)


@pytest.mark.parametrize("y", [[0.0, 0.0, 0.0, -2.0], [0.3, 0.1, 0.9, -2.0], [0.3, 0.0, 0.9, -2.0000002]],
                         ids=["replaced-outside", "kept-inside", "kept-but-rounded"])
def test_forced_check_refuses_an_operator_that_is_not_the_papers_on_its_own_input(y):
    """(b): the output must be where(|x - c| < t, c, x) of the implementation's own x, to the last bit."""
    with pytest.raises(AssertionError, match="its output differs from where"):
        _one_operator([0.3, 0.1, 0.9, -2.0], [0.3, 0.1, 0.9, -2.0], y_impl=y)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_in_band_is_the_operators_strict_test_in_the_values_type(dtype):
    """core.operator.in_band: |x - c| < t per channel along an axis, in x's type; the edge itself is kept."""
    from mstransform.core.operator import in_band, sparsify

    x = np.array([[[0.5, 0.25], [1.0, 3.5]], [[-0.5, 0.5], [2.0, 2.9]]], dtype)  # (2, 2, 2): channels on axis 1
    c, t = np.array([0.0, 3.0]), np.array([0.5, 1.0])
    want = np.array([[[False, True], [False, True]], [[False, False], [False, True]]])
    np.testing.assert_array_equal(in_band(x, c, t, 1), want)
    np.testing.assert_array_equal(in_band(x, c.reshape(1, 2, 1), t.reshape(1, 2, 1), None), want)
    y = sparsify(x, c, t, 1)
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(y, np.where(want, c.reshape(1, 2, 1).astype(dtype), x))


@pytest.mark.parametrize("label", ["legacy-17-folded", "dynamo-20-folded"])
@pytest.mark.parametrize("name", ["resnet", "mobilenet", "vit"])
def test_alpha_zero_is_bit_identical(name, label, export_dir, tmp_path, calib_cache):
    path = exported(name, label, export_dir)
    out = tmp_path / "a0.onnx"
    report = mst.harden(path, stats_for(name, label, export_dir, calib_cache), alpha=0.0, output=out)
    assert report.sites == [] and len(report.skipped) == sum(zoo.EXPECTED[name].values())
    x = random_inputs(name, 5, seed=11)
    assert np.array_equal(run(out, x), run(path, x))


def test_dynamic_batch_survives(export_dir, tmp_path, calib_cache):
    path = exported("resnet", "dynamo-20-folded", export_dir)
    out = tmp_path / "hard.onnx"
    mst.harden(path, stats_for("resnet", "dynamo-20-folded", export_dir, calib_cache), alpha=0.2, output=out)
    dim = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value
    for n in (1, 7):
        assert run(out, random_inputs("resnet", n)).shape == (n, 10)


def test_constants_preshaped_and_opset_kept(export_dir, tmp_path, calib_cache):
    path = exported("vit", "legacy-17-folded", export_dir)
    out = tmp_path / "hard.onnx"
    mst.harden(path, stats_for("vit", "legacy-17-folded", export_dir, calib_cache), alpha=0.2, output=out)
    m = onnx.load(str(out))
    assert [o.version for o in m.opset_import if o.domain == ""] == [17]
    shapes = {tuple(i.dims) for i in m.graph.initializer if i.name.startswith("mstransform/")}
    assert shapes == {(1, 1, 32)}
    ops = [n.op_type for n in m.graph.node if n.name.startswith("mstransform/")]
    assert ops.count("Less") == 2 and "LessOrEqual" not in ops
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["mstransform.sites"] == "2" and meta["mstransform.mode"] == "meansparse"


def test_float_formulation_equals_where(export_dir, tmp_path, calib_cache):
    path = exported("resnet", "legacy-17-bn", export_dir)
    stats = stats_for("resnet", "legacy-17-bn", export_dir, calib_cache)
    a, b = tmp_path / "where.onnx", tmp_path / "float.onnx"
    mst.harden(path, stats, alpha=0.3, output=a)
    mst.harden(path, stats, alpha=0.3, output=b, formulation="float")
    ops = {n.op_type for n in onnx.load(str(b)).graph.node}
    assert "Where" not in ops and "Less" not in ops
    x = random_inputs("resnet", 6, seed=5)
    assert np.array_equal(run(a, x), run(b, x))


def test_fp16_model_keeps_its_type(tmp_path):
    import contextlib
    import io

    model = zoo.build("vit").half()
    src = tmp_path / "vit16.onnx"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model, (torch.randn(2, 1, 16, 16).half(),), str(src), dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes={"input": {0: "b"}})
    x = np.random.default_rng(0).standard_normal((32, 1, 16, 16)).astype(np.float16)
    stats = mst.calibrate(src, {"input": x}, progress=False)
    assert {s.dtype for s in stats.sites.values()} == {"float16"}
    out = tmp_path / "vit16.hard.onnx"
    mst.harden(src, stats, alpha=0.3, output=out)
    consts = [i for i in onnx.load(str(out)).graph.initializer if i.name.startswith("mstransform/")]
    assert consts and {i.data_type for i in consts} == {onnx.TensorProto.FLOAT16}
    assert run(out, x[:3]).dtype == np.float16


def test_external_data_is_kept(export_dir, tmp_path, calib_cache):
    src = tmp_path / "ext.onnx"
    m = onnx.load(str(exported("resnet", "legacy-17-folded", export_dir)))
    onnx.save(m, str(src), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.onnx.data",
              size_threshold=0)
    stats = mst.calibrate(src, {"input": random_inputs("resnet", 16)}, progress=False)
    out = tmp_path / "ext.hard.onnx"
    mst.harden(src, stats, alpha=0.2, output=out)
    assert (tmp_path / "ext.hard.onnx.data").is_file()
    x = random_inputs("resnet", 2)
    assert run(out, x).shape == (2, 10)
