"""Checks run on every written model: checker, shape inference, ORT load, numerics, outcome.

The numerical check finds every sparsify operator in the *written file* by its structure
(:func:`~mstransform.passes.onnx.recognise.find_sparsify_ops`), exposes its input ``x`` and
output ``y`` on a probe batch and compares ``y`` with the numpy operator applied to ``x``
(:func:`mstransform.core.operator.sparsify`) -- an implementation that shares no code with the
graph pass. It also checks that every operator the pass says it inserted is in the file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from mstransform.core.errors import DependencyError, ModelError, VerificationError
from mstransform.core.operator import edge_band, sparsify
from mstransform.passes.graph.expose import exposed
from mstransform.passes.graph.subgraphs import graphs
from mstransform.passes.onnx.recognise import find_sparsify_ops
from mstransform.passes.onnx.sparsify import Inserted
from mstransform.runtime.accuracy import is_class_scores
from mstransform.runtime.inputs import input_specs
from mstransform.runtime.session import describe, encodable, first_line, open_session, opener, run_step


@dataclass
class VerifyReport:
    checks: list[str] = field(default_factory=list)
    max_abs_diff: float = 0.0
    worst: str | None = None
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # the written model's outputs on the probe
    specs: list = field(default_factory=list)  # the written model's inputs (InputSpec)


def check_file(path: Path) -> list[str]:
    try:
        if encodable(path):
            onnx.checker.check_model(str(path), full_check=True)
        else:  # onnx's C++ side takes UTF-8 paths only: a Latin-1 byte in a name is read from Python
            onnx.checker.check_model(onnx.load(open(path, "rb"), load_external_data=False), full_check=True)
    except Exception as e:  # onnx raises ValidationError / InferenceError
        raise VerificationError(f"written model fails onnx.checker / shape inference: {str(e).splitlines()[0]}") from None
    return ["onnx.checker (full_check, includes strict shape inference)"]


def _axis(center: np.ndarray) -> int:
    """The channel axis of a pre-shaped constant: its one dimension that is not 1 (1 if none)."""
    big = [i for i, d in enumerate(center.shape) if d != 1]
    return big[0] if big else min(1, center.ndim - 1)


def self_check(path: Path, base, inserted: list[Inserted], probe: dict[str, np.ndarray], *,
               threads: int | None = None, providers=None, runtime=None) -> VerifyReport:
    """The written model at ``path`` checked on ``probe``: every operator against the numpy reference
    (:func:`numeric_check`), then the model as a whole against ``base`` -- the model it was made from, a
    path or an open session -- on the same probe and runtime (:func:`outcome_check`:
    agreement, and a second size of every dynamic dim)."""
    session = open_session(path, runtime=runtime, threads=threads, providers=providers, specialise=False)
    report = numeric_check(path, inserted, probe, threads=threads, providers=providers, runtime=runtime,
                           session=session)
    if not hasattr(base, "run"):
        base = open_session(base, runtime=runtime, threads=threads, providers=providers, specialise=False)
    report.checks += outcome_check(session, base, probe, report.outputs, report.specs)
    if opener(runtime).against_reference:
        report.checks.append(_against_ort(path, probe, threads))
    return report


def _against_ort(path: Path, probe: dict[str, np.ndarray], threads: int | None) -> str:
    """OpenVINO's decisions against ONNX Runtime's on the probe (information); a flip that the two
    runtimes' inputs do not explain is a VerificationError (one of them computes the operator wrongly)."""
    from mstransform.runtime.openvino_session import runtime_gap

    try:
        gap = runtime_gap(path, probe, threads=threads)
    except DependencyError:
        return "OpenVINO vs ONNX Runtime: not compared (onnxruntime is not installed)"
    except ModelError as e:  # ONNX Runtime's CPU provider lacks some bf16 kernels
        return f"OpenVINO vs ONNX Runtime: not compared ({e})"
    if gap.far:
        raise VerificationError(f"{gap.far} decision(s) differ between OpenVINO and ONNX Runtime farther from the "
                                "band edge than their inputs differ: one runtime computes an operator wrongly")
    return gap.format()


def numeric_check(path: Path, inserted: list[Inserted], probe: dict[str, np.ndarray], tolerance: float = 0.0,
                  threads: int | None = None, providers=None, runtime=None, session=None) -> VerifyReport:
    """Compare every sparsify operator of the file at ``path`` with the numpy reference on ``probe``.

    The model runs on ``runtime`` (ONNX Runtime by default, or OpenVINO; ``session``, when given, is
    that runtime's session of the file already open); the reference is computed in the operator's
    own type on the values that runtime produced."""
    report = VerifyReport()
    model = ir.load(str(path))
    report.specs = input_specs(model)
    ops = [op for g in graphs(model) for op in find_sparsify_ops(g)]  # bodies of If/Loop/Scan too
    found = {op.y.name for op in ops}
    lost = [i.site for i in inserted if i.y not in found]
    if lost:
        raise VerificationError(f"site {lost[0]!r}: its operator is not in the written model ({len(lost)} missing)")
    outputs = [v.name for v in model.graph.outputs]
    step = "self-check of the written model on the probe (" + ", ".join(
        f"{k} {tuple(v.shape)} {v.dtype.name}" for k, v in probe.items()) + ")"
    plain = session or open_session(path, runtime=runtime, threads=threads, providers=providers, specialise=False)
    final = run_step(plain, outputs, probe, VerificationError, step)
    report.outputs = dict(zip(outputs, final))
    with exposed(model, [v for op in ops for v in (op.x, op.y)]) as seen:
        inner = open_session(model, runtime=runtime, threads=threads, providers=providers, specialise=False)
        report.checks.append(f"loads and runs: {describe(inner)}")
        wanted = list(dict.fromkeys([*outputs, *(seen.name_of(v) for op in ops for v in (op.x, op.y))]))
        fetched = dict(zip(wanted, run_step(inner, wanted, probe, VerificationError, step)))
    got = {o: fetched[o] for o in outputs}
    values = {id(v): fetched[seen.name_of(v)] for op in ops for v in (op.x, op.y)}  # by identity: bodies reuse names
    for o, f in zip(outputs, final):
        if not np.array_equal(got[o], f, equal_nan=True):
            raise VerificationError(f"exposing operator tensors changed output {o!r}; the model is not deterministic")
    if not ops:
        report.checks.append("no operator in the model: nothing to compare")
        return report
    edge, unreached = 0, 0
    for op in ops:
        x, y = values[id(op.x)], values[id(op.y)]
        if x.size == 0 and seen.name_of(op.x) != op.x.name:
            unreached += 1  # inside a branch the probe did not take
            continue
        axis = _axis(op.center) + (x.ndim - op.center.ndim)  # loop bodies: iterations stacked in front
        ref = sparsify(x, op.center.reshape(-1), op.threshold.reshape(-1), axis)
        if x.dtype.itemsize < 4:  # fp16/bf16: a runtime may decide band-edge values in float32
            band = edge_band(x, op.center.reshape(-1), op.threshold.reshape(-1), axis)
            agree = band & ((y == x) | (y == op.center))  # near the edge: either decision, nothing else
            edge += int(np.count_nonzero(agree & (y != ref)))
            ref = np.where(agree, y, ref)
        diff = float(np.max(np.abs(ref.astype(np.float64) - y.astype(np.float64)))) if y.size else 0.0
        if diff >= report.max_abs_diff:
            report.max_abs_diff, report.worst = diff, op.x.name
    report.checks.append(f"numerics: {len(ops) - unreached} operator(s) vs numpy reference, max |diff| = "
                         f"{report.max_abs_diff:.3g}"
                         + (f"; {edge} band-edge value(s) decided in a wider type" if edge else "")
                         + (f"; {unreached} inside branches the probe did not take" if unreached else ""))
    if report.max_abs_diff > tolerance:
        raise VerificationError(f"the operator at {report.worst!r} differs from the reference operator by "
                                f"{report.max_abs_diff:.3g} (> {tolerance:g})")
    return report


# -- the model as a whole: agreement with the base model, and a second size of every dynamic dim --

@dataclass(frozen=True)
class Agreement:
    """How far one output of the written model lies from the base model's on the same feed."""

    output: str
    top1: tuple[int, int] | None  # (samples whose top-1 class agrees, samples), for class scores
    change: float | None  # ||h - b|| / ||b|| in float64 (float outputs); equal values' share otherwise

    def describe(self) -> str:
        parts = []
        if self.top1 is not None:
            same, n = self.top1
            parts.append(f"top-1 agreement {same}/{n} ({100 * same / n:.1f}%)")
        if self.change is not None:
            parts.append(f"relative change {self.change:.3g}")
        return f"{self.output!r} " + ", ".join(parts)


def agreement(base: dict[str, np.ndarray], hardened: dict[str, np.ndarray]) -> list[Agreement]:
    """Each output of ``hardened`` against ``base``: top-1 agreement where it holds class scores, the
    relative change ``||h - b|| / ||b||`` (float64) for every float output. A changed shape or type, or
    NaN/Inf where the base model's output is finite, is a VerificationError: the model is broken."""
    out = []
    for name, b in base.items():
        h = hardened[name]
        if h.shape != b.shape:
            raise VerificationError(f"output {name!r} has shape {h.shape} in the written model but {b.shape} in the "
                                    "base model on the same probe")
        floats = [x.dtype.kind == "f" or x.dtype.name == "bfloat16" for x in (h, b)]
        if h.dtype != b.dtype and not all(floats):
            raise VerificationError(f"output {name!r} is {h.dtype.name} in the written model but {b.dtype.name} in "
                                    "the base model")
        if not floats[1]:
            same = int(np.count_nonzero(h == b))
            out.append(Agreement(name, None, 1.0 - same / b.size if b.size else 0.0))
            continue
        h64, b64 = h.astype(np.float64), b.astype(np.float64)
        finite = np.isfinite(b64)
        broken = int(np.count_nonzero(~np.isfinite(h64) & finite))
        if broken:
            raise VerificationError(f"output {name!r} of the written model holds NaN or Inf in {broken} value(s) where "
                                    "the base model's is finite")
        both = finite & np.isfinite(h64)
        scale = float(np.linalg.norm(b64[both]))
        diff = float(np.linalg.norm(h64[both] - b64[both]))
        change = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
        top1 = None
        if is_class_scores(b):
            top1 = (int(np.count_nonzero(np.argmax(h64, axis=1) == np.argmax(b64, axis=1))), b.shape[0])
        out.append(Agreement(name, top1, change))
    return out


def second_sizes(specs, probe: dict[str, np.ndarray]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(label, feed) per dynamic dim of the inputs: ``probe`` grown by one along that dim (the last
    sample or step repeated), e.g. ``("batch 2 -> 3", feed)``. Inputs sharing a dim name grow together,
    and so do the batch axes; other unnamed dims group by their size in the probe."""
    groups: dict[tuple, list[tuple[str, int]]] = {}
    for spec in specs:
        x = probe.get(spec.name)
        if x is None or spec.shape is None or x.ndim != len(spec.shape):
            continue
        names = spec.dim_names or (None,) * len(spec.shape)
        for axis, (size, dim) in enumerate(zip(spec.shape, names)):
            if size is not None or x.shape[axis] == 0:
                continue
            key = ("name", dim) if dim else ("batch",) if axis == spec.batch_axis else ("size", x.shape[axis])
            groups.setdefault(key, []).append((spec.name, axis))
    out = []
    for key, members in groups.items():
        feed = dict(probe)
        for name, axis in members:
            x = feed[name]
            feed[name] = np.concatenate([x, np.take(x, [-1], axis=axis)], axis=axis)
        name, axis = members[0]
        label = key[1] if key[0] == "name" else "batch" if key[0] == "batch" else f"dim {axis} of {name!r}"
        out.append((f"{label} {probe[name].shape[axis]} -> {feed[name].shape[axis]}", feed))
    return out


def outcome_check(session, base, probe: dict[str, np.ndarray], written: dict[str, np.ndarray], specs) -> list[str]:
    """The written model (``session``, its outputs ``written`` on ``probe``) against the base model
    (``base``, a session of the same runtime): their agreement on the probe, as information; then both
    at a second size of every dynamic input dim (:func:`second_sizes`). A written model that fails
    there while the base model runs, or computes another shape, is a VerificationError naming the dim:
    its statistics are tied to one size. A dim the base model cannot vary either is skipped."""
    names = list(written)
    base_out = dict(zip(names, run_step(base, names, probe, VerificationError, "the base model on the probe")))
    lines = ["outcome: written vs base model on the probe: "
             + "; ".join(a.describe() for a in agreement(base_out, written)[:MAX_LISTED])
             + (f"; {len(names) - MAX_LISTED} more output(s)" if len(names) > MAX_LISTED else "")]
    tried, skipped = [], []
    for label, feed in second_sizes(specs, probe):
        try:
            expected = base.run(names, feed)
        except Exception:  # noqa: BLE001 -- the base model does not run at this size either: not a dynamic dim
            skipped.append(label)
            continue
        try:
            got = session.run(names, feed)
        except Exception as e:  # noqa: BLE001 -- ORT and OpenVINO raise their own types
            raise VerificationError(f"the written model fails at {label} where the base model runs: statistics "
                                    f"tied to one size of that dim ({first_line(e)})") from None
        try:
            agreement(dict(zip(names, expected)), dict(zip(names, got)))
        except VerificationError as e:
            raise VerificationError(f"at {label}: {e}") from None
        tried.append(label)
    parts = ([f"{', '.join(tried)}: runs like the base model"] if tried else []) + (
        [f"skipped, the base model does not run there either: {', '.join(skipped)}"] if skipped else [])
    if parts:
        lines.append("second size: " + "; ".join(parts))
    return lines


MAX_LISTED = 4  # outputs whose agreement one check line lists
