"""Deployment: the static TensorRT check on every hardened test model, the engine builder, the runtime."""
from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from helpers import EXAMPLE, EXPORTS, exported, random_inputs

import mstransform as mst
import zoo
from mstransform.deploy.trt_check import check_trt, versions
from mstransform.passes.graph.load import load_model

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def hardened(export_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("hardened")
    cache = {}

    def get(name, label, formulation="where"):
        key = (name, label, formulation)
        if key not in cache:
            src = exported(name, label, export_dir)
            stats = mst.calibrate(src, {"input": random_inputs(name, 16)}, progress=False)
            out = d / f"{name}-{label}-{formulation}.onnx"
            mst.harden(src, stats, alpha=0.2, output=out, formulation=formulation)
            cache[key] = out
        return cache[key]

    return get


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


@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed on this machine (cannot be: see README)")
def test_engine_builds_where_tensorrt_exists(hardened, tmp_path):
    from mstransform.deploy.trt_engine import build_engine, parse_shapes

    plan = tmp_path / "m.plan"
    build_engine(hardened("resnet", "legacy-17-folded"), plan,
                 profile=parse_shapes("1/4/8", {"input": (None, 1, 16, 16)}))
    assert plan.stat().st_size > 0


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the missing-dependency message cannot be shown")
def test_engine_without_tensorrt_says_how_to_install(hardened, tmp_path, cli):
    r = cli("engine", hardened("resnet", "legacy-17-folded"), "-o", tmp_path / "m.plan", "--shapes", "1/8/64")
    assert r.code == 8 and "pip install tensorrt" in r.err and r.err.count("\n") == 1
    assert not (tmp_path / "m.plan").exists()


def test_run_reports_cpu_and_accuracy(cli):
    r = cli("run", EXAMPLE / "model.onnx", "--data", EXAMPLE / "test.npz", "--limit", "500")
    assert r.code == 0, r.err
    first = r.out.splitlines()[0]
    assert first.startswith("ONNX Runtime ") and first.endswith(" on CPUExecutionProvider")  # why: under --verbose
    acc = float(r.out.split("accuracy ")[1].split("%")[0])
    assert 80 < acc <= 100


@pytest.mark.parametrize("case", ["one-class", "no-labels"])
def test_compare_accuracy_refuses_what_is_not_a_classification_in_one_line(case, tmp_path):
    """Accuracy needs class scores (runtime.accuracy.is_class_scores: two classes or more) and labels."""
    import onnx.helper as oh
    from helpers import tiny_model

    from mstransform.core.errors import DataError

    width = 1 if case == "one-class" else 3
    model = tmp_path / "m.onnx"
    onnx.save(tiny_model([oh.make_node("Identity", ["input"], ["scores"])], [("input", ["N", width])],
                         [("scores", ["N", width])]), model)
    data = {"input": np.zeros((4, width), np.float32)}
    if case == "one-class":
        data["labels"] = np.zeros(4, np.int64)
    np.savez(tmp_path / "d.npz", **data)
    with pytest.raises(DataError, match="needs class scores" if case == "one-class" else "no labels") as e:
        mst.compare_accuracy([model], tmp_path / "d.npz")
    assert "\n" not in str(e.value)


def test_gpu_providers_are_asked_for_only_when_their_libraries_load(monkeypatch):
    """onnxruntime-gpu lists TensorRT and CUDA even where libnvinfer/libcudart are missing; asking for
    them there makes ONNX Runtime log an error and fall back. They must be skipped, with the reason."""
    import onnxruntime

    from mstransform.core.errors import DependencyError
    from mstransform.runtime import session

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(session.PREFERRED))
    loads = {"libcudart.so.13"}
    monkeypatch.setattr(session, "library_loads", lambda names: bool(loads & set(names)))
    chosen, why = session.choose_providers()
    assert chosen == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "Tensorrt skipped: libnvinfer.so.10 does not load" in why
    loads.clear()
    assert session.choose_providers()[0] == ["CPUExecutionProvider"]
    with pytest.raises(DependencyError, match="TensorrtExecutionProvider cannot start"):  # a missing dependency: exit 8
        session.choose_providers(["TensorrtExecutionProvider", "CPUExecutionProvider"])


def test_run_writes_predictions(cli, tmp_path):
    out = tmp_path / "p.npy"
    r = cli("run", EXAMPLE / "model.onnx", "--data", EXAMPLE / "calib.npz", "--limit", "10", "-o", out)
    assert r.code == 0 and np.load(out, allow_pickle=False).shape == (10,)


def test_parse_shapes():
    from mstransform.core.errors import UsageError
    from mstransform.deploy.trt_engine import parse_shapes

    p = parse_shapes("1/8/64", {"input": (None, 3, 224, 224)})
    assert p.shapes["input"] == ((1, 3, 224, 224), (8, 3, 224, 224), (64, 3, 224, 224))
    p = parse_shapes("x:1x3/2x3/4x3", {})
    assert p.shapes["x"] == ((1, 3), (2, 3), (4, 3))
    with pytest.raises(UsageError):
        parse_shapes("8/1/64", {"input": (None, 3)})
    for spec, words in [("x:1x3/2x3x1/4x3", "same rank"), ("x:0x3/2x3/4x3", "1 <= MIN <= OPT <= MAX"),
                        ("x:1x3/2x3/4x-3", "1 <= MIN <= OPT <= MAX"), ("x:1x4/2x3/4x3", "1 <= MIN <= OPT <= MAX"),
                        ("x:1x3/2x3/4x3,x:1x3/2x3/4x3", "twice")]:
        with pytest.raises(UsageError, match=words):
            parse_shapes(spec, {})


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
