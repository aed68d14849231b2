"""Calibration (``runtime.calibrate``) and its outcomes: the statistics equal float64 numpy over the whole data
set within the in-graph bound, for any batching, shift schedule or sharding, with max |x| only when asked; an
empty result is an error, sites of two control-flow bodies keep their own statistics whatever their inner value
names, every sample of a one-shot iterable counts, and degenerate base-model outputs on the calibration data
are warned about."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnxruntime as ort
import pytest
from helpers import EXAMPLE, bad_input_cases, check_bad_input, exported, ingraph_tolerance, random_inputs, run_cli

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


# -- statistics against float64 numpy over the whole data set, for any batching and sharding ---------------

def site_tensors(path, x):
    """Every site tensor over the whole of ``x`` in one run (numpy reference input)."""
    table = mst.find_sites(path)
    m = onnx.load(str(path))
    feeds = list(dict.fromkeys(s.feed_name for s in table))
    m.graph.output.extend(onnx.ValueInfoProto(name=f) for f in feeds)
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = s.run(feeds, {"input": x})
    return {site.name: outs[feeds.index(site.feed_name)] for site in table}


def assert_within_bound(moments, t: np.ndarray, axis: int, batch: int):
    """``moments`` against float64 numpy on the site tensor ``t``, within the derived in-graph bound."""
    axes = tuple(i for i in range(t.ndim) if i != axis)
    t = t.astype(np.float64)
    mean_f, var_f = ingraph_tolerance(t.shape, axis, batch)
    sigma, var = t.std(axis=axes), t.var(axis=axes)
    assert np.all(np.abs(moments.mean - t.mean(axis=axes)) <= mean_f * sigma + 1e-300)
    assert np.all(np.abs(moments.var - var) <= var_f * var + 1e-300)
    np.testing.assert_array_equal(moments.absmax, np.abs(t).max(axis=axes))  # max and min are exact
    assert moments.count == t.size // t.shape[axis]


@pytest.mark.parametrize("batch_size", [1, 7, 16, 50])
def test_stats_equal_numpy_over_whole_dataset(batch_size, export_dir):
    path = exported("resnet", "legacy-17-bn", export_dir)
    x = random_inputs("resnet", 50, seed=2) * 1.5 + 0.3  # 50 = uneven last batch for 7 and 16
    stats = mst.calibrate(path, {"input": x}, batch_size=batch_size, progress=False, extent=True)
    assert stats.samples == 50
    for name, s in stats.sites.items():
        # the reference runs the site tensors batch by batch too: ONNX Runtime's float32 features
        # themselves move by ~1e-7 with the batch size, which is not the statistics' error
        t = np.concatenate([site_tensors(path, x[i:i + batch_size])[name] for i in range(0, 50, batch_size)])
        assert_within_bound(s.moments, t, s.axis, batch_size)


@pytest.mark.parametrize("batch_size", [1, 3, 16, 40, 64])
def test_stats_within_bound_on_a_large_mean(batch_size, tmp_path):
    """A ReLU on the graph input, channel means up to 10^4 spreads: the site tensor is the data itself."""
    import contextlib
    import io

    import torch

    path = tmp_path / "relu.onnx"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(torch.nn.ReLU(), (torch.zeros(2, 3, 5, 5),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((40, 3, 5, 5)) * [[[[1e-2]], [[1.0]], [[30.0]]]] + [[[[100.0]], [[-2]], [[0]]]]).astype(np.float32)
    stats = mst.calibrate(path, {"input": x}, batch_size=batch_size, progress=False, extent=True)
    (s,) = stats.sites.values()
    assert_within_bound(s.moments, x, 1, min(batch_size, 40))


@pytest.mark.parametrize("batch_size", [1, 16, 40])
def test_token_stats_within_bound_on_a_large_mean(batch_size, tmp_path):
    """(N, T, C) tensors reduce over batch and tokens (the product-then-sum path): means up to 10^4 spreads."""
    import contextlib
    import io

    import torch

    path = tmp_path / "gelu.onnx"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(torch.nn.GELU(), (torch.zeros(2, 9, 3),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((40, 9, 3)) * [1e-2, 1.0, 30.0] + [100.0, -2.0, 0.0]).astype(np.float32)
    stats = mst.calibrate(path, {"input": x}, batch_size=batch_size, progress=False, extent=True)
    (s,) = stats.sites.values()
    assert s.axis == 2
    assert_within_bound(s.moments, x, 2, min(batch_size, 40))


def test_shift_follows_the_running_mean_so_batches_are_summed_once(tmp_path, monkeypatch):
    """Batch means alternate between +a and -a (a = 0.36 spreads, every sample exactly so): a shift left at one
    batch's mean is 2a from the next (offset ratio 0.34 > 1/4: every batch summed twice); the mean so far is at
    most 4a/3 away from the third batch on (ratio <= 0.19), so only the second batch is summed twice."""
    import contextlib
    import io

    import torch

    from mstransform.runtime import calibrate as cal

    path = tmp_path / "gelu.onnx"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(torch.nn.GELU(), (torch.zeros(2, 9, 3),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    rng = np.random.default_rng(7)
    z = rng.standard_normal((80, 9, 3))
    z = (z - z.mean(axis=1, keepdims=True)) / z.std(axis=1, keepdims=True)  # each sample: mean 0, spread 1
    sign = np.repeat([1.0, -1.0] * 5, 8)[:, None, None]  # 10 batches of 8
    x = (z + 0.36 * sign + 5.0).astype(np.float32)
    runs = []
    sums = cal.ReducedRun._sums
    monkeypatch.setattr(cal.ReducedRun, "_sums", lambda self, inputs, start: runs.append(start) or sums(self, inputs, start))
    stats = mst.calibrate(path, {"input": x}, batch_size=8, progress=False, extent=True)
    # the probe, ten batches, and one second run of batch 2 (the mean so far is still batch 1's there)
    assert len(runs) == 12, runs
    (s,) = stats.sites.values()
    assert_within_bound(s.moments, x, 2, 8)


def relu_on_input(tmp_path):
    """A ReLU on an NCHW graph input (3 channels, 5x5): the site tensor is the data itself."""
    import contextlib
    import io

    import torch

    path = tmp_path / "relu.onnx"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(torch.nn.ReLU(), (torch.zeros(2, 3, 5, 5),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    return path


def counting_runs(monkeypatch) -> tuple[list, list]:
    """Record each run's first sample and each session built by the calibration's ReducedRun."""
    from mstransform.runtime import calibrate as cal

    runs, runners = [], []
    sums, init = cal.ReducedRun._sums, cal.ReducedRun.__init__
    monkeypatch.setattr(cal.ReducedRun, "_sums", lambda self, inputs, start: runs.append(start) or sums(self, inputs, start))
    monkeypatch.setattr(cal.ReducedRun, "__init__", lambda self, *a, **k: runners.append(self) or init(self, *a, **k))
    return runs, runners


def test_nchw_shifts_are_fixed_after_the_first_batch_and_a_far_batch_unfixes_its_site(tmp_path, monkeypatch):
    """On the CPU provider an NCHW site's shift is fixed in the graph at the first batch's mean (a second session).
    Batch 2 moves channel 1 by 4 spreads: offset ratio 16/17 > 1/4, so the site is rebuilt with a fed shift
    (a third session) and batch 2 summed again at its own mean; batch 3, back at -2, lies 1.33 spreads from the
    mean so far (ratio 0.64) and is summed again with the fed shift, with no new session."""
    path = relu_on_input(tmp_path)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((32, 3, 5, 5))
    x = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / x.std(axis=(0, 2, 3), keepdims=True)
    x = x * [[[[1e-2]], [[1.0]], [[30.0]]]] + [[[[100.0]], [[-2]], [[0]]]]
    x[16:24, 1] += 4.0
    x = x.astype(np.float32)
    runs, runners = counting_runs(monkeypatch)
    stats = mst.calibrate(path, {"input": x}, batch_size=8, progress=False, extent=True)
    (run,) = runners
    assert run.builds == 3 and run.fixed == [None]
    assert runs == [0, 0, 8, 16, 16, 24, 24], runs  # probe, batches 0 and 1, batch 2 twice, batch 3 twice
    (s,) = stats.sites.values()
    assert_within_bound(s.moments, x, 1, 8)


def test_nchw_sites_reduce_in_the_pooled_form_once_fixed(export_dir, monkeypatch):
    """Every NCHW site of an exported ResNet takes a fixed shift after the first batch, and its statistics keep
    the bound of the fed-shift form, batch by batch, against float64 numpy."""
    path = exported("resnet", "legacy-17-bn", export_dir)
    x = random_inputs("resnet", 24, seed=3)
    runs, runners = counting_runs(monkeypatch)
    stats = mst.calibrate(path, {"input": x}, batch_size=6, progress=False)
    (run,) = runners
    assert run.builds == 2 and all(f is not None for f in run.fixed)
    assert all(r.shift is None and r.mean_of is not None for r in run.reductions)
    ref = site_tensors(path, x)  # one run: every batch of 6 was summed once after the probe
    assert runs == [0, 0, 6, 12, 18]
    for name, s in stats.sites.items():
        t = ref[name].astype(np.float64)
        axes = (0, 2, 3)
        mean_f, var_f = ingraph_tolerance(t.shape, 1, 6)
        assert np.all(np.abs(s.moments.mean - t.mean(axis=axes)) <= mean_f * t.std(axis=axes) + 1e-300)
        assert np.all(np.abs(s.moments.var - t.var(axis=axes)) <= var_f * t.var(axis=axes) + 1e-300)


def test_token_stats_reduce_over_batch_and_tokens(export_dir):
    path = exported("vit", "dynamo-20-folded", export_dir)
    x = random_inputs("vit", 20, seed=4)
    stats = mst.calibrate(path, {"input": x}, batch_size=6, progress=False, extent=True)
    ref = site_tensors(path, x)
    for name, s in stats.sites.items():
        assert s.axis == 2
        assert_within_bound(s.moments, ref[name], 2, 6)


def test_merged_shards_equal_one_pass(export_dir, tmp_path):
    path = exported("resnet", "legacy-17-folded", export_dir)
    x = random_inputs("resnet", 45, seed=9)
    whole = mst.calibrate(path, {"input": x}, batch_size=10, progress=False)
    shards = [mst.calibrate(path, {"input": x}, batch_size=10, progress=False, shard=(i, 3)) for i in range(3)]
    for i, s in enumerate(shards):
        s.save(tmp_path / f"s{i}.npz")
    merged = Stats.load(tmp_path / "s0.npz").merge(Stats.load(tmp_path / "s1.npz")).merge(Stats.load(tmp_path / "s2.npz"))
    assert merged.samples == whole.samples == 45
    shapes = {k: v.shape for k, v in site_tensors(path, x[:1]).items()}
    for name in whole.sites:
        a, b = whole.sites[name].moments, merged.sites[name].moments
        assert a.count == b.count
        # each side is within the bound of the truth, so they are within twice of each other
        mean_f, var_f = ingraph_tolerance(shapes[name], whole.sites[name].axis, 10)
        assert np.all(np.abs(b.mean - a.mean) <= 2 * mean_f * np.sqrt(a.var) + 1e-300)
        assert np.all(np.abs(b.var - a.var) <= 2 * var_f * a.var + 1e-300)
        np.testing.assert_array_equal(a.absmax, b.absmax)


def test_extent_is_measured_only_when_asked_and_forged_mode_says_so(tmp_path, export_dir):
    """Max |x| costs two more reads of every site tensor, so plain MeanSparse calibration skips it."""
    path = exported("resnet", "legacy-17-folded", export_dir)
    x = random_inputs("resnet", 16)
    plain = mst.calibrate(path, {"input": x}, batch_size=8, progress=False)
    full = mst.calibrate(path, {"input": x}, batch_size=8, progress=False, extent=True)
    for name, s in plain.sites.items():
        assert s.moments.absmax is None
        np.testing.assert_array_equal(s.moments.mean, full.sites[name].moments.mean)  # the same sums
        np.testing.assert_array_equal(s.moments.var, full.sites[name].moments.var)
        assert full.sites[name].moments.absmax is not None
    plain.save(tmp_path / "s.npz")
    again = Stats.load(tmp_path / "s.npz")
    assert all(s.moments.absmax is None for s in again.sites.values())
    assert "|x|max" in again.format() and mst.harden_model(path, again, alpha=0.2).sites
    with pytest.raises(StatsError, match="no max \\|x\\|"):
        mst.harden_model(path, again, alpha=0.2, mode="forged")
    linear = mst.calibrate(path, {"input": x}, batch_size=8, progress=False, placement="linear-inputs")
    assert all(s.moments.absmax is not None for s in linear.sites.values())
