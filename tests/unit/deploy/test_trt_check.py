"""The static TensorRT check (``deploy.trt_check``) on every hardened test model: the formulations, the bool and
broadcast findings, fp16 overflow, and what each TensorRT release (10.x, 11.x) takes."""
from __future__ import annotations

import onnx
import pytest
from hardened_zoo import hardened  # noqa: F401 -- the fixture
from helpers import EXPORTS

import zoo
from mstransform.deploy.trt_check import check_trt, versions
from mstransform.passes.graph.load import load_model


@pytest.mark.parametrize("label", [e[0] for e in EXPORTS])
@pytest.mark.parametrize("name", list(zoo.EXPECTED))
def test_check_trt_passes_on_every_hardened_test_model(name, label, hardened, cli):
    path = hardened(name, label)
    findings = check_trt(load_model(path), "10.1", fp16=True)
    assert not [f for f in findings if f.level == "error"], [str(f) for f in findings]
    r = cli("check-trt", path, "--fp16")
    assert r.code == 0 and "ok: compatible" in r.out


def test_float_formulation_has_no_bool_and_passes(hardened):
    path = hardened("resnet", "legacy-17-bn", "float")
    m = onnx.load(str(path))
    for vi in [*m.graph.value_info, *m.graph.output, *m.graph.input]:
        assert vi.type.tensor_type.elem_type != onnx.TensorProto.BOOL
    assert not [f for f in check_trt(load_model(path)) if f.level == "error"]


def test_check_trt_catches_bool_output_and_bad_broadcast(hardened, tmp_path, cli):
    import onnx_ir as ir

    m = ir.load(hardened("resnet", "legacy-17-folded"))
    less = next(n for n in m.graph if n.op_type == "Less")
    less.outputs[0].type = ir.TensorType(ir.DataType.BOOL)
    m.graph.outputs.append(less.outputs[0])
    center = next(v for name, v in m.graph.initializers.items() if name.endswith("/center"))
    center.const_value = ir.tensor(center.const_value.numpy().reshape(-1))  # [C] instead of [1,C,1,1]
    center.shape = ir.Shape(center.const_value.shape)
    bad = tmp_path / "bad.onnx"
    ir.save(m, bad)
    findings = [str(f) for f in check_trt(load_model(bad)) if f.level == "error"]
    assert any("bool graph input/output" in f for f in findings)
    assert any("does not broadcast" in f for f in findings)
    r = cli("check-trt", bad)
    assert r.code == 9 and r.err.count("\n") == 1


def test_check_trt_knows_release_differences(hardened):
    path = hardened("vit", "dynamo-20-folded")  # opset 20 with Gelu and LayerNormalization ops
    old = [str(f) for f in check_trt(load_model(path), "8.5") if f.level == "error"]
    assert any("opset 20" in f for f in old) and any("(Gelu)" in f for f in old)
    assert "10.1" in versions()


def test_fp16_check_flags_overflowing_constants(hardened, tmp_path):
    import onnx_ir as ir

    m = ir.load(hardened("resnet", "legacy-17-folded"))
    t = next(v for name, v in m.graph.initializers.items() if name.endswith("/threshold"))
    t.const_value = ir.tensor(t.const_value.numpy() * 0 + 1e6)
    bad = tmp_path / "big.onnx"
    ir.save(m, bad)
    assert any("overflows fp16" in str(f) for f in check_trt(load_model(bad), fp16=True))
    assert not any("overflows fp16" in str(f) for f in check_trt(load_model(bad), fp16=False))


def test_check_trt_knows_what_tensorrt_11_removed(hardened, cli):
    """11.x: no FP16 flag (an FP32 model stays FP32), INT8 only through Q/DQ; NVIDIA's 11.x facts, no stand-in table."""
    path = hardened("resnet", "legacy-17-folded")
    findings = [str(f) for f in check_trt(load_model(path), "11", fp16=True)]
    assert any("no FP16 builder flag" in f for f in findings)
    assert not any("stands in" in f for f in findings)
    assert not check_trt(load_model(path), "11")  # fp32 engine: fine, and nothing to warn about
    assert not any("FP16 builder flag" in str(f) for f in check_trt(load_model(path), "10.1", fp16=True))
    r = cli("check-trt", path, "--trt-version", "11", "--fp16")
    assert r.code == 9 and "strongly typed" in r.err and r.err.count("\n") == 1
    r = cli("check-trt", path, "--trt-version", "11")
    assert r.code == 0 and "ok: compatible" in r.out and "(0 warning(s))" in r.out


def _opset_model(path, opset, op="Relu"):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], name=f"{op.lower()}_0")], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return load_model(path)


def _errors(model, version):
    return [str(f) for f in check_trt(model, version) if f.level == "error"]


def test_check_trt_11_uses_nvidia_opset_range_and_new_operators(tmp_path):
    """NVIDIA's ONNX Opset Guide, TensorRT 11.x: opsets 9..25; the 11.0 parser added Swish."""
    from mstransform.deploy.trt_check import later_facts

    facts = later_facts("11")
    assert (facts["opset_min"], facts["opset_max"], facts["onnx"]) == (9, 25, "1.20.0") and "Swish" in facts["added_ops"]
    for opset in range(11, 17):  # common real exports
        model = _opset_model(tmp_path / f"o{opset}.onnx", opset)
        for version in ("10.0", "10.1", "11"):
            assert not _errors(model, version), (opset, version)
    for opset, ok in ((8, False), (9, True), (25, True), (26, False)):
        assert not _errors(_opset_model(tmp_path / f"e{opset}.onnx", opset), "11") == ok, opset
    assert any("opset 25" in e for e in _errors(_opset_model(tmp_path / "t.onnx", 25), "10.1"))
    swish = _opset_model(tmp_path / "swish.onnx", 24, op="Swish")
    assert not _errors(swish, "11")
    assert any("(Swish)" in e and "not supported" in e for e in _errors(swish, "10.1"))
