"""The side-by-side robustness table, its JSON and CSV files, and the exact merge of shard reports.

A JSON report holds every image's verdict per attack (:mod:`~.chunks`), so shards of one
evaluation merge exactly: the merged verdicts are those of a single run, and every accuracy is
recomputed from them.
"""
from __future__ import annotations

import csv
import json
from dataclasses import fields
from pathlib import Path

from mstransform.core.errors import DataError, UsageError
from mstransform.core.fileio import atomic_output
from mstransform.robustness.attacks import ATTACKS, AttackConfig, ModelResult
from mstransform.robustness.chunks import NOT_HERE, accuracy, overlay


def format_table(results: list[ModelResult]) -> str:
    """The models side by side: clean, each attack's and worst-case accuracy, and the twin check's figures."""
    cols = ["clean", *[a for a in ATTACKS if any(a in r.accuracy for r in results)], "worst-case"]
    head = ["model", "n", *cols, "twin rel.diff", "edge flips"]
    rows = [[r.label, str(r.n), *[f"{r.accuracy[c]:.2f}" if c in r.accuracy else "-" for c in cols],
             f"{r.twin_max_rel_diff:.1e}", str(r.twin_edge_flips)] for r in results]
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths)))
                     for row in [head, *rows])


def save_json(path, document: dict) -> None:
    """A report's JSON (``to_dict``) at ``path``, written whole or not at all."""
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(document, indent=2) + "\n")


def save_csv(path, results: list[ModelResult], cfg: AttackConfig) -> None:
    """One row per model: its label, path, images, threat model and every accuracy, written whole or not at all."""
    keys = sorted({k for r in results for k in r.accuracy})
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["model", "path", "n", "eps", "norm", *keys])
            for r in results:
                w.writerow([r.label, r.path, r.n, cfg.eps, cfg.norm, *[f"{r.accuracy.get(k, float('nan')):.2f}"
                                                                      for k in keys]])


def read_report(path) -> dict:
    """An ``eval --json`` (or ``sweep --json``) report, checked to hold per-image verdicts."""
    try:
        doc = json.loads(Path(path).read_text())
        ok = isinstance(doc, dict) and {"config", "results", "key", "images"} <= doc.keys() and all(
            isinstance(r, dict) and isinstance(r.get("verdicts"), dict) and r["verdicts"] for r in doc["results"])
    except (UnicodeDecodeError, ValueError):
        ok = False
    if not ok:
        raise DataError(f"{path} is not a report of `mstransform eval --json` or `sweep --json` with per-image "
                        "verdicts")
    return doc


def merge_reports(docs: list[dict], names: list[str]) -> tuple[list[ModelResult], dict]:
    """The results of shards of one evaluation as one run's: verdicts overlaid, accuracies recomputed
    from them, seconds summed, the twin check's worst figures kept; and the report's other fields."""
    if not docs:
        raise UsageError("names no report to merge")
    first = docs[0]
    for doc, name in zip(docs[1:], names[1:]):
        if doc["key"] != first["key"] or doc["config"] != first["config"] or doc["images"] != first["images"] \
                or doc.get("kind") != first.get("kind") \
                or [r["label"] for r in doc["results"]] != [r["label"] for r in first["results"]]:
            raise UsageError(f"{name} is a report of another evaluation than {names[0]} (settings, models or data "
                             "differ); merge the shards of one evaluation")
    known = {f.name for f in fields(ModelResult)}
    results = []
    for i, base in enumerate(first["results"]):
        parts = [doc["results"][i] for doc in docs]
        verdicts = {k: overlay([p["verdicts"][k] for p in parts], f"model {base['label']}: {k}")
                    for k in base["verdicts"]}
        missing = max(v.count(NOT_HERE) for v in verdicts.values())
        if missing:
            raise UsageError(f"the reports leave {missing} of {first['images']} images unevaluated: "
                             "merge every shard of the split")
        seconds = {k: sum(p["seconds"].get(k, 0.0) for p in parts) for k in base["seconds"]}
        r = ModelResult(**{k: v for k, v in base.items() if k in known})
        r.n = first["images"]
        r.twin_max_rel_diff = max(p["twin_max_rel_diff"] for p in parts)
        r.twin_edge_flips = max(p["twin_edge_flips"] for p in parts)
        r.verdicts, r.seconds = verdicts, seconds
        r.accuracy = {k: accuracy(v) for k, v in verdicts.items()}
        results.append(r)
    extra = {k: v for k, v in first.items() if k not in ("config", "results")}
    extra["shard"] = None
    extra["seconds"] = sum(doc.get("seconds", 0.0) for doc in docs)
    return results, extra
