"""The TensorRT engine builder (``deploy.trt_engine``) against stand-ins built from the real 10.x and 11.x
bindings' facts; a real build where TensorRT exists, the install hint where it does not, and the profile's
shapes."""
from __future__ import annotations

import contextlib
import importlib.util
import sys

import onnx
import pytest
from hardened_zoo import hardened  # noqa: F401 -- the fixture
from helpers import EXAMPLE, REPO

import trt_standin

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


# --- the engine builder against stand-ins built from the real bindings' facts -------------------
#
# deploy/data/trt_bindings_10.json and _11.json are read from the real tensorrt-cu12/cu13-bindings
# wheels by scripts/trt_facts.py; tests/support/trt_standin.py builds a tensorrt module from them that can
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


@pytest.mark.parametrize("shapes, words", [
    ("input:1x1x28/8x1x28/64x1x28", "does not fit its dims"),
    ("input:1x3x28x28/8x3x28x28/64x3x28x28", "does not fit its dims"),
], ids=["rank", "fixed-dim"])
def test_shapes_that_do_not_fit_the_network_stop_before_the_build(shapes, words, standin, tmp_path, cli):
    st = standin("10")
    r = cli("engine", EXAMPLE / "model.onnx", "-o", tmp_path / "m.plan", "--shapes", shapes)
    assert r.code == 2 and r.err.count("\n") == 1 and words in r.err and "'input'" in r.err, r.err
    assert ("build",) not in st.calls and list(tmp_path.iterdir()) == []


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


# --- the engine on this machine, and the shapes of its profile --------------------------------

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
