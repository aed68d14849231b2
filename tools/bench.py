"""``bench``: the latency cost of hardening, the base and hardened models side by side on one runtime.

The timing itself is :mod:`mstransform.runtime.bench` (warm-up, interleaved rounds, medians and
quartiles); this function opens both models the way ``run`` opens one and returns the report.
"""
from __future__ import annotations

from pathlib import Path

from mstransform.core.options import Device, Runtime, choice
from mstransform.passes.graph.load import load_model
from mstransform.runtime.bench import BenchReport, bench_sessions
from mstransform.runtime.inputs import input_specs
from mstransform.runtime.session import (check_runtime_choice, choose_providers, describe, make_session, open_session,
                                         providers_for)
from mstransform.tools.arguments import checked

__all__ = ["BenchReport", "bench"]


@checked
def bench(base: str | Path, hardened: str | Path, *, batch_sizes: tuple[int, ...] | list[int] = (1,),
          runtime: Runtime | str = Runtime.ONNXRUNTIME, device: Device | str | None = None,
          providers: list[str] | None = None, threads: int | None = None, warmup: int = 5, rounds: int = 10,
          runs: int = 10, seed: int = 0, progress=None) -> BenchReport:
    """Hardened / base latency of two ONNX models on ``runtime`` (ONNX Runtime or OpenVINO's CPU plugin).

    ``device`` (or ``providers``) picks ONNX Runtime's provider, as ``run`` does; ``threads`` sets the
    runtime's intra-op threads (None: the runtime's default). For each of ``batch_sizes``, both models get
    the same random batch, ``warmup`` untimed calls each, then ``rounds`` interleaved rounds of ``runs``
    timed calls per model. ``progress(batch, round, rounds)`` is called after every round."""
    runtime = choice(Runtime, runtime, "runtime")
    check_runtime_choice(runtime, device, providers)
    models = [load_model(base), load_model(hardened)]
    specs = [input_specs(m) for m in models]
    why = ""
    if runtime is Runtime.OPENVINO:
        sessions = [open_session(p, runtime=runtime, threads=threads) for p in (base, hardened)]
    else:
        chosen, why = choose_providers(providers or providers_for(device))
        sessions = [make_session(p, providers=chosen, threads=threads) for p in (base, hardened)]
    rows = bench_sessions(*sessions, *specs, batch_sizes=list(batch_sizes), warmup=warmup, rounds=rounds, runs=runs,
                          seed=seed, progress=progress)
    return BenchReport(describe(sessions[0], why), threads, warmup, rounds, runs, str(base), str(hardened), rows)
