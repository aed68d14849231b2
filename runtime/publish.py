"""Publishing a hardened model: write it, check the written file, rename it into place.

:func:`harden` is what ``mstransform MODEL --stats S --alpha A`` does: the pass manager
(:func:`mstransform.passes.harden.harden_model`), then the write and the checks of
:mod:`mstransform.runtime.verify` on a probe. Inputs (and the files they reference) are never
modified; the model is written and verified under a name of its own and renamed into place only
once verified (a model that fails is never published, an earlier file stays), and nothing is left
behind on any error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from mstransform.core.errors import ModelError, UsageError
from mstransform.core.fileio import publishing, retract
from mstransform.core.guards import as_output_error
from mstransform.core.options import AlphaPlan, Center, Formulation, Mode, Precision, Runtime, Selection, choice
from mstransform.core.stats import InputRecord, Stats
from mstransform.passes.graph.load import ORIGIN, DropInferredPass, load_model
from mstransform.passes.harden import Hardened, harden_model, inserted_line
from mstransform.runtime.data import DataSource, Preprocess, head
from mstransform.runtime.inputs import fixed_batch, input_specs
from mstransform.runtime.session import open_session
from mstransform.runtime.verify import check_file, self_check

MAX_PROTO = 2**31 - 1
PROBE_SAMPLES, SYNTHETIC_SAMPLES = 8, 2  # the self-check's probe: samples from data, synthetic ones


@dataclass
class HardenReport:
    """A hardened model written to ``output`` (:func:`harden`), and the checks it passed."""

    output: Path
    model: ir.Model
    sites: list[str]
    skipped: list[str]
    alphas: dict[str, float]
    checks: list[str] = field(default_factory=list)  # empty when the self-check was turned off
    max_abs_diff: float | None = None  # operators vs the numpy reference; None when not checked
    published: list = field(default_factory=list)  # (path, (device, inode)) renamed into place: retract_output

    def to_dict(self) -> dict:
        """The report for machines (``--json``)."""
        return {"output": str(self.output), "sites": list(self.sites), "skipped": list(self.skipped),
                "alphas": dict(self.alphas), "checks": list(self.checks), "max_abs_diff": self.max_abs_diff}

    def format(self) -> str:
        """The report for people: operators inserted, the file written, one line per check passed."""
        lines = [inserted_line(self.sites, self.skipped), f"wrote {self.output}"]
        return "\n".join(lines + [f"check: {c}" for c in self.checks])


def harden(model, stats: Stats | str | Path, output: str | Path, *, alpha: float | AlphaPlan = 0.2,
           mode: Mode | str = Mode.MEANSPARSE, center: Center | str = Center.MEAN,
           formulation: Formulation | str = Formulation.WHERE, selection: Selection | None = None,
           ignore_fingerprint: bool = False, precision: Precision | str = Precision.FP32, probe=None,
           verify: bool = True, threads: int | None = None, runtime: Runtime | str = Runtime.ONNXRUNTIME,
           batch_axes: dict[str, int | None] | None = None, preprocess: Preprocess | None = None,
           batch_size: int | None = None) -> HardenReport:
    """:func:`harden_model`, then write the model to ``output`` and check the written file.

    The checks: ``onnx.checker`` with strict shape inference, a load in ``runtime``, and every
    operator against the numpy reference on ``probe`` -- data in any form :func:`mstransform.calibrate`
    takes (its first samples, read with ``batch_axes`` and ``preprocess``; a dict of arrays is fed as
    it is) or, without it, a synthetic batch shaped like the calibration samples the stats recorded
    (:func:`synthetic_probe`) -- and the written model against the input model on that probe: their
    agreement (a ``check: outcome:`` line, information), and both at a second size of every dynamic
    input dim, where the written model must run if the input model does
    (:func:`~mstransform.runtime.verify.self_check`).
    The probe holds ``batch_size`` samples, at most 8 from data and 2 synthetic (None: those), or
    the batch the model fixes. The input file and the files it references are never modified; the model
    is written and checked under a temporary name of this call's own and renamed onto ``output`` (and
    ``output.data``) only when every check passed: a file that fails is never published. An ``onnx_ir``
    ``model`` is hardened in place."""
    runtime = choice(Runtime, runtime, "runtime")
    loaded = load_model(model)
    if probe is not None and not isinstance(probe, dict):
        probe = probe_data(probe, loaded, batch_axes=batch_axes, preprocess=preprocess, batch_size=batch_size)
    elif isinstance(probe, dict):
        probe = {k: np.asarray(v) for k, v in probe.items()}
    base = base_session(loaded, runtime, threads) if verify else None
    done = harden_model(loaded, stats, alpha=alpha, mode=mode, center=center, formulation=formulation,
                        selection=selection, ignore_fingerprint=ignore_fingerprint, precision=precision)
    return publish(done, output, base, probe, threads=threads, runtime=runtime, batch_size=batch_size)


def publish(done: Hardened, output: str | Path, base, probe: dict[str, np.ndarray] | None = None, *,
            threads: int | None = None, runtime: Runtime = Runtime.ONNXRUNTIME,
            batch_size: int | None = None) -> HardenReport:
    """:func:`harden`'s writing and checking of ``done``, checked against ``base`` (:func:`base_session`; None:
    no checks), so a caller hardening one model at several alphas opens its session once."""
    m = done.model
    DropInferredPass()(m)
    if m.ir_version is not None and m.ir_version < 4:  # IR 3 and older: every initializer is also a graph input
        listed = {id(v) for v in m.graph.inputs}
        m.graph.inputs.extend(v for v in m.graph.initializers.values() if id(v) not in listed)
    report = HardenReport(output, m, done.sites, done.skipped, done.alphas)
    with publishing(output) as pub:  # write and check this call's own file, then rename it into place
        _save(m, pub.path, output)
        if base is not None:
            report.checks += check_file(pub.path)
            if probe is None:
                probe = synthetic_probe(m, done.stats.inputs, batch=min(batch_size or SYNTHETIC_SAMPLES,
                                                                        SYNTHETIC_SAMPLES))
            checked = self_check(pub.path, base, done.inserted, probe, threads=threads, runtime=runtime)
            report.checks += checked.checks
            report.max_abs_diff = checked.max_abs_diff
    report.published = pub.published
    return report


def base_session(loaded: ir.Model, runtime: Runtime, threads: int | None):
    """A session of the model as loaded (legacy dims made symbolic), for the self-check's comparison:
    made before hardening, which changes the loaded model in place. OpenVINO reads in-memory models
    without external data only; such a model is read from the file it was loaded from."""
    try:
        return open_session(loaded, runtime=runtime, threads=threads, specialise=False)
    except ModelError:
        source = loaded.meta.get(ORIGIN)  # set by load_model
        if source is None:
            raise
        return open_session(Path(source), runtime=runtime, threads=threads, specialise=False)


def _external(m: ir.Model) -> bool:
    return any(isinstance(v.const_value, ir.ExternalTensor) for v in m.graph.initializers.values())


def _save(m: ir.Model, path: Path, output: Path) -> None:
    """Write the model to ``path`` (a temporary file named like ``output``) and, when it is big or
    already external, its data to ``path.data`` beside it: the name it keeps once published."""
    big = _external(m) or sum(v.const_value.nbytes for v in m.graph.initializers.values()
                              if v.const_value is not None) > MAX_PROTO // 2
    try:
        if big:
            ir.save(m, path, external_data=path.name + ".data")
        else:
            ir.save(m, path)
    except OSError as e:
        raise as_output_error(e, output) from None


def retract_output(report: HardenReport) -> None:
    """Remove the model ``report`` published (a later step failed), unless another run replaced it since."""
    retract(report.published)
    report.published = []


def synthetic_probe(m: ir.Model, inputs: tuple[InputRecord, ...] = (), batch: int = 2,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """A small random batch the model accepts.

    Each input recorded by calibration (``Stats.inputs``) gets that sample's shape and type, its
    batch axis sized ``batch``, and its recorded value where it has no batch axis (a sample rate);
    an input calibration did not record takes its declared shape, dynamic dims 1 (the batch ``batch``)."""
    rng = np.random.default_rng(seed)
    recorded = {r.name: r for r in inputs}
    out = {}
    for spec in input_specs(m):
        r = recorded.get(spec.name)
        if r is not None:
            if r.value is not None:
                out[spec.name] = np.asarray(r.value, dtype=spec.dtype)
                continue
            shape = list(r.shape)
            if r.batch_axis is not None:  # a batch dim the model fixes keeps its size
                fixed = spec.shape[r.batch_axis] if spec.shape is not None and r.batch_axis < len(spec.shape) else None
                shape[r.batch_axis] = fixed or batch
        elif spec.shape is None:
            raise UsageError(f"input {spec.name!r} has unknown shape; pass probe data (--data)", param="probe")
        else:
            shape = [batch if i == spec.batch_axis and d is None else (d or 1) for i, d in enumerate(spec.shape)]
        if spec.is_float:
            out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            out[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return out


def probe_from(data_source: DataSource, n: int = PROBE_SAMPLES) -> dict[str, np.ndarray]:
    """The first ``n`` samples of ``data_source``: real samples for the self-check (a batch the model
    fixes is never cut)."""
    for batch in data_source:
        return head(batch.inputs, n, data_source.axes)
    raise UsageError("holds no probe batch", param="data")


def probe_data(data, model: ir.Model, *, batch_axes: dict[str, int | None] | None = None,
               preprocess: Preprocess | None = None, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """The self-check's probe from ``data`` (any form :func:`mstransform.calibrate` takes): its first
    ``batch_size`` samples, at most :data:`PROBE_SAMPLES`, or the batch size the model fixes."""
    specs = input_specs(model, batch_axes)
    n = fixed_batch(specs) or min(batch_size or PROBE_SAMPLES, PROBE_SAMPLES)
    return probe_from(DataSource(data, specs, batch_size=n, limit=n, preprocess=preprocess or Preprocess()), n)
