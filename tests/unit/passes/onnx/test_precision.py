"""fp16 / bf16 hardened models (for TensorRT 11's strongly typed networks), against fp32 and numpy.

The reduced-precision models run in ONNX's reference evaluator (``onnx.reference``): numpy
arithmetic in the model's own type, a runtime independent of ours and of ONNX Runtime.
Stated tolerance, per held-out sample: logits within ``32 u`` of the fp32 hardened model's
largest logit (u = 2^-11 fp16, 2^-8 bf16), on all but 2% of samples (a value that crosses a
band edge moves by up to its threshold), and top-1 agreement of at least 97%.
"""
from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import EXAMPLE

import mstransform as mst
from mstransform.core.operator import unit_roundoff
from mstransform.passes.graph.load import load_model
from mstransform.passes.onnx.precision import ConvertFloatPass, unsupported_ops
from mstransform.passes.onnx.recognise import find_sparsify_ops

ort = pytest.importorskip("onnxruntime")
TYPES = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16}
IMAGES = {"fp16": 48, "bf16": 128}  # numpy's float16 Conv is slow: fewer images, same statement


@pytest.fixture(scope="module")
def stats(tmp_path_factory):
    path = tmp_path_factory.mktemp("precision") / "stats.npz"
    mst.calibrate(EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", limit=512, progress=False).save(path)
    return path


def test_pass_rounds_weights_once_keeps_io_and_runs_twice():
    base = load_model(EXAMPLE / "model.onnx")
    weights = {k: v.const_value.numpy().copy() for k, v in base.graph.initializers.items()
               if v.dtype == ir.DataType.FLOAT}
    m = load_model(EXAMPLE / "model.onnx")
    assert ConvertFloatPass("fp16")(m).modified
    assert not ConvertFloatPass("fp16")(m).modified  # a second run finds nothing to do
    for name, w in weights.items():
        got = m.graph.initializers[name].const_value.numpy()
        assert got.dtype == np.float16 and np.array_equal(got, w.astype(np.float16)), name
    assert [v.dtype for v in m.graph.inputs] == [ir.DataType.FLOAT]
    assert [v.dtype for v in m.graph.outputs] == [ir.DataType.FLOAT]
    proto = ir.to_proto(m)
    onnx.checker.check_model(proto, full_check=True)
    inner = [vi for vi in onnx.shape_inference.infer_shapes(proto).graph.value_info
             if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    assert not inner, [vi.name for vi in inner]  # nothing between the boundary Casts stays float32
    x = np.load(EXAMPLE / "test.npz")["input"][:4].astype(np.float32)
    assert ort.InferenceSession(proto.SerializeToString()).run(None, {"input": x})[0].dtype == np.float32


def test_bf16_needs_opset_22_for_conv_and_an_overflow_is_refused():
    m = load_model(EXAMPLE / "model.onnx")
    assert ("Conv", 17) in unsupported_ops(m, "bf16") and not unsupported_ops(m, "fp16")
    big = next(v for v in m.graph.initializers.values() if v.dtype == ir.DataType.FLOAT)
    big.const_value = ir.tensor(np.full(big.shape.numpy(), 1e6, np.float32), name=big.name)
    with pytest.raises(Exception, match="beyond the range of fp16"):
        ConvertFloatPass("fp16")(m)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_hardened_reduced_precision_matches_fp32_within_the_stated_tolerance(precision, stats, tmp_path):
    from onnx.reference import ReferenceEvaluator

    alpha = 0.2
    fp32, low = tmp_path / "fp32.onnx", tmp_path / f"{precision}.onnx"
    mst.harden(EXAMPLE / "model.onnx", stats, alpha=alpha, output=fp32)
    report = mst.harden(EXAMPLE / "model.onnx", stats, alpha=alpha, output=low, precision=precision,
                        runtime="openvino" if precision == "bf16" else "onnxruntime")
    assert any("band-edge" in c or "max |diff| = 0" in c for c in report.checks)
    model = ir.load(low)
    assert model.metadata_props["mstransform.precision"] == precision
    if precision == "bf16":
        assert model.opset_imports[""] >= 22
    # the operators' constants: the float64 statistics rounded once to the model's type
    dtype = TYPES[precision]
    with np.load(stats, allow_pickle=False) as z:
        expected = {str(feed): (z[f"mean/{i}"], alpha * np.sqrt(z[f"var/{i}"]))
                    for i, feed in enumerate(z["site_feeds"])}
    ops = find_sparsify_ops(model.graph)
    assert len(ops) == len(expected)
    for op in ops:
        mean, thr = expected[op.x.name]
        assert op.center.dtype == dtype and np.array_equal(op.center.reshape(-1), mean.astype(dtype))
        assert np.array_equal(op.threshold.reshape(-1), thr.astype(dtype))
    # the whole model in its own precision (numpy in that type) against the fp32 model
    x = np.load(EXAMPLE / "test.npz")["input"][: IMAGES[precision]].astype(np.float32)
    ref = ort.InferenceSession(str(fp32)).run(None, {"input": x})[0].astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # exp overflow inside fp16 Sigmoid saturates as it should
        got = ReferenceEvaluator(str(low)).run(None, {"input": x})[0].astype(np.float64)
    rel = np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)
    tol = 32 * unit_roundoff(dtype)
    assert np.mean(rel > tol) <= 0.02, (precision, np.sort(rel)[-5:], tol)
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.97
    assert np.median(rel) > 0  # it really ran in reduced precision


def test_cli_precision_and_openvino_self_check(cli, stats, tmp_path):
    out = tmp_path / "m.onnx"
    r = cli(EXAMPLE / "model.onnx", "--stats", stats, "--alpha", "0.2", "--precision", "bf16", "-o", out)
    assert r.code == 3 and "ONNX Runtime cannot load" in r.err and r.err.count("\n") == 1 and not out.exists()
    pytest.importorskip("openvino")
    r = cli(EXAMPLE / "model.onnx", "--stats", stats, "--alpha", "0.2", "--precision", "bf16", "--runtime",
            "openvino", "-o", out)
    assert r.code == 0, r.err
    assert "OpenVINO" in r.out and out.exists()


@pytest.mark.parametrize("name,label", [("vit", "dynamo-20-folded"), ("resnet", "legacy-17-bn"),
                                        ("mobilenet", "dynamo-20-folded")])
def test_zoo_models_convert_and_pass_the_self_check(name, label, export_dir, tmp_path):
    """LayerNorm/GELU/attention, kept BatchNorm, HardSwish/SE: fp16 checked on ONNX Runtime, bf16 on OpenVINO."""
    from helpers import exported, random_inputs

    path = exported(name, label, export_dir)
    stats = mst.calibrate(path, {"input": random_inputs(name, 16)}, progress=False)
    runs = [("fp16", "onnxruntime")]
    try:
        import openvino  # noqa: F401

        runs.append(("bf16", "openvino"))
    except ImportError:
        pass
    for precision, runtime in runs:
        out = tmp_path / f"{precision}.onnx"
        report = mst.harden(path, stats, alpha=0.2, output=out, precision=precision, runtime=runtime)
        assert report.max_abs_diff == 0
        types = {v.dtype for v in ir.load(out).graph.initializers.values()} - {ir.DataType.INT64}
        assert types == {ConvertFloatPass(precision).target}, types


def test_branch_weights_are_rounded_like_the_main_graph():
    """An ``If`` whose branches hold their own float32 weights: after the pass every value is fp16."""
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    w_then, w_else = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)

    def branch(name, op, w):
        return h.make_graph([h.make_node(op, ["r", f"w_{name}"], [f"y_{name}"])], name, [],
                            [h.make_tensor_value_info(f"y_{name}", T.FLOAT, [2, 3])], [nh.from_array(w, f"w_{name}")])

    graph = h.make_graph(
        [h.make_node("Relu", ["x"], ["r"]),
         h.make_node("If", ["c"], ["y"], then_branch=branch("then", "Add", w_then), else_branch=branch("else", "Mul", w_else))],
        "g", [h.make_tensor_value_info("x", T.FLOAT, [2, 3]), h.make_tensor_value_info("c", T.BOOL, [])],
        [h.make_tensor_value_info("y", T.FLOAT, [2, 3])])
    m = ir.from_proto(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))
    assert ConvertFloatPass("fp16")(m).modified
    assert not ConvertFloatPass("fp16")(m).modified
    proto = ir.to_proto(m)
    onnx.checker.check_model(proto, full_check=True)  # strict inference: a float32 weight left in a branch fails here
    from onnx.reference import ReferenceEvaluator

    x = rng.standard_normal((2, 3)).astype(np.float32)
    r = np.maximum(x.astype(np.float16), np.float16(0))
    for cond, want in ((True, r + w_then.astype(np.float16)), (False, r * w_else.astype(np.float16))):
        got = ReferenceEvaluator(proto).run(None, {"x": x, "c": np.array(cond)})[0]
        assert got.dtype == np.float32 and np.array_equal(got, want.astype(np.float32)), cond


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_an_opset_7_model_goes_to_an_opset_that_has_the_operator_before_it_is_converted(precision, tmp_path):
    """An opset-7 export has no ``Where``: the reduced-precision path upgrades it as the fp32 path does (to the
    first opset with the operator's ops where every op takes the type), so the written model is valid ONNX."""
    import onnx.helper as h

    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = h.make_graph([h.make_node("Conv", ["x", "W"], ["c"]), h.make_node("Relu", ["c"], ["y"])], "g",
                         [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                         [onnx.numpy_helper.from_array(w, "W")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 7)])
    model.ir_version = 4
    onnx.save(model, tmp_path / "m.onnx")
    data = np.random.default_rng(1).random((16, 3, 8, 8), dtype=np.float32)
    stats = mst.calibrate(tmp_path / "m.onnx", data, progress=False)
    hardened = mst.harden_model(tmp_path / "m.onnx", stats, alpha=0.2, precision=precision).model
    proto = ir.to_proto(hardened)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 9 and len(find_sparsify_ops(hardened.graph)) == 1
