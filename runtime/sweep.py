"""Choosing alpha honestly: a sweep on a held-out split of the *training* data.

For each alpha the model is hardened (in a temporary folder), then evaluated on the
held-out split with APGD-CE through the true gradient and through the straight-through
(BPDA) gradient. The chosen alpha maximises the *worse* of the two robust accuracies
within a clean-accuracy budget; test data is never touched.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from mstransform.runtime.robustness import AttackConfig, SweepRow, evaluate_model, load_labelled


def sweep(model, stats, data, alphas: list[float], cfg: AttackConfig, progress=None, threads=None) -> list[SweepRow]:
    from mstransform.tools.api import harden, load_model
    from mstransform.runtime.session import input_specs

    x, y = load_labelled(data, input_specs(load_model(model)), cfg.n)
    cfg = AttackConfig(**{**cfg.__dict__, "attacks": ("apgd-ce", "bpda")})
    rows = []
    with tempfile.TemporaryDirectory(prefix="mstransform-sweep-") as tmp:
        for alpha in sorted(set([0.0, *alphas])):
            path = Path(model)
            if alpha > 0:
                path = Path(tmp) / f"alpha{alpha:g}.onnx"
                harden(model, stats, alpha=alpha, output=path, threads=threads)
            r = evaluate_model(f"alpha={alpha:g}", path, x, y, cfg, threads=threads)
            rows.append(SweepRow(alpha, r.accuracy["clean"], r.accuracy["apgd-ce"], r.accuracy["bpda"]))
            if progress:
                progress(f"alpha {alpha:g}: clean {rows[-1].clean:.2f}  APGD-CE {rows[-1].standard:.2f}  "
                         f"BPDA {rows[-1].bpda:.2f}")
    return rows
