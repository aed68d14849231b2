"""Outcomes of calibration and of the plan: an empty result is an error, sites of two control-flow bodies
keep their own statistics whatever their inner value names, every sample of a one-shot iterable counts,
torch models refuse another model's statistics, and degenerate base-model outputs on the calibration data
are warned about."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from helpers import EXAMPLE, bad_input_cases, check_bad_input, run_cli

import mstransform as mst
from mstransform.core.errors import StatsError, UsageError
from mstransform.core.options import Selection
from mstransform.core.stats import Stats

MODEL = EXAMPLE / "model.onnx"
CALIB = EXAMPLE / "calib.npz"
PREVIOUS = b"a model written by an earlier run"


# -- two If nodes whose branches reuse the same inner value names ------------------------------------------

def _branch(nodes, name):
    return oh.make_graph(nodes, name, [], [oh.make_tensor_value_info("r", onnx.TensorProto.FLOAT, ["N", 4])])


def _const(name, value):
    return oh.make_node("Constant", [], [name], value=onh.from_array(np.array(value, np.float32), name))


def two_ifs(path):
    """``out = If(flag, Relu(2x), x) + If(flag, Relu(-3x + 5), x)``: in both then-branches the Relu reads a
    value named ``t`` (and the constant is ``k``, the result ``r``)."""
    then_a = _branch([_const("k", 2.0), oh.make_node("Mul", ["x", "k"], ["t"]), oh.make_node("Relu", ["t"], ["r"])],
                     "then_a")
    then_b = _branch([_const("k", -3.0), _const("b", 5.0), oh.make_node("Mul", ["x", "k"], ["m"]),
                      oh.make_node("Add", ["m", "b"], ["t"]), oh.make_node("Relu", ["t"], ["r"])], "then_b")
    nodes = [oh.make_node("If", ["flag"], ["y1"], name="If_a", then_branch=then_a,
                          else_branch=_branch([oh.make_node("Identity", ["x"], ["r"])], "else_a")),
             oh.make_node("If", ["flag"], ["y2"], name="If_b", then_branch=then_b,
                          else_branch=_branch([oh.make_node("Identity", ["x"], ["r"])], "else_b")),
             oh.make_node("Add", ["y1", "y2"], ["out"])]
    graph = oh.make_graph(nodes, "two_ifs", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4]),
                                             oh.make_tensor_value_info("flag", onnx.TensorProto.BOOL, [])],
                          [oh.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["N", 4])])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)  # valid ONNX: each body is its own scope
    onnx.save(model, str(path))
    return path


def if_data(n=64, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, 4)) * [1.0, 2.0, 0.5, 3.0] + [0.5, -1.0, 2.0, 0.0]
    return x.astype(np.float32)


def test_sites_of_two_bodies_with_the_same_inner_names_keep_their_own_statistics(tmp_path):
    path = two_ifs(tmp_path / "ifs.onnx")
    x = if_data()
    np.savez(tmp_path / "data.npz", x=x, flag=np.array(True))
    stats = mst.calibrate(path, tmp_path / "data.npz", batch_size=16, progress=False)
    stats.save(tmp_path / "stats.npz")
    stats = mst.load_stats(tmp_path / "stats.npz")
    a, b = (stats.sites[n] for n in stats.sites)
    assert a.name.startswith("If_a") and b.name.startswith("If_b") and a.feed == b.feed == "t"
    x64 = x.astype(np.float64)
    for site, t in ((a, 2.0 * x64), (b, -3.0 * x64 + 5.0)):  # the Relu inputs, in float64 numpy
        np.testing.assert_allclose(site.moments.mean, t.mean(axis=0), rtol=1e-6, atol=1e-6 * t.std())
        np.testing.assert_allclose(np.sqrt(site.moments.var), t.std(axis=0), rtol=1e-6)
    # hardened: each branch with its own constants (the self-check reads each operator in its own body)
    alpha = 0.5
    report = mst.harden(path, tmp_path / "stats.npz", tmp_path / "h.onnx", alpha=alpha, probe=tmp_path / "data.npz")
    assert len(report.sites) == 2 and report.max_abs_diff == 0
    probe = if_data(256, seed=1)
    (got,) = ort.InferenceSession(str(tmp_path / "h.onnx")).run(None, {"x": probe, "flag": np.array(True)})
    p64, want = probe.astype(np.float64), 0.0
    near = np.zeros(probe.shape, bool)
    for t_train, t in ((2.0 * x64, 2.0 * p64), (-3.0 * x64 + 5.0, -3.0 * p64 + 5.0)):
        center, threshold = t_train.mean(axis=0), alpha * t_train.std(axis=0)
        want = want + np.maximum(np.where(np.abs(t - center) < threshold, center, t), 0.0)
        near |= np.abs(np.abs(t - center) - threshold) < 1e-5 * np.abs(t).max()  # float32 rounding at the edge
    assert near.mean() < 0.05
    np.testing.assert_allclose(got[~near], want[~near], rtol=1e-5, atol=1e-5)


# -- empty results are errors -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory, example_hardened):
    """A folder holding an earlier output and the stats of the shipped example, and of the two-If model:
    one stats file listing every site as unreached, one listing a main-graph site as unreached."""
    d = tmp_path_factory.mktemp("outcomes")
    (d / "out.onnx").write_bytes(PREVIOUS)
    example = mst.load_stats(example_hardened.stats)
    lost = list(example.sites)[3]
    dataclasses.replace(example, sites={n: s for n, s in example.sites.items() if n != lost},
                        unreached=(lost,)).save(d / "main-unreached.npz")
    two_ifs(d / "ifs.onnx")
    np.savez(d / "ifs-data.npz", x=if_data(), flag=np.array(True))
    ifs = mst.calibrate(d / "ifs.onnx", d / "ifs-data.npz", progress=False)
    dataclasses.replace(ifs, sites={}, unreached=tuple(ifs.sites)).save(d / "all-unreached.npz")
    return d


EMPTY = [
    ("calibrate, include matches no site", lambda d, s: ["calibrate", MODEL, "--data", CALIB, "--limit", "64",
                                                         "--include", "nothing-matches", "-o", d / "out.onnx"],
     2, "--include"),
    ("harden, include matches no site", lambda d, s: [MODEL, "--stats", s, "--include", "nothing-matches",
                                                      "-o", d / "out.onnx"], 2, "--include"),
    ("harden, exclude drops every site", lambda d, s: [MODEL, "--stats", s, "--exclude", ".", "-o", d / "out.onnx"],
     2, "--exclude"),
    ("one step, include matches no site", lambda d, s: [MODEL, "--data", CALIB, "--limit", "64", "--include",
                                                        "nothing-matches", "-o", d / "out.onnx"], 2, "--include"),
    ("stats list every site as unreached", lambda d, s: [d / "ifs.onnx", "--stats", d / "all-unreached.npz",
                                                         "-o", d / "out.onnx"], 4, "unreached"),
    ("stats list a main-graph site as unreached", lambda d, s: [MODEL, "--stats", d / "main-unreached.npz",
                                                                "-o", d / "out.onnx"], 4, "main graph"),
]


@bad_input_cases(EMPTY)
def test_an_empty_result_is_an_error_and_leaves_an_earlier_output(files, example_hardened, label, argv, code, words):
    check_bad_input(label, argv(files, example_hardened.stats), code, words, files,
                    [files / "out.onnx", example_hardened.stats, files / "all-unreached.npz"])
    assert (files / "out.onnx").read_bytes() == PREVIOUS


def test_empty_results_from_the_api(files, example_hardened, tmp_path):
    nothing = Selection(include="nothing-matches")
    with pytest.raises(UsageError, match="include"):
        mst.calibrate(MODEL, CALIB, limit=64, selection=nothing, progress=False)
    with pytest.raises(UsageError, match="include"):
        mst.harden(MODEL, example_hardened.stats, tmp_path / "h.onnx", selection=nothing)
    with pytest.raises(UsageError, match="include"):
        mst.calibrate_and_harden(MODEL, CALIB, limit=64, selection=nothing, output=tmp_path / "h.onnx",
                                 stats_output=tmp_path / "s.npz")
    with pytest.raises(StatsError, match="unreached"):
        mst.harden(files / "ifs.onnx", files / "all-unreached.npz", tmp_path / "h.onnx")
    with pytest.raises(StatsError, match="main graph"):
        mst.harden_model(MODEL, files / "main-unreached.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # alpha 0 stays the identity, not an empty result
    done = mst.harden_model(MODEL, example_hardened.stats, alpha=0.0)
    assert done.sites == [] and len(done.skipped) == 7


# -- no sample lost ------------------------------------------------------------------------------------------

def site_values(path, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The main-graph tensors ``names`` of the ONNX model at ``path`` on ``x``, read by ONNX Runtime."""
    m = onnx.load(str(path))
    m.graph.output.extend(oh.make_empty_tensor_value_info(n) for n in names)
    outs = ort.InferenceSession(m.SerializeToString()).run(names, {"input": x})
    return dict(zip(names, outs))


def test_every_batch_of_a_one_shot_iterable_is_calibrated(tmp_path):
    with np.load(CALIB) as z:
        x = z["input"][:64].astype(np.float32) / 255

    def batches():  # a generator: it can be read once
        for i in range(4):
            yield {"input": x[16 * i:16 * (i + 1)]}

    done = mst.calibrate_and_harden(MODEL, batches(), output=tmp_path / "h.onnx", stats_output=tmp_path / "s.npz",
                                    batch_size=16)
    assert done.stats.samples == 64
    values = site_values(MODEL, x, [s.feed for s in done.stats.sites.values()])
    for s in done.stats.sites.values():
        v = np.moveaxis(values[s.feed].astype(np.float64), s.axis, -1).reshape(-1, s.channels)
        np.testing.assert_allclose(s.moments.mean, v.mean(axis=0), rtol=1e-5, atol=1e-6 * v.std())
        np.testing.assert_allclose(s.moments.var, v.var(axis=0), rtol=1e-4, atol=1e-6 * v.var())
    assert done.report.max_abs_diff == 0  # the probe: real samples, the first ones calibration read


def test_one_step_reads_the_model_once_and_checks_its_outputs_once(tmp_path, monkeypatch):
    """calibrate_and_harden loads the model once and hands the loaded model on to the hardening, whose
    outputs it checked itself: one scan for the files the model references, one load, one output check."""
    from mstransform.tools import arguments

    reads, checks = [], []
    load, check = onnx.load, arguments.check_outputs
    monkeypatch.setattr(onnx, "load", lambda f, *a, **k: reads.append(str(f)) or load(f, *a, **k))
    monkeypatch.setattr(arguments, "check_outputs", lambda *a, **k: checks.append(a) or check(*a, **k))
    arguments._references_of.cache_clear()  # the scan is kept per version of the file
    mst.calibrate_and_harden(MODEL, CALIB, limit=64, output=tmp_path / "h.onnx", stats_output=tmp_path / "s.npz")
    assert reads.count(str(MODEL)) == 2 and len(checks) == 1


# -- torch models and another model's statistics ---------------------------------------------------------------

def convnet(width: int) -> nn.Module:
    torch.manual_seed(width)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


def test_harden_torch_refuses_another_models_stats():
    x = np.random.default_rng(0).standard_normal((32, 3, 6, 6)).astype(np.float32)
    stats = mst.calibrate(convnet(8), x, batch_size=16, progress=False)
    other_arch = nn.Sequential(nn.Flatten(), nn.Linear(108, 10), nn.ReLU(), nn.Linear(10, 7), nn.ReLU()).eval()
    for label, model in (("same architecture, other widths", convnet(12)), ("another architecture", other_arch)):
        with pytest.raises(StatsError) as err:
            mst.harden_torch(model, stats, alpha=0.2)
        assert "\n" not in str(err.value), label
    exported = torch.export.export(convnet(12), (torch.zeros(2, 3, 6, 6),))
    with pytest.raises(StatsError, match="channels"):
        mst.harden_torch(exported, stats, alpha=0.2)
    with pytest.raises(UsageError, match="example"):  # no shapes to check against: asked for, not guessed
        mst.harden_torch(convnet(12), dataclasses.replace(stats, inputs=()), alpha=0.2)
    # its own stats still harden it, with or without an example batch
    for example in (None, (torch.from_numpy(x[:2]),)):
        hardened = mst.harden_torch(convnet(8), stats, alpha=0.2, example=example)
        with torch.no_grad():
            assert hardened(torch.from_numpy(x[:4])).shape == (4, 5)


# -- degenerate outputs of the base model on the calibration data -------------------------------------------------

def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if "warning" in line]


def test_mis_scaled_calibration_data_is_warned_about(tmp_path):
    with np.load(CALIB) as z:
        np.savez(tmp_path / "float255.npz", input=z["input"][:512].astype(np.float32))  # 0..255; the model wants 0..1
    r = run_cli("calibrate", MODEL, "--data", tmp_path / "float255.npz", "-o", tmp_path / "s.npz")
    assert r.code == 0, r.err
    (line,) = warnings_in(r.err)
    assert line.startswith("mstransform: warning: ") and "--scale" in line and "--mean/--std" in line, line
    r = run_cli("calibrate", MODEL, "--data", CALIB, "--limit", "512", "-o", tmp_path / "s.npz")
    assert r.code == 0 and warnings_in(r.err) == [], r.err
    heard = []
    mst.calibrate(MODEL, tmp_path / "float255.npz", progress=False, log=heard.append)
    assert len(warnings_in("\n".join(heard))) == 1


def test_constant_outputs_are_warned_about(tmp_path):
    """A model whose output does not depend on its input (rank 3: no class scores) on any data."""
    nodes = [oh.make_node("Relu", ["x"], ["r"]), oh.make_node("Mul", ["r", "zero"], ["z"]),
             oh.make_node("Add", ["z", "bias"], ["s"]), oh.make_node("Reshape", ["s", "shape"], ["out"])]
    graph = oh.make_graph(nodes, "constant", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
                          [oh.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["N", 2, 2])],
                          [onh.from_array(np.zeros(4, np.float32), "zero"),
                           onh.from_array(np.arange(4, dtype=np.float32), "bias"),
                           onh.from_array(np.array([-1, 2, 2], np.int64), "shape")])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), str(tmp_path / "c.onnx"))
    x = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    heard = []
    mst.calibrate(tmp_path / "c.onnx", {"x": x}, progress=False, log=heard.append)
    (line,) = warnings_in("\n".join(heard))
    assert line.startswith("mstransform: warning: ") and "same" in line and "--scale" in line, line
