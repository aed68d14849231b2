"""Deployment: the static TensorRT check on every hardened test model, the engine builder, the runtime."""
from __future__ import annotations

import contextlib
import importlib.util
import sys

import numpy as np
import onnx
import pytest
from conftest import EXAMPLE, EXPORTS, REPO, exported, random_inputs

import mstransform as mst
import trt_standin
import zoo
from mstransform.deploy.trt_check import check_trt, versions
from mstransform.passes.prepare import load_model

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
    assert first.startswith("ONNX Runtime ") and " on CPUExecutionProvider (" in first
    acc = float(r.out.split("accuracy ")[1].split("%")[0])
    assert 80 < acc <= 100


def test_gpu_providers_are_asked_for_only_when_their_libraries_load(monkeypatch):
    """onnxruntime-gpu lists TensorRT and CUDA even where libnvinfer/libcudart are missing; asking for
    them there makes ONNX Runtime log an error and fall back. They must be skipped, with the reason."""
    import onnxruntime

    from mstransform.core.errors import ModelError
    from mstransform.runtime import session

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(session.PREFERRED))
    loads = {"libcudart.so.13"}
    monkeypatch.setattr(session, "library_loads", lambda names: bool(loads & set(names)))
    chosen, why = session.choose_providers()
    assert chosen == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "Tensorrt skipped: libnvinfer.so.10 does not load" in why
    loads.clear()
    assert session.choose_providers()[0] == ["CPUExecutionProvider"]
    with pytest.raises(ModelError, match="TensorrtExecutionProvider cannot start"):
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


# --- the engine builder against stand-ins built from the real bindings' facts -------------------
#
# deploy/data/trt_bindings_10.json and _11.json are read from the real tensorrt-cu12/cu13-bindings
# wheels by scripts/trt_facts.py; tests/trt_standin.py builds a tensorrt module from them that can
# hold nothing they lack. No test here downloads anything, and no engine is built: TensorRT's
# libraries cannot be installed on these machines.

GENERATIONS = {"10": "10.16.1.11", "11": "11.4.0.106"}
STATIC = "1/8/64"


def _script():
    spec = importlib.util.spec_from_file_location("trt_facts", REPO / "scripts" / "trt_facts.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("trt_facts", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def standin(monkeypatch):
    """``standin(major, **scenario)``: the StandIn that trt_engine.import_tensorrt() returns from now on."""
    from mstransform.deploy import trt_engine

    def make(major, **scenario):
        st = trt_standin.StandIn(major, trt_standin.Scenario(**scenario))
        monkeypatch.setattr(trt_engine, "import_tensorrt", lambda: st.module)
        return st

    return make


def _profile():
    from mstransform.deploy.trt_engine import parse_shapes

    return parse_shapes(STATIC, {"input": (None, 1, 28, 28)})


def _custom_op_model(path):
    """Relu, then a node of a custom domain no parser has an importer for, then Relu."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu_0"),
             helper.make_node("Guard", ["a"], ["b"], name="guard_1", domain="com.example"),
             helper.make_node("Relu", ["b"], ["y"], name="relu_2")]
    graph = helper.make_graph(nodes, "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(path))
    return path


def test_facts_files_name_the_wheels_they_were_read_from():
    pins = _script().WHEELS
    for major, version in GENERATIONS.items():
        facts = trt_standin.load_facts(major)
        wheel = facts["wheel"]
        assert wheel == {"index": "PyPI", "project": pins[major].project, "version": pins[major].version,
                         "file": pins[major].file, "sha256": pins[major].sha256}
        assert facts["version"] == wheel["version"] == version and len(wheel["sha256"]) == 64
        assert facts["generated_by"] == "scripts/trt_facts.py" and {"import", "enums", "strings"} <= set(facts["how"])
        for name, enum in facts["enums"].items():
            assert enum["in_docstring"] and enum["in_so_bytes"], name
            assert enum["header"]["agrees"] and enum["header"]["ref"].startswith("NVIDIA/TensorRT v"), name


def test_creation_and_builder_flags_are_the_real_bindings_values():
    """11.4: EXPLICIT_BATCH gone, STRONGLY_TYPED 0 (deprecated, ignored), 1 is PREFER_JIT_PYTHON_PLUGINS."""
    ten, eleven = (trt_standin.load_facts(g)["enums"] for g in ("10", "11"))
    assert ten["NetworkDefinitionCreationFlag"]["members"] == {
        "EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1, "PREFER_AOT_PYTHON_PLUGINS": 3, "PREFER_JIT_PYTHON_PLUGINS": 2}
    assert eleven["NetworkDefinitionCreationFlag"]["members"] == {
        "STRONGLY_TYPED": 0, "PREFER_AOT_PYTHON_PLUGINS": 2, "PREFER_JIT_PYTHON_PLUGINS": 1}
    assert "ignored" in eleven["NetworkDefinitionCreationFlag"]["deprecated"]["STRONGLY_TYPED"]
    assert {"FP16": 0, "BF16": 17}.items() <= ten["BuilderFlag"]["members"].items()
    assert not {"FP16", "BF16", "INT8"} & set(eleven["BuilderFlag"]["members"])


@pytest.mark.parametrize("major", list(GENERATIONS))
def test_standin_declares_nothing_tensorrt_lacks(major, monkeypatch):
    facts = trt_standin.load_facts(major)
    st = trt_standin.StandIn(major)
    public = {n for n in vars(st.module) if not n.startswith("_")}
    assert public <= set(facts["module_names"]) and st.module.__version__ == facts["version"]
    for name, cls in st.classes.items():
        assert {n for n in dir(cls) if not n.startswith("_")} <= set(facts["classes"][name]["members"]), name
    for name, enum in st.enums.items():
        assert {k: int(v) for k, v in enum.__members__.items()} == facts["enums"][name]["members"], name
    assert [int(st.module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)] == [{"10": 1, "11": 0}[major]]
    assert hasattr(st.module.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") == (major == "10")
    assert hasattr(st.module.BuilderFlag, "FP16") == (major == "10")
    monkeypatch.setattr(trt_standin.IBuilderConfig, "set_fp16_mode", lambda self: None, raising=False)
    with pytest.raises(trt_standin.StandInError, match="no TensorRT facts file lists"):
        trt_standin.StandIn(major)


def _build(folder, major, standin, scenario=None, **options):
    """build_engine on the example model (plan ``folder/m.plan``) against a stand-in; the StandIn."""
    from mstransform.deploy import trt_engine

    st = standin(major, **(scenario or {}))
    trt_engine.build_engine(EXAMPLE / "model.onnx", folder / "m.plan", profile=_profile(), **options)
    return st


@pytest.mark.parametrize("major", list(GENERATIONS))
def test_engine_follows_the_tensorrt_api_generation(major, standin, tmp_path):
    """10.x: weakly typed network (no creation flag), precision by builder flag. 11.x: no creation flag
    either (STRONGLY_TYPED is 0 and ignored, 1 would ask for PREFER_JIT_PYTHON_PLUGINS), --fp16 refused."""
    from mstransform.core.errors import UsageError
    from mstransform.deploy import trt_engine

    plan = tmp_path / "m.plan"
    if major == "10":
        st = _build(tmp_path, major, standin, fp16=True)
        assert ("flag", "FP16") in st.calls
    else:
        st = standin(major)
        with pytest.raises(UsageError, match="strongly typed"):
            trt_engine.build_engine(EXAMPLE / "model.onnx", plan, fp16=True, profile=_profile())
        assert not st.calls and not plan.exists()
        st = _build(tmp_path, major, standin)
        assert not [c for c in st.calls if c[0] == "flag"]
    flags = next(c[1] for c in st.calls if c[0] == "network")
    assert flags == 0 and st.flag_names(flags) == set()
    assert ("pool", "WORKSPACE", 1024 << 20) in st.calls
    assert ("profile", {"input": ((1, 1, 28, 28), (8, 1, 28, 28), (64, 1, 28, 28))}) in st.calls
    assert plan.read_bytes().startswith(f"stand-in plan: TensorRT {GENERATIONS[major]}".encode())
    assert [p.name for p in tmp_path.iterdir()] == ["m.plan"]


@pytest.mark.parametrize("major", list(GENERATIONS))
def test_parser_rejection_names_the_node(major, standin, tmp_path, cli):
    model = _custom_op_model(tmp_path / "custom.onnx")
    st = standin(major)
    r = cli("engine", model, "-o", tmp_path / "m.plan", "--shapes", "1/2/4")
    assert r.code == 3 and r.err.count("\n") == 1, r.err
    assert "TensorRT's ONNX parser rejected the model: node 1 'guard_1' (Guard): stand-in parser:" in r.err
    assert ("build",) not in st.calls and sorted(p.name for p in tmp_path.iterdir()) == ["custom.onnx"]


def test_parser_errors_beyond_three_are_counted(standin, tmp_path):
    from mstransform.core.errors import ModelError

    with pytest.raises(ModelError) as e:
        _build(tmp_path, "11", standin, {"unsupported_ops": frozenset({"Conv"})})
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(EXAMPLE / "model.onnx")).graph.node)
    assert str(e.value).count("(Conv)") == 3 and f"(and {convs - 3} more)" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "m.plan").exists()


@pytest.mark.parametrize("major", list(GENERATIONS))
def test_timing_cache_new_then_reused(major, standin, tmp_path):
    cache = tmp_path / "trt.cache"
    st = _build(tmp_path, major, standin, timing_cache=cache)
    assert ("set_timing_cache", False, True) in st.calls and ("cache", "miss") in st.calls
    first = cache.read_bytes()
    assert first.startswith(trt_standin.CACHE_MAGIC) and GENERATIONS[major].encode() in first
    st = _build(tmp_path, major, standin, timing_cache=cache)
    assert ("set_timing_cache", False, True) in st.calls and ("cache", "hit") in st.calls
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.plan", "trt.cache"]


CACHES = {"another GPU": (lambda st: st.cache_bytes(device="another GPU"), "rejected timing cache"),
          "another version": (lambda st: st.cache_bytes(version="10.0.1.6"), "rejected timing cache"),
          "corrupt": (lambda st: b"\x00\x01 not a timing cache", "is corrupt or not a TensorRT")}


@pytest.mark.parametrize("case", list(CACHES))
@pytest.mark.parametrize("major", list(GENERATIONS))
def test_unusable_timing_cache_stops_before_the_build(major, case, standin, tmp_path, cli):
    """A cache TensorRT rejects (set_timing_cache False) or cannot read (create_timing_cache None):
    one line, no plan, the cache file as it was, no temporary file left."""
    st = standin(major)
    make, words = CACHES[case]
    cache = tmp_path / "trt.cache"
    cache.write_bytes(make(st))
    before = cache.read_bytes()
    r = cli("engine", EXAMPLE / "model.onnx", "-o", tmp_path / "m.plan", "--shapes", STATIC, "--timing-cache", cache)
    assert r.code == 2 and r.err.count("\n") == 1 and words in r.err and str(cache) in r.err, r.err
    assert ("build",) not in st.calls and cache.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trt.cache"]


@pytest.mark.parametrize("scenario", [{"build_fails": True}, {"lose_cache": True}])
def test_failed_build_or_lost_cache_writes_nothing(scenario, standin, tmp_path):
    from mstransform.core.errors import ModelError

    with pytest.raises(ModelError, match="nothing was written") as e:
        _build(tmp_path, "11", standin, scenario, timing_cache=tmp_path / "trt.cache")
    assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == []


def _every_path(major, standin, folder):
    """The builder down each of its paths; the stand-ins it met."""
    from mstransform.core.errors import MstError
    from mstransform.deploy import trt_engine

    cache = folder / "trt.cache"
    precision = {"fp16": True, "bf16": True} if major == "10" else {}
    cases = [({}, dict(precision, timing_cache=cache)), ({}, dict(timing_cache=cache)),  # new cache, reused
             ({"device": "another GPU"}, {"timing_cache": cache}), ({"build_fails": True}, {}),
             ({"unsupported_ops": frozenset({"Conv"})}, {}), ({}, {"timing_cache": folder / "corrupt.cache"})]
    (folder / "corrupt.cache").write_bytes(b"corrupt")
    for scenario, options in cases:
        st = standin(major, **scenario)
        with contextlib.suppress(MstError):
            trt_engine.build_engine(EXAMPLE / "model.onnx", folder / "m.plan", profile=_profile(), **options)
        yield st


@pytest.mark.parametrize("major", list(GENERATIONS))
def test_every_tensorrt_name_the_builder_touches_exists_in_its_generation(major, standin, tmp_path):
    """Every path of the builder: each name it reads is in its generation's facts (with a recorded
    signature), and it never asks for one that is missing."""
    facts = trt_standin.load_facts(major)
    touched, probed = set(), set()
    for st in _every_path(major, standin, tmp_path):
        touched |= st.touched
        probed |= st.probed
    for owner, attr in sorted(touched):
        if owner == "tensorrt":
            assert attr in facts["module_names"], attr
        elif owner in facts["enums"]:
            assert attr in facts["enums"][owner]["members"], (owner, attr)
        else:
            assert attr in facts["classes"][owner]["used"], (owner, attr)
    assert not probed
    assert {("IBuilderConfig", "set_timing_cache"), ("IBuilderConfig", "create_timing_cache"),
            ("IBuilderConfig", "get_timing_cache"), ("ITimingCache", "serialize"), ("IHostMemory", "nbytes"),
            ("OnnxParser", "get_error"), ("ParserError", "node_name"), ("ParserError", "desc"),
            ("MemoryPoolType", "WORKSPACE")} <= touched
    assert (("BuilderFlag", "FP16") in touched) == (major == "10")


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
