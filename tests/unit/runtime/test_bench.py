"""`mstransform bench` / `mst.bench`: the report's structure, the interleaving, and the ratio computed
from the medians it reports. No assertion depends on how fast this machine is: timings come from a
simulated clock where a number is asserted, and real runs are checked for structure only."""
from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mstransform as mst
from mstransform.core.errors import DataError, ModelError, UsageError
from mstransform.runtime.bench import bench_sessions, random_feed
from mstransform.runtime.inputs import InputSpec

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "fashion_mnist"
SPEC = [InputSpec("input", np.dtype(np.float32), (None, 1, 28, 28), 0)]


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class FakeSession:
    """A session whose every call takes ``costs[i % len(costs)]`` seconds of the simulated clock,
    scaled by the batch size; it records the order of calls."""

    def __init__(self, name, costs, clock, log):
        self.name, self.costs, self.clock, self.log, self.calls = name, costs, clock, log, 0

    def run(self, names, feed):
        batch = feed["input"].shape[0]
        self.clock.t += self.costs[self.calls % len(self.costs)] * batch
        self.calls += 1
        self.log.append((self.name, batch))
        return [np.zeros((batch, 10), np.float32)]


def test_ratio_and_spread_come_from_the_reported_medians():
    clock, log = Clock(), []
    base = FakeSession("base", [1.0, 2.0, 3.0], clock, log)
    hard = FakeSession("hardened", [5.0], clock, log)
    rows = bench_sessions(base, hard, SPEC, SPEC, batch_sizes=[1, 4], warmup=2, rounds=3, runs=3, clock=clock)
    assert [r.batch for r in rows] == [1, 4]
    for r in rows:
        b = r.batch
        # base: costs cycle 1,2,3 per call (warm-up calls included in the cycle); median of all timed calls
        assert r.base.median_ms == pytest.approx(1e3 * 2.0 * b)
        assert r.hardened.median_ms == pytest.approx(1e3 * 5.0 * b)
        assert r.ratio == pytest.approx(r.hardened.median_ms / r.base.median_ms)
        assert r.ratio == pytest.approx(2.5)
        assert r.base.calls == r.hardened.calls == 9
        assert r.base.q1_ms <= r.base.median_ms <= r.base.q3_ms
        assert r.ratio_low <= r.ratio <= r.ratio_high


def test_rounds_interleave_and_alternate_order():
    clock, log = Clock(), []
    base, hard = FakeSession("base", [1.0], clock, log), FakeSession("hardened", [1.0], clock, log)
    bench_sessions(base, hard, SPEC, SPEC, batch_sizes=[2], warmup=1, rounds=4, runs=2, clock=clock)
    timed = [name for name, _ in log[2:]]  # after one warm-up call each
    blocks = [timed[i:i + 2] for i in range(0, len(timed), 2)]
    assert all(len(set(b)) == 1 for b in blocks)
    assert [b[0] for b in blocks] == ["base", "hardened", "hardened", "base", "base", "hardened", "hardened", "base"]
    assert {batch for _, batch in log} == {2}


def test_the_progress_bar_is_closed_when_a_run_fails(monkeypatch):
    """A session that raises mid-timing leaves no progress bar open: the bar is closed, the error goes on."""
    import tqdm.auto

    bars = []

    class Bar:
        def __init__(self, *args, **kwargs):
            self.closed = False
            bars.append(self)

        def update(self, n=1):
            pass

        def close(self):
            self.closed = True

    class Failing(FakeSession):
        def run(self, names, feed):
            if self.calls == 3:
                raise RuntimeError("the runtime failed")
            return super().run(names, feed)

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    clock, log = Clock(), []
    with pytest.raises(RuntimeError, match="the runtime failed"):
        bench_sessions(FakeSession("base", [1.0], clock, log), Failing("hardened", [1.0], clock, log), SPEC, SPEC,
                       batch_sizes=[1], warmup=1, rounds=2, runs=2, clock=clock, progress=True)
    assert [b.closed for b in bars] == [True]


def test_random_feed_follows_the_inputs():
    specs = [InputSpec("x", np.dtype(np.float32), (None, 3, 8, 8), 0),
             InputSpec("ids", np.dtype(np.int64), (None, 5), 0),
             InputSpec("sr", np.dtype(np.int64), (), None)]
    feed = random_feed(specs, 3)
    assert feed["x"].shape == (3, 3, 8, 8) and feed["x"].dtype == np.float32
    assert feed["ids"].shape == (3, 5) and not feed["ids"].any()
    assert feed["sr"].shape == ()
    with pytest.raises(ModelError, match="dynamic dim at axis 2"):
        random_feed([InputSpec("x", np.dtype(np.float32), (None, 3, None), 0)], 1)
    with pytest.raises(UsageError, match="fixes its batch at 4"):
        random_feed([InputSpec("x", np.dtype(np.float32), (4, 3), 0)], 2)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    stats = mst.calibrate(EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", limit=64, progress=False)
    mst.harden(EXAMPLE / "model.onnx", stats, out / "h.onnx", alpha=0.2, verify=False)
    return EXAMPLE / "model.onnx", out / "h.onnx"


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_api_report_structure(pair, runtime):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    report = mst.bench(*pair, batch_sizes=[1, 3], runtime=runtime, threads=1, warmup=1, rounds=2, runs=2)
    assert report.runtime.startswith("ONNX Runtime" if runtime == "onnxruntime" else "OpenVINO")
    assert [r.batch for r in report.rows] == [1, 3]
    for r in report.rows:
        assert r.ratio == pytest.approx(r.hardened.median_ms / r.base.median_ms, rel=1e-12)
        assert r.base.calls == r.hardened.calls == 4
    data = report.to_dict()
    assert data["rows"][0]["base"]["median_ms"] == report.rows[0].base.median_ms
    assert "hardened/base" in report.format()


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mstransform", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def test_cli_table_and_json(pair, tmp_path):
    out = tmp_path / "b.json"
    r = _cli("bench", *pair, "--batch-sizes", "1,2", "--warmup", "1", "--rounds", "2", "--runs", "1",
             "--threads", "1", "--json", out)
    assert r.returncode == 0, r.stderr
    assert "hardened/base" in r.stdout and f"wrote {out}" in r.stdout
    report = json.loads(out.read_text())["reports"][0]
    for row in report["rows"]:
        assert row["ratio"] == pytest.approx(row["hardened"]["median_ms"] / row["base"]["median_ms"], rel=1e-12)
        printed = next(line for line in r.stdout.splitlines() if line.split()[:1] == [str(row["batch"])])
        assert f"{row['ratio']:.3f}x" in printed


@pytest.mark.parametrize("args, code, words", [
    (["--batch-sizes", "0"], 2, "--batch-sizes"),
    (["--batch-sizes", "1.5"], 2, "--batch-sizes"),
    (["--rounds", "0"], 2, "--rounds"),
    (["--runtime", "tensorrt"], 2, "runtime"),
    (["--runtime", "onnxruntime,foo"], 2, "runtime"),
    (["--runtime", "onnxruntime,openvino", "--device", "cuda"], 2, "--device"),
])
def test_cli_bad_options_are_one_line(pair, args, code, words):
    r = _cli("bench", *pair, *args)
    assert r.returncode == code, r.stderr
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stdout == ""  # refused before any runtime ran


def test_models_with_other_inputs_are_refused(pair, tmp_path):
    other = ROOT / "examples" / "fashion_mnist" / "model.onnx"
    import onnx

    m = onnx.load(other)
    m.graph.input[0].name = "pixels"
    for node in m.graph.node:
        node.input[:] = ["pixels" if i == "input" else i for i in node.input]
    onnx.save(m, tmp_path / "renamed.onnx")
    r = _cli("bench", pair[0], tmp_path / "renamed.onnx")
    assert r.returncode == 3 and "different inputs" in r.stderr


# -- the runtimes come from one table: a toy runtime added there alone runs `run` and `bench` --

class Counting:
    """A toy runtime: ONNX Runtime's session under another name, counting its runs."""

    runtime, why = "Counting", "a toy runtime"

    def __init__(self, inner, fail: bool = False):
        self.inner, self.calls, self.fail = inner, 0, fail
        self.get_inputs, self.get_outputs, self.get_providers = inner.get_inputs, inner.get_outputs, inner.get_providers

    def run(self, names, feed):
        self.calls += 1
        if self.fail:
            raise RuntimeError("out of toy memory\n  at the first call")
        return self.inner.run(names, feed)

    def describe(self):
        return "Counting on CPU"


def test_the_runtime_choice_and_the_table_name_the_same_runtimes():
    from mstransform.core.options import Runtime
    from mstransform.runtime import session

    assert [r.value for r in Runtime] == list(session.RUNTIMES)
    assert isinstance(session.open_session(EXAMPLE / "model.onnx"), session.Session)
    with pytest.raises(UsageError, match=re.escape(f"must be one of {', '.join(session.RUNTIMES)}, not 'tensorrt'")):
        mst.run(EXAMPLE / "model.onnx", EXAMPLE / "test.npz", runtime="tensorrt")


def test_a_runtime_added_to_the_table_alone_runs_run_and_bench(pair, monkeypatch):
    from mstransform.core.options import Device
    from mstransform.runtime import session

    opened, fail = [], []

    def open_counting(model, settings):
        inner = session.make_session(model, providers=settings.providers, threads=settings.threads)
        opened.append(Counting(inner, fail=bool(fail)))
        return opened[-1]

    monkeypatch.setitem(session.RUNTIMES, "counting",
                        session.Opener("Counting", open_counting, frozenset({Device.CPU}), where="the CPU"))
    # the public functions check the name against the table itself, and open sessions through it alone
    run, bench = mst.run, mst.bench
    got = run(pair[1], EXAMPLE / "test.npz", runtime="counting", limit=100, batch_size=32)
    ref = mst.run(pair[1], EXAMPLE / "test.npz", limit=100, batch_size=32)
    assert isinstance(opened[0], session.Session) and opened[0].calls == 4  # 100 samples in batches of 32
    assert got.runtime == "Counting on CPU" and got.providers_note == "a toy runtime"
    assert list(got.outputs) == list(ref.outputs) and got.accuracy == ref.accuracy
    for name, values in ref.outputs.items():
        np.testing.assert_array_equal(got.outputs[name], values)
    np.testing.assert_array_equal(got.predictions, ref.predictions)
    heard = []
    report = bench(*pair, runtime="counting", batch_sizes=[2], warmup=1, rounds=2, runs=1, progress=False,
                   log=heard.append)
    assert report.runtime == "Counting on CPU (a toy runtime)" and [s.calls for s in opened[1:]] == [3, 3]
    assert len(heard) == 1 and heard[0].startswith("batch 2: base ")  # one line per batch size timed
    with pytest.raises(UsageError, match="cuda does not apply to Counting, which runs on the CPU here"):
        run(pair[1], EXAMPLE / "test.npz", runtime="counting", device="cuda")
    fail.append(True)  # a runtime's failure is one line that names it
    with pytest.raises(DataError, match="^inference, batch starting at sample 0: Counting failed: out of toy memory "
                                        "at the first call$"):
        run(pair[1], EXAMPLE / "test.npz", runtime="counting", limit=4)
