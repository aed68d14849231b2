"""Hostile models: files that are not ONNX, truncated or looping, models the tool cannot harden (no graph
outputs, no sites, an unknown opset, already hardened), external data that is missing, truncated or
outside the model's folder, and a second model that takes other inputs (exit 3, or 2 for a hardened
model, or 5). Each gives one line, its exit code, no new file, inputs intact. Also here: models once
refused that are supported (a Latin-1 file name, opset 7 with IR 3, the ``ai.onnx`` domain)."""
from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from helpers import EXAMPLE, bad_input_cases, check_bad_input, run_cli
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

MODEL, CALIB, TEST = EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", EXAMPLE / "test.npz"


def _export_linear(path):
    """A model without activations: Flatten and one Linear layer, batch axis dynamic."""
    import contextlib
    import io

    import torch
    import torch.nn as nn

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval(), (torch.zeros(2, 1, 28, 28),),
                          str(path), dynamo=False, opset_version=17, input_names=["input"],
                          dynamic_axes={"input": {0: "batch"}})


@pytest.fixture(scope="module")
def bad(tmp_path_factory, example_hardened):
    """The hostile models of the table below, built once; ``folder`` must gain no file from any case."""
    tmp = tmp_path_factory.mktemp("hostile-model")
    (tmp / "notonnx.onnx").write_text("this is not a model\n")
    raw = MODEL.read_bytes()
    (tmp / "trunc.onnx").write_bytes(raw[: len(raw) // 2])
    m = onnx.load(str(MODEL))
    m.opset_import[0].version = 99
    onnx.save(m, str(tmp / "opset99.onnx"))
    _export_linear(tmp / "linear.onnx")
    (tmp / "loop.onnx").symlink_to(tmp / "loop.onnx")
    ext = onnx.load(str(MODEL))
    onnx.save(ext, str(tmp / "ext.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    ext = onnx.load(str(tmp / "ext.onnx"), load_external_data=False)
    for init in ext.graph.initializer:  # point the data outside the folder, as a hostile file would
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "../outside.bin"
    (tmp / "ext.onnx").write_bytes(ext.SerializeToString())
    (tmp / "w.bin").unlink()
    onnx.save(onnx.load(str(MODEL)), str(tmp / "cut.onnx"), save_as_external_data=True, location="cut.onnx.data",
              size_threshold=0)
    data = (tmp / "cut.onnx.data").read_bytes()
    (tmp / "cut.onnx.data").write_bytes(data[: len(data) // 2])
    m = onnx.load(str(MODEL))
    del m.graph.output[:]
    onnx.save(m, str(tmp / "noout.onnx"))
    return SimpleNamespace(tmp=tmp, stats=example_hardened.stats, hard=example_hardened.hardened, out=tmp / "o.onnx",
                           s=tmp / "s.npz", folder=tmp,
                           protected=[MODEL, CALIB, example_hardened.stats, example_hardened.hardened])


# (label, argv of the prepared files, exit code, words in the message)
MODEL_CASES = [
    # not a model
    ("not an ONNX file", lambda f: [f.tmp / "notonnx.onnx", "--stats", f.stats, "-o", f.out], 3, "not an ONNX model"),
    ("model missing", lambda f: [f.tmp / "nope.onnx", "--stats", f.stats, "-o", f.out], 3, "does not exist"),
    ("truncated ONNX", lambda f: ["sites", f.tmp / "trunc.onnx"], 3, "not an ONNX model"),
    ("symlink loop", lambda f: ["sites", f.tmp / "loop.onnx"], 3, "cannot be read"),
    # external data
    ("external data outside the folder", lambda f: ["sites", f.tmp / "ext.onnx"], 3, "outside the model's folder"),
    ("truncated external data", lambda f: [f.tmp / "cut.onnx", "--data", CALIB, "-o", f.out], 3, "truncated"),
    # models the tool cannot harden
    ("unsupported opset", lambda f: ["sites", f.tmp / "opset99.onnx"], 3, "opset 99"),
    ("no activations", lambda f: ["calibrate", f.tmp / "linear.onnx", "--data", CALIB, "-o", f.s], 3, "no sites"),
    ("no graph outputs", lambda f: [f.tmp / "noout.onnx", "--data", CALIB, "-o", f.out], 3, "no graph outputs"),
    ("hardened model hardened again", lambda f: [f.hard, "--stats", f.stats, "--ignore-fingerprint", "-o", f.out], 2,
     "already"),
]


@bad_input_cases(MODEL_CASES)
def test_hostile_model(label, argv, code, words, bad):
    check_bad_input(label, argv(bad), code, words, bad.folder, bad.protected)


def test_missing_external_data(cli, tmp_path):
    m = onnx.load(str(MODEL))
    onnx.save(m, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    (tmp_path / "ext.onnx.data").unlink()
    r = cli("sites", tmp_path / "ext.onnx")
    assert r.code == 3 and "external data" in r.err


def _one_line(r, code, words):
    lines = r.err.strip().splitlines()
    assert r.code == code, (r.code, r.err)
    assert len(lines) == 1 and lines[0].startswith("mstransform: error:") and "Traceback" not in r.err, r.err
    assert words.lower() in lines[0].lower(), lines[0]


def test_one_step_on_a_hardened_model_refuses_before_calibrating(example_hardened, tmp_path):
    assert run_cli(MODEL, "--stats", example_hardened.stats, "-o", tmp_path / "hard.onnx").code == 0
    r = run_cli(tmp_path / "hard.onnx", "--data", CALIB, "-o", tmp_path / "again.onnx")
    _one_line(r, 2, "already holds")
    assert "calibrating" not in r.err


def test_second_model_with_other_inputs_is_refused_before_attacks(tmp_path):
    import torch

    path = tmp_path / "other.onnx"
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), str(path), dynamo=False, input_names=["input"])
    r = run_cli("eval", MODEL, path, "--data", TEST, "-n", "8")
    assert r.code == 5 and "takes inputs" in r.err and "apgd" not in r.err


# -- supported models once refused -----------------------------------------------------------------
def _conv_relu(tmp, name, opset, ir_version, domain="", inits_as_inputs=False):
    rng = np.random.default_rng(0)
    w = nh.from_array((rng.standard_normal((4, 1, 3, 3)) * 0.3).astype(np.float32), "W")
    inputs = [h.make_tensor_value_info("input", T.FLOAT, [1, 1, 28, 28])]
    if inits_as_inputs:
        inputs.append(h.make_tensor_value_info("W", T.FLOAT, [4, 1, 3, 3]))
    nodes = [h.make_node("Conv", ["input", "W"], ["c"], pads=[1, 1, 1, 1], domain=domain),
             h.make_node("Relu", ["c"], ["y"], domain=domain)]
    graph = h.make_graph(nodes, "m", inputs, [h.make_tensor_value_info("y", T.FLOAT, [1, 4, 28, 28])], [w])
    model = h.make_model(graph, opset_imports=[h.make_opsetid(domain, opset)])
    model.ir_version = ir_version
    onnx.save(model, str(tmp / name))
    return tmp / name


@pytest.mark.parametrize("case", ["latin1-name", "opset-7-ir-3", "ai.onnx-domain"])
def test_supported_inputs_harden(tmp_path, case):
    if case == "latin1-name":
        name = os.fsdecode(b"mod\xe9l.onnx")
        shutil.copy(MODEL, tmp_path / name)
        model = tmp_path / name
    elif case == "opset-7-ir-3":
        model = _conv_relu(tmp_path, "op7.onnx", 7, 3, inits_as_inputs=True)
    else:
        model = _conv_relu(tmp_path, "dom.onnx", 13, 7, domain="ai.onnx")
    data = CALIB if case == "latin1-name" else _single(tmp_path)
    out = tmp_path / (os.fsdecode(b"out\xe9.onnx") if case == "latin1-name" else "out.onnx")
    r = run_cli(model, "--data", data, "-o", out)
    assert r.code == 0, r.err
    assert "max |diff| = 0" in r.out
    onnx.checker.check_model(onnx.load(open(out, "rb")), full_check=True)


def _single(tmp):
    np.savez(tmp / "one.npz", input=np.load(CALIB)["input"][:1])  # batch fixed at 1 by the model
    return tmp / "one.npz"
