"""``bench``: the latency cost of hardening, the base and hardened models side by side on one runtime.

The timing itself is :mod:`mstransform.runtime.bench` (warm-up, interleaved rounds, medians and
quartiles); this function opens both models as ``run`` opens one (``runtime.session.open_session``)
and returns the report.
"""
from __future__ import annotations

from pathlib import Path

from mstransform.core.options import Device, Runtime
from mstransform.passes.graph.load import load_model
from mstransform.runtime.bench import BenchReport, bench_sessions
from mstransform.runtime.inputs import input_specs
from mstransform.runtime.session import check_runtime_choice, describe, open_session
from mstransform.tools.arguments import checked

__all__ = ["BenchReport", "bench"]


@checked
def bench(base: str | Path, hardened: str | Path, *, batch_sizes: tuple[int, ...] | list[int] = (1,),
          runtime: Runtime | str = Runtime.ONNXRUNTIME, device: Device | str | None = None,
          providers: list[str] | None = None, threads: int | None = None, warmup: int = 5, rounds: int = 10,
          runs: int = 10, seed: int = 0, progress: bool = True, log=None) -> BenchReport:
    """Hardened / base latency of two ONNX models on ``runtime`` (ONNX Runtime or OpenVINO's CPU plugin).

    ``device`` (or ``providers``) picks ONNX Runtime's provider, as ``run`` does; ``threads`` sets the
    runtime's intra-op threads (None: the runtime's default). For each of ``batch_sizes``, both models get
    the same random batch, ``warmup`` untimed calls each, then ``rounds`` interleaved rounds of ``runs``
    timed calls per model. ``progress`` shows a progress bar over the rounds; ``log`` (a callable) receives
    one line per batch size once it is timed."""
    check_runtime_choice(runtime, device, providers)
    specs = [input_specs(load_model(m)) for m in (base, hardened)]
    sessions = [open_session(p, runtime=runtime, device=device, providers=providers, threads=threads)
                for p in (base, hardened)]
    rows = bench_sessions(*sessions, *specs, batch_sizes=list(batch_sizes), warmup=warmup, rounds=rounds, runs=runs,
                          seed=seed, progress=progress, log=log)
    return BenchReport(describe(sessions[0], sessions[0].why), threads, warmup, rounds, runs, str(base),
                       str(hardened), rows)
