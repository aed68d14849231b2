"""Statistics against numpy over the whole data set, for any batching; exact shard merging; the file format."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import exported, ingraph_tolerance, numpy_moments, random_inputs

import mstransform as mst
from mstransform.core.errors import StatsError
from mstransform.core.moments import Moments
from mstransform.core.stats import Stats


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


def test_moments_merge_is_exact_against_numpy():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((101, 3, 4)) * np.array([1e-3, 1.0, 1e3])[None, :, None] + 1e4
    parts = [data[:1], data[1:40], data[40:]]
    m = Moments.empty(3)
    for p in parts:
        m = m.merge(numpy_moments(p, 1, shift=p[0].mean(axis=1)))
    np.testing.assert_allclose(m.mean, data.mean(axis=(0, 2)), rtol=1e-13)
    np.testing.assert_allclose(m.var, data.var(axis=(0, 2)), rtol=1e-9)


def test_moments_of_different_channel_counts_do_not_merge():
    a = Moments(4, np.zeros(3), np.ones(3))
    with pytest.raises(StatsError, match="3 and 2 channels") as e:
        a.merge(Moments(4, np.zeros(2), np.ones(2)))
    assert "\n" not in str(e.value)


def test_stats_file_round_trip_and_schema(export_dir, tmp_path):
    path = exported("silu", "legacy-17-folded", export_dir)
    stats = mst.calibrate(path, {"input": random_inputs("silu", 8)}, progress=False)
    f = tmp_path / "s.npz"
    stats.save(f)
    with np.load(f, allow_pickle=False) as z:
        assert str(z["format"]) == "mstransform.stats" and int(z["version"]) == 2
        assert list(z["site_names"]) == list(stats.sites)
        # one calibration sample as fed: batch axis sized 1, the model's own input type
        assert json.loads(str(z["inputs"])) == [{"name": "input", "dtype": "float32",
                                                  "shape": [1, *random_inputs("silu", 1).shape[1:]], "batch_axis": 0}]
        v1 = {k: z[k] for k in z.files if k != "inputs"}
    again = Stats.load(f)
    assert again.sha256() == stats.sha256() and again.fingerprint == stats.fingerprint
    v1["version"] = np.array(1, dtype=np.int64)  # a version-1 file (no inputs record) still loads
    old = Stats.from_arrays(v1)
    assert old.inputs == () and list(old.sites) == list(stats.sites)


def test_pickled_stats_are_refused(tmp_path):
    f = tmp_path / "evil.npz"
    np.savez(f, format=np.array("mstransform.stats"), payload=np.array([{"a": 1}], dtype=object))
    with pytest.raises(StatsError, match="object arrays"):
        Stats.load(f)


def test_torchrun_ranks_merge_into_one_pass(tmp_path):
    """`mstransform calibrate` under torchrun: two gloo ranks, each calibrating every other batch, gathered on
    rank 0: the same statistics as one process, within twice the in-graph bound (the batches are the same, the
    shifts differ)."""
    import subprocess
    import sys

    from helpers import EXAMPLE

    model, data, out = EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", tmp_path / "ranks.npz"
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous (port 0 is not accepted there)
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("PYTEST", "OMP"))}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port,
                        "-m", "mstransform", "calibrate", str(model), "--data", str(data), "-o", str(out), "--limit",
                        "256", "--batch-size", "32"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("wrote") == 1  # rank 0 alone writes and says so
    merged, one = Stats.load(out), mst.calibrate(model, data, limit=256, batch_size=32, progress=False)
    assert merged.samples == one.samples == 256
    for name, s in one.sites.items():
        a, b = s.moments, merged.sites[name].moments
        mean_f, var_f = ingraph_tolerance((32, a.channels, a.count // 256), 1, 32)
        assert a.count == b.count
        assert np.all(np.abs(a.mean - b.mean) <= 2 * mean_f * np.sqrt(a.var) + 1e-300)
        assert np.all(np.abs(a.var - b.var) <= 2 * var_f * a.var + 1e-300)
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
