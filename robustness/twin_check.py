"""Proof that the differentiable twin is the deployed model, by construction rather than by one
output tolerance.

A hardened model is discontinuous at each band edge ``|x - c| = t``: where the twin's and ONNX
Runtime's convolutions round differently (other CPUs, vector widths, thread counts), a value
near the edge is replaced in one and kept in the other, and the output jumps by up to ``t``. No
tolerance on the outputs can tell a correct twin from a wrong one there. So the check splits
the model at its operators:

1. ONNX Runtime runs the model with every operator's input ``x`` and output ``y`` exposed.
2. **Each operator against the deployed values**: the twin's unit applied to ORT's ``x`` must
   give ORT's ``y`` exactly (both are IEEE elementwise ops; a wrong constant or axis fails).
3. **The continuous parts**: the twin runs with every unit's output forced to ORT's ``y``
   (teacher forcing), so each segment between operators is a continuous function of identical
   inputs; the tensor entering each operator and the final output must agree with ORT's within
   ``rel_tol`` of the tensor's scale (wrong weights, a dropped operator or a wrong op fail).
4. **Decisions**: where the twin's own decision differs from ORT's (a flip), the value must lie
   within rounding distance of the edge: at most twice the largest continuous difference seen
   at that operator plus a few ulps. Flips are counted and reported; a far one is refused.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx_ir as ir
import torch

from mstransform.core.errors import VerificationError
from mstransform.passes.graph.expose import exposed
from mstransform.passes.onnx.recognise import find_sparsify_ops
from mstransform.robustness.twin import OnnxTwin, Unit
from mstransform.runtime.session import make_session

REL_TOL = 1e-4  # float32 re-association across kernels is ~1e-6 of scale; wrong weights are >1e-3


@dataclass
class TwinReport:
    """What :func:`check_twin` proved: the operators it checked and the largest differences it allowed."""

    operators: int = 0
    max_rel_diff: float = 0.0  # continuous parts, relative to each tensor's scale
    flips: int = 0  # decisions that differ, all within rounding distance of the edge
    values: int = 0
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        """The check for people, in one line."""
        return (f"twin = deployed model: {self.operators} operator(s) exact on ORT's values, continuous parts within "
                f"{self.max_rel_diff:.1e} of scale, {self.flips} edge flip(s) in {self.values} values")

    def to_dict(self) -> dict:
        """The check for machines."""
        return asdict(self)


def _rel(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max |a - b|, that divided by the scale max(|b|, 1e-6))."""
    if a.shape != b.shape:
        raise VerificationError(f"the twin computes shape {a.shape} where ONNX Runtime computes {b.shape}")
    diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
    return diff, diff / max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-6)


def decision_flips(twin: tuple[np.ndarray, np.ndarray, np.ndarray],
                   ort: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Where the twin's decision differs from ONNX Runtime's *and* that changes the value.

    Each side is ``(x, center, threshold)``: its own input and the constants it ran with. Each
    side's decision is the operator's own test, ``|x - c| < t`` in the operator's type. Inferring "replaced" from ``y != x`` is wrong on trained weights: a dead
    channel on a constant background gives exactly its bias, the bias is the channel's mean, and
    ``x == c`` reads as kept whichever way it was decided. Where both inputs equal the center,
    replacing and keeping give the same value: no flip."""
    (x_twin, c_twin, t_twin), (x_ort, c_ort, t_ort) = twin, ort
    c_twin, t_twin = c_twin.astype(x_twin.dtype), t_twin.astype(x_twin.dtype)
    c_ort, t_ort = c_ort.astype(x_ort.dtype), t_ort.astype(x_ort.dtype)
    replaced_twin = np.abs(x_twin - c_twin) < t_twin
    replaced_ort = np.abs(x_ort - c_ort) < t_ort
    same_value = (x_twin == c_twin) & (x_ort == c_ort) & (c_twin == c_ort)
    return (replaced_twin != replaced_ort) & ~same_value


def check_twin(twin: OnnxTwin, path, x: np.ndarray, *, rel_tol: float = REL_TOL, providers=None,
               threads: int | None = None) -> TwinReport:
    """Prove ``twin`` computes the model at ``path`` on ``x``; VerificationError naming the first part that differs."""
    model = ir.load(str(path))
    ops = find_sparsify_ops(model.graph)
    if len(ops) != len(twin.units):
        raise VerificationError(f"the twin runs {len(twin.units)} sparsify operator(s) but the model has {len(ops)}")
    out_name = model.graph.outputs[0].name
    with exposed(model, [v for op in ops for v in (op.x, op.y)]) as seen:
        session = make_session(model, providers=providers, threads=threads)
        names = [out_name] + [v for op in ops for v in (op.x.name, op.y.name)]
        fetched = session.run([seen.names.get(n, n) for n in names], {session.get_inputs()[0].name: x})
        got = dict(zip(names, fetched))
    report = TwinReport(operators=len(ops))
    dev = next((p.device for p in twin.parameters()), torch.device("cpu"))
    units = {u.y: u for u in twin.units}
    ran_units = {u.y: u for u in twin.program if isinstance(u, Unit)}  # what the twin's forward pass runs
    forced, record = {}, {}
    for op in ops:
        unit = units.get(op.y.name)
        if unit is None:
            raise VerificationError(f"the twin has no operator producing {op.y.name!r}")
        x_ort, y_ort = got[op.x.name], got[op.y.name]
        with torch.no_grad():
            mine = unit(torch.from_numpy(x_ort).to(dev)).cpu().numpy()
        if not np.array_equal(mine, y_ort):
            bad = int(np.sum(mine != y_ort))
            raise VerificationError(f"the twin's operator at {op.x.name!r} differs from the deployed one on {bad} of "
                                    f"{y_ort.size} values of ONNX Runtime's own input (wrong constant or axis)")
        forced[op.y.name] = torch.from_numpy(y_ort).to(dev)
    with torch.no_grad():
        out = twin(torch.from_numpy(x).to(dev), forced=forced, record=record).cpu().numpy()
    for op in ops:
        x_twin = record[op.y.name][0].cpu().numpy()
        x_ort, y_ort = got[op.x.name], got[op.y.name]
        diff, rel = _rel(x_twin, x_ort)
        report.max_rel_diff = max(report.max_rel_diff, rel)
        if rel > rel_tol:
            raise VerificationError(f"the tensor entering the operator at {op.x.name!r} differs from ONNX Runtime's by "
                                    f"{rel:.2g} of its scale (> {rel_tol:g}): the twin is not the deployed model")
        ran = ran_units.get(op.y.name, units[op.y.name])
        flips = decision_flips((x_twin, ran.center.cpu().numpy(), ran.threshold.cpu().numpy()),
                               (x_ort, op.center, op.threshold))
        if flips.any():
            c = np.broadcast_to(op.center, x_ort.shape).astype(np.float64)
            t = np.broadcast_to(op.threshold, x_ort.shape).astype(np.float64)
            edge = np.abs(np.abs(x_ort.astype(np.float64) - c) - t)[flips]
            limit = 2 * diff + 4 * np.spacing(np.float32(max(float(np.max(np.abs(x_ort))), 1e-6)))
            if edge.max() > limit:
                raise VerificationError(f"the twin's operator at {op.x.name!r} decides differently {edge.max():.2g} away "
                                        f"from the band edge (rounding allows {limit:.2g})")
            report.flips += int(flips.sum())
        report.values += x_ort.size
    _, rel = _rel(out, got[out_name])
    report.max_rel_diff = max(report.max_rel_diff, rel)
    if rel > rel_tol:
        raise VerificationError(f"the twin's output differs from ONNX Runtime's by {rel:.2g} of its scale "
                                f"(> {rel_tol:g}) after the last operator")
    return report
