"""Choosing alpha honestly: a sweep on a held-out split of the *training* data.

For each alpha the model is hardened (in a temporary folder), then evaluated on the held-out
split with APGD-CE through the true gradient and through the straight-through (BPDA)
gradient. The chosen alpha maximises the *worse* of the two robust accuracies within a
clean-accuracy budget; test data is never touched. Everything is validated before the first
alpha runs: the budget, every alpha, the stats against the model, the data.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mstransform.core.errors import UsageError
from mstransform.core.fileio import atomic_output
from mstransform.core.options import check_alpha
from mstransform.core.stats import Stats
from mstransform.passes.prepare import load_model
from mstransform.robustness.attacks import AttackConfig, check_classifier, evaluate_model, load_labelled
from mstransform.robustness.plots import plot_sweep
from mstransform.robustness.selection import SweepRow, choose_alpha
from mstransform.runtime.inputs import input_specs
from mstransform.runtime.session import make_session, providers_for
from mstransform.tools.harden import harden, harden_model


@dataclass
class SweepReport:
    rows: list[SweepRow]
    alpha: float
    reason: str
    max_clean_drop: float
    cfg: AttackConfig
    seconds: float

    def table(self) -> str:
        lines = [f"{'alpha':>6}  {'clean':>6}  {'APGD-CE':>7}  {'BPDA':>6}  {'worst':>6}"]
        lines += [f"{r.alpha:>6g}  {r.clean:6.2f}  {r.standard:7.2f}  {r.bpda:6.2f}  {r.robust:6.2f}" for r in self.rows]
        return "\n".join(lines + [f"chosen: {self.reason}"])

    def write(self, json_path=None, csv_path=None, plot_path=None, title: str = "") -> None:
        if json_path:
            payload = {"rows": [dataclasses.asdict(r) for r in self.rows], "chosen_alpha": self.alpha,
                       "reason": self.reason, "max_clean_drop": self.max_clean_drop,
                       "config": dataclasses.asdict(self.cfg)}
            with atomic_output(json_path) as tmp:
                Path(tmp).write_text(json.dumps(payload, indent=2) + "\n")
        if csv_path:
            with atomic_output(csv_path) as tmp:
                Path(tmp).write_text("alpha,clean,apgd_ce,bpda,worst\n" + "".join(
                    f"{r.alpha:g},{r.clean:.2f},{r.standard:.2f},{r.bpda:.2f},{r.robust:.2f}\n" for r in self.rows))
        if plot_path:
            plot_sweep(self.rows, plot_path, title)


def sweep(model, stats: Stats, data, alphas: list[float], cfg: AttackConfig, *, max_clean_drop: float = 0.5,
          progress=None, threads: int | None = None, device=None) -> SweepReport:
    if not max_clean_drop >= 0:
        raise UsageError(f"must be >= 0 points, got {max_clean_drop}", param="max_clean_drop")
    alphas = sorted({0.0, *(check_alpha(a, "alphas") for a in alphas)})
    if len(alphas) < 2:
        raise UsageError("needs at least one alpha above 0", param="alphas")
    cfg = dataclasses.replace(cfg, attacks=("apgd-ce", "bpda"))
    x, y = load_labelled(data, input_specs(load_model(model)), cfg.n)
    check_classifier(make_session(model, threads=threads, providers=providers_for(device)), x, y)
    rows, t0 = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mstransform-sweep-") as tmp:
        harden_model(model, stats, alpha=alphas[-1])  # stats fit the model: fail before any attack
        for alpha in alphas:
            path = Path(model)
            if alpha > 0:
                path = Path(tmp) / f"alpha{alpha:g}.onnx"
                harden(model, stats, path, alpha=alpha, threads=threads)
            r = evaluate_model(f"alpha={alpha:g}", path, x, y, cfg, threads=threads, device=device)
            rows.append(SweepRow(alpha, r.accuracy["clean"], r.accuracy["apgd-ce"], r.accuracy["bpda"]))
            if progress:
                progress(f"alpha {alpha:g}: clean {rows[-1].clean:.2f}  APGD-CE {rows[-1].standard:.2f}  "
                         f"BPDA {rows[-1].bpda:.2f}")
    alpha, reason = choose_alpha(rows, max_clean_drop)
    return SweepReport(rows, alpha, reason, max_clean_drop, cfg, time.perf_counter() - t0)
