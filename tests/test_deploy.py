"""Deployment: the static TensorRT check on every hardened test model, the engine builder, the runtime."""
from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from conftest import EXAMPLE, EXPORTS, exported, random_inputs

import mstransform as mst
import zoo
from mstransform.runtime.trt_check import check_trt, versions
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
    from mstransform.runtime.trt_engine import build_engine, parse_shapes

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
    from mstransform.runtime.trt_engine import parse_shapes

    p = parse_shapes("1/8/64", {"input": (None, 3, 224, 224)})
    assert p.shapes["input"] == ((1, 3, 224, 224), (8, 3, 224, 224), (64, 3, 224, 224))
    p = parse_shapes("x:1x3/2x3/4x3", {})
    assert p.shapes["x"] == ((1, 3), (2, 3), (4, 3))
    with pytest.raises(UsageError):
        parse_shapes("8/1/64", {"input": (None, 3)})


class _FakeTensorRT:
    """Just enough of the documented tensorrt Python API to drive build_engine without a GPU; records calls."""

    def __init__(self, version: str):
        import types

        self.__version__, self.calls = version, []
        fake = self
        flags = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}  # 11.x keeps the enum; weak typing is gone
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(**flags)
        builder_flags = ["FP16", "BF16"] if int(version.split(".")[0]) < 11 else []
        self.BuilderFlag = types.SimpleNamespace(**{k: k for k in builder_flags})
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, level: None})

        class Tensor:
            name, shape = "input", (-1, 1, 28, 28)

        class Network:
            num_inputs = 1

            def get_input(self, i):
                return Tensor()

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("pool", pool, size))

            def set_flag(self, flag):
                fake.calls.append(("flag", flag))

            def add_optimization_profile(self, p):
                fake.calls.append(("profile", p.shapes))

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self.shapes[name] = (lo, opt, hi)

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"plan-bytes"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.calls.append(("parse", path))
                return True

        self.Builder, self.OnnxParser = Builder, OnnxParser


@pytest.mark.parametrize("version", ["10.13.0", "11.4.1"])
def test_engine_follows_the_tensorrt_api_generation(version, monkeypatch, tmp_path):
    """TensorRT 10: weakly typed network, precision by builder flag. TensorRT 11: strongly typed
    network (the FP16/BF16 flags were removed), and --fp16 is refused with the way forward."""
    from mstransform.core.errors import UsageError
    from mstransform.runtime import trt_engine

    fake = _FakeTensorRT(version)
    monkeypatch.setattr(trt_engine, "import_tensorrt", lambda: fake)
    model = EXAMPLE / "model.onnx"
    profile = trt_engine.parse_shapes("1/8/64", {"input": (None, 1, 28, 28)})
    if version.startswith("10"):
        trt_engine.build_engine(model, tmp_path / "m.plan", fp16=True, profile=profile)
        assert ("network", 0) in fake.calls and ("flag", "FP16") in fake.calls
    else:
        with pytest.raises(UsageError, match="strongly typed"):
            trt_engine.build_engine(model, tmp_path / "m.plan", fp16=True, profile=profile)
        assert not fake.calls and not (tmp_path / "m.plan").exists()
        trt_engine.build_engine(model, tmp_path / "m.plan", profile=profile)
        assert ("network", 1 << 1) in fake.calls and not [c for c in fake.calls if c[0] == "flag"]
    assert ("profile", {"input": ((1, 1, 28, 28), (8, 1, 28, 28), (64, 1, 28, 28))}) in fake.calls
    assert (tmp_path / "m.plan").read_bytes() == b"plan-bytes"


def test_check_trt_knows_what_tensorrt_11_removed(hardened, cli):
    """11.x: no FP16 flag (an FP32 model stays FP32), INT8 only through Q/DQ; the stand-in table is named."""
    path = hardened("resnet", "legacy-17-folded")
    findings = [str(f) for f in check_trt(load_model(path), "11", fp16=True)]
    assert any("no FP16 builder flag" in f for f in findings)
    assert any("10.1's stands in" in f for f in findings)
    assert not [f for f in check_trt(load_model(path), "11") if f.level == "error"]  # fp32 engine: fine
    assert not any("FP16 builder flag" in str(f) for f in check_trt(load_model(path), "10.1", fp16=True))
    r = cli("check-trt", path, "--trt-version", "11", "--fp16")
    assert r.code == 9 and "strongly typed" in r.err and r.err.count("\n") == 1
