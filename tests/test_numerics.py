"""Hardened ONNX models against independent references.

* end to end: ONNX Runtime on the hardened export vs the PyTorch model with the paper's
  operator attached by hooks (``zoo.with_reference_operator``), within 1e-5;
* per operator: each inserted operator's output vs the numpy operator on its input;
* alpha = 0 is bit-identical to the original model; dynamic batch survives.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import EXPORTS, assert_close_but_for_edge_flips, exported, random_inputs

import mstransform as mst
import zoo
from mstransform.core.operator import sparsify


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
    got = run(out, x)
    model = zoo.build(name)
    params = [(s.moments.mean, alpha * np.sqrt(s.moments.var), s.axis) for s in stats.sites.values()]
    zoo.with_reference_operator(model, name, params)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    base = run(path, x)
    # the change must be well above the tolerance, or the comparison could not catch a wrong pass
    assert np.max(np.abs(got - base)) > 1e-4
    assert_close_but_for_edge_flips(got, ref)


@pytest.mark.parametrize("name", ["resnet", "vit"])
def test_each_operator_equals_numpy_reference(name, export_dir, tmp_path, calib_cache):
    import onnx_ir as ir

    stats = stats_for(name, "legacy-17-folded", export_dir, calib_cache)
    out = tmp_path / "hard.onnx"
    mst.harden(exported(name, "legacy-17-folded", export_dir), stats, alpha=0.5, output=out)
    m = ir.load(out)
    wheres = [n for n in m.graph if n.op_type == "Where"]
    assert len(wheres) == len(stats)
    m.graph.outputs.extend([w.outputs[0] for w in wheres] + [w.inputs[2] for w in wheres])
    s = ort.InferenceSession(ir.to_proto(m).SerializeToString(), providers=["CPUExecutionProvider"])
    outs = s.run(None, {"input": random_inputs(name, 3, seed=3)})
    k = len(wheres)
    replaced = 0
    for site, y, x in zip(stats.sites.values(), outs[1:1 + k], outs[1 + k:]):
        ref = sparsify(x, site.moments.mean, 0.5 * np.sqrt(site.moments.var), site.axis)
        assert np.max(np.abs(ref - y)) <= 1e-6
        replaced += int((y != x).sum())
    assert replaced > 0


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
