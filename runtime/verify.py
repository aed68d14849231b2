"""Checks run on every written model: checker, shape inference, ORT load, numerics.

The numerical check finds every sparsify operator in the *written file* by its structure
(:func:`~mstransform.passes.sparsify_match.find_sparsify_ops`), exposes its input ``x`` and
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

from mstransform.core.errors import VerificationError
from mstransform.core.operator import edge_band, sparsify
from mstransform.passes.expose import exposed
from mstransform.passes.sparsify import Inserted
from mstransform.passes.sparsify_match import find_sparsify_ops
from mstransform.passes.subgraphs import graphs
from mstransform.runtime.session import describe, encodable, open_session, run_step


@dataclass
class VerifyReport:
    checks: list[str] = field(default_factory=list)
    max_abs_diff: float = 0.0
    worst: str | None = None


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


def numeric_check(path: Path, inserted: list[Inserted], probe: dict[str, np.ndarray], tolerance: float = 0.0,
                  threads: int | None = None, providers=None, runtime=None) -> VerifyReport:
    """Compare every sparsify operator of the file at ``path`` with the numpy reference on ``probe``.

    The model runs on ``runtime`` (ONNX Runtime by default, or OpenVINO); the reference is
    computed in the operator's own type on the values that runtime produced."""
    report = VerifyReport()
    model = ir.load(str(path))
    ops = [op for g in graphs(model) for op in find_sparsify_ops(g)]  # bodies of If/Loop/Scan too
    found = {op.y.name for op in ops}
    lost = [i.site for i in inserted if i.y not in found]
    if lost:
        raise VerificationError(f"site {lost[0]!r}: its operator is not in the written model ({len(lost)} missing)")
    outputs = [v.name for v in model.graph.outputs]
    step = "self-check of the written model on the probe (" + ", ".join(
        f"{k} {tuple(v.shape)} {v.dtype.name}" for k, v in probe.items()) + ")"
    plain = open_session(path, runtime=runtime, threads=threads, providers=providers, specialise=False)
    final = run_step(plain, outputs, probe, VerificationError, step)
    with exposed(model, [v for op in ops for v in (op.x, op.y)]) as seen:
        session = open_session(model, runtime=runtime, threads=threads, providers=providers, specialise=False)
        report.checks.append(f"loads and runs: {describe(session)}")
        wanted = list(dict.fromkeys([*outputs, *(seen.names[v] for op in ops for v in (op.x.name, op.y.name))]))
        fetched = dict(zip(wanted, run_step(session, wanted, probe, VerificationError, step)))
    got = {o: fetched[o] for o in outputs}
    got.update({v: fetched[seen.names[v]] for op in ops for v in (op.x.name, op.y.name)})
    for o, f in zip(outputs, final):
        if not np.array_equal(got[o], f, equal_nan=True):
            raise VerificationError(f"exposing operator tensors changed output {o!r}; the model is not deterministic")
    if not ops:
        report.checks.append("no operator in the model: nothing to compare")
        return report
    edge, unreached = 0, 0
    for op in ops:
        x, y = got[op.x.name], got[op.y.name]
        if x.size == 0 and seen.names[op.x.name] != op.x.name:
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
