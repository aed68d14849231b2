"""Latency of a hardened model against its base model, side by side on one runtime and device.

Both models are opened on the same runtime (a row of ``runtime.session.RUNTIMES``: ONNX Runtime with
the chosen providers, or OpenVINO), fed the same random batch of each batch size, warmed up, then
timed in interleaved rounds: each round times ``runs`` calls of one model, then of the other, the
order alternating from round to round (base-hardened, hardened-base, ...) so that drift in the
machine's load falls on both. Each model's latency is the median of all its timed calls; the spread
is the interquartile range of those calls; the ratio is hardened median / base median, and its
spread the lowest and highest ratio of the per-round medians. Times are wall-clock seconds of
``session.run`` (inputs already in host memory, outputs copied back), as ``trtexec`` and
``polygraphy run`` report end to end.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from mstransform.core.errors import ModelError, UsageError
from mstransform.core.options import MAX_BATCH, check_count
from mstransform.runtime.inputs import InputSpec, fixed_dim

__all__ = ["BenchReport", "BenchRow", "Timing", "bench_sessions", "random_feed"]


@dataclass(frozen=True)
class Timing:
    """One model's timed calls at one batch size: median and quartiles in milliseconds."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    calls: int

    @classmethod
    def of(cls, seconds: list[float]) -> "Timing":
        q1, _, q3 = statistics.quantiles(seconds, n=4, method="inclusive") if len(seconds) > 1 else seconds * 3
        return cls(1e3 * statistics.median(seconds), 1e3 * q1, 1e3 * q3, len(seconds))


@dataclass(frozen=True)
class BenchRow:
    batch: int
    base: Timing
    hardened: Timing
    ratio: float  # hardened.median_ms / base.median_ms
    ratio_low: float  # lowest and highest ratio of one round's medians
    ratio_high: float


@dataclass
class BenchReport:
    """Both models' latency on one runtime (:func:`mstransform.tools.bench.bench`): one row per batch size."""

    runtime: str  # the runtime and device that ran both models, as `run` names them
    threads: int | None
    warmup: int
    rounds: int
    runs: int
    base: str
    hardened: str
    rows: list[BenchRow] = field(default_factory=list)

    def format(self) -> str:
        """The report for people: how it was timed, then one aligned row per batch size."""
        head = (f"{self.runtime}; threads {self.threads or 'runtime default'}; {self.warmup} warm-up call(s), "
                f"{self.rounds} interleaved round(s) of {self.runs} call(s) per model")
        rows = [("batch", "base ms (IQR)", "hardened ms (IQR)", "hardened/base", "round range")]
        rows += [(str(r.batch), _cell(r.base), _cell(r.hardened), f"{r.ratio:.3f}x",
                  f"{r.ratio_low:.3f}-{r.ratio_high:.3f}x") for r in self.rows]
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        return "\n".join([head] + ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows])

    def to_dict(self) -> dict:
        """The report for machines (``bench --json``): every field, each row's timings in milliseconds."""
        return asdict(self)


def _cell(t: Timing) -> str:
    return f"{t.median_ms:.3f} ({t.q1_ms:.3f}-{t.q3_ms:.3f})"


def random_feed(specs: list[InputSpec], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One batch of ``batch`` samples for every input: standard normal floats, zeros for integer and bool
    inputs (ids and masks whose meaning random values would change). Every dim but the batch axis must be
    fixed; a batch size the model fixes must equal ``batch``."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in specs:
        if spec.shape is None:
            raise ModelError(f"input {spec.name!r} declares no shape; bench needs every dim but the batch axis fixed")
        fixed = fixed_dim(spec)
        if fixed is not None and fixed != batch:
            raise UsageError(f"{batch} does not fit: input {spec.name!r} fixes its batch at {fixed} "
                             f"(shape {spec.describe_shape()})", param="batch_sizes")
        shape = []
        for axis, d in enumerate(spec.shape):
            if axis == spec.batch_axis:
                shape.append(batch)
            elif d is None:
                raise ModelError(f"input {spec.name!r} has a dynamic dim at axis {axis} (shape "
                                 f"{spec.describe_shape()}); bench needs every dim but the batch axis fixed")
            else:
                shape.append(d)
        if spec.is_float:
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feed[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feed


def _same_inputs(base: list[InputSpec], hardened: list[InputSpec]) -> None:
    a = [(s.name, s.dtype, s.shape) for s in base]
    b = [(s.name, s.dtype, s.shape) for s in hardened]
    if a != b:
        raise ModelError("the two models take different inputs: "
                         + "; ".join(f"{s.name} {s.dtype.name} {s.describe_shape()}" for s in base) + " vs "
                         + "; ".join(f"{s.name} {s.dtype.name} {s.describe_shape()}" for s in hardened))


def bench_sessions(base, hardened, specs: list[InputSpec], hardened_specs: list[InputSpec], *, batch_sizes,
                   warmup: int = 5, rounds: int = 10, runs: int = 10, seed: int = 0, clock=time.perf_counter,
                   progress: bool = False, log=None) -> list[BenchRow]:
    """Time two sessions (anything with a ``Session``'s ``run``) side by side: one row per batch size.
    ``progress`` shows a bar over the rounds; ``log`` (a callable) gets one line per batch size timed."""
    from tqdm.auto import tqdm

    _same_inputs(specs, hardened_specs)
    for name, value in (("warmup", warmup), ("rounds", rounds), ("runs", runs)):
        check_count(value, name, low=0 if name == "warmup" else 1)
    sizes = [check_count(b, "batch_sizes", high=MAX_BATCH) for b in batch_sizes]
    if not sizes:
        raise UsageError("is empty; give one batch size or more", param="batch_sizes")
    rows = []
    bar = tqdm(total=len(sizes) * rounds, desc="timing", unit="round", leave=False, disable=None if progress else True)
    try:
        for b in sizes:
            feed = random_feed(specs, b, seed)
            sessions = {"base": base, "hardened": hardened}
            for s in sessions.values():
                for _ in range(warmup):
                    s.run(None, feed)
            calls: dict[str, list[float]] = {k: [] for k in sessions}
            round_ratios = []
            for r in range(rounds):
                order = ("base", "hardened") if r % 2 == 0 else ("hardened", "base")
                this: dict[str, list[float]] = {k: [] for k in sessions}
                for k in order:
                    run = sessions[k].run
                    for _ in range(runs):
                        t0 = clock()
                        run(None, feed)
                        this[k].append(clock() - t0)
                round_ratios.append(statistics.median(this["hardened"]) / statistics.median(this["base"]))
                for k in sessions:
                    calls[k] += this[k]
                bar.update()
            tb, th = Timing.of(calls["base"]), Timing.of(calls["hardened"])
            rows.append(BenchRow(b, tb, th, th.median_ms / tb.median_ms, min(round_ratios), max(round_ratios)))
            if log:
                log(f"batch {b}: base {_cell(tb)} ms, hardened {_cell(th)} ms, hardened/base {rows[-1].ratio:.3f}x")
    finally:
        bar.close()
    return rows
