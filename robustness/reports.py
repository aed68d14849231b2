"""The side-by-side robustness table and its JSON and CSV files."""
from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

from mstransform.core.fileio import atomic_output
from mstransform.robustness.attacks import ATTACKS, AttackConfig, ModelResult


def format_table(results: list[ModelResult]) -> str:
    cols = ["clean", *[a for a in ATTACKS if any(a in r.accuracy for r in results)], "worst-case"]
    head = ["model", "n", *cols, "twin rel.diff", "edge flips"]
    rows = [[r.label, str(r.n), *[f"{r.accuracy[c]:.2f}" if c in r.accuracy else "-" for c in cols],
             f"{r.twin_max_rel_diff:.1e}", str(r.twin_edge_flips)] for r in results]
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths)))
                     for row in [head, *rows])


def write_reports(results: list[ModelResult], cfg: AttackConfig, json_path=None, csv_path=None, extra=None) -> None:
    if json_path:
        payload = {"config": asdict(cfg), "results": [asdict(r) for r in results], **(extra or {})}
        with atomic_output(json_path) as tmp:
            Path(tmp).write_text(json.dumps(payload, indent=2) + "\n")
    if csv_path:
        keys = sorted({k for r in results for k in r.accuracy})
        with atomic_output(csv_path) as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["model", "path", "n", "eps", "norm", *keys])
                for r in results:
                    w.writerow([r.label, r.path, r.n, cfg.eps, cfg.norm, *[f"{r.accuracy.get(k, float('nan')):.2f}"
                                                                          for k in keys]])
