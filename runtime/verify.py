"""Checks run on every written model: checker, shape inference, ORT load, numerics.

The numerical check exposes, for each inserted operator, its input ``x`` and output
``y`` on a probe batch and compares ``y`` with the numpy operator applied to ``x``
(:func:`mstransform.runtime.operator.sparsify`) -- an implementation that shares no
code with the graph pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from mstransform.errors import VerificationError
from mstransform.passes.sparsify import Inserted
from mstransform.runtime.operator import sparsify
from mstransform.runtime.session import make_session


@dataclass
class VerifyReport:
    checks: list[str] = field(default_factory=list)
    max_abs_diff: float = 0.0
    probe: str = ""
    worst_site: str | None = None


def check_file(path: Path) -> list[str]:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # onnx raises ValidationError / InferenceError
        raise VerificationError(f"written model fails onnx.checker / shape inference: {str(e).splitlines()[0]}") from None
    return ["onnx.checker (full_check, includes strict shape inference)"]


def numeric_check(path: Path, inserted: list[Inserted], probe: dict[str, np.ndarray], axes: dict[str, int],
                  tolerance: float = 1e-6, threads: int | None = None) -> VerifyReport:
    """Compare every inserted operator with the numpy reference on ``probe``."""
    report = VerifyReport()
    session = make_session(path, threads=threads)
    report.checks.append("onnxruntime load (" + ", ".join(session.get_providers()) + ")")
    outputs = [o.name for o in session.get_outputs()]
    final = session.run(outputs, probe)
    if not inserted:
        report.checks.append("no operator inserted: nothing to compare")
        return report
    model = ir.load(path)
    init = model.graph.initializers
    values = {v.name: v for n in model.graph for v in n.outputs}
    values.update({v.name: v for v in model.graph.inputs})
    wanted = []
    for ins in inserted:
        for name in (ins.x, ins.y):
            v = values[name]
            if not v.is_graph_output() and v not in wanted:
                wanted.append(v)
    model.graph.outputs.extend(wanted)
    probe_session = make_session(model, threads=threads)
    names = outputs + [v.name for v in wanted]
    got = dict(zip(names, probe_session.run(names, probe)))
    for o, f in zip(outputs, final):
        if not np.array_equal(got[o], f, equal_nan=True):
            raise VerificationError(f"exposing site tensors changed output {o!r}; the model is not deterministic")
    for ins in inserted:
        x, y = got[ins.x], got[ins.y]
        c = init[ins.center].const_value.numpy().reshape(-1)
        t = init[ins.threshold].const_value.numpy().reshape(-1)
        ref = sparsify(x, c, t, axes[ins.site])
        diff = float(np.max(np.abs(ref.astype(np.float64) - y.astype(np.float64)))) if y.size else 0.0
        if diff > report.max_abs_diff:
            report.max_abs_diff, report.worst_site = diff, ins.site
    report.checks.append(f"numerics: {len(inserted)} operator(s) vs numpy reference, max |diff| = "
                         f"{report.max_abs_diff:.3g}")
    if report.max_abs_diff > tolerance:
        raise VerificationError(f"site {report.worst_site!r} differs from the reference operator by "
                                f"{report.max_abs_diff:.3g} (> {tolerance:g})")
    return report
