"""Choosing alpha honestly: a sweep on a held-out split of the *training* data.

For each alpha the model is hardened (in a temporary folder, written and self-checked as ``harden``
does, against one session of the base model opened for every alpha), then evaluated on the held-out
split with APGD-CE through the true gradient and through the straight-through (BPDA)
gradient. The chosen alpha maximises the *worse* of the two robust accuracies within a
clean-accuracy budget; test data is never touched. Everything is validated before the first
alpha runs: the budget, every alpha, the stats against the model, the data.

Like ``eval`` (:mod:`~.evaluation`), a sweep runs in chunks: ``shard=(I, N)`` attacks chunks
``I, I + N, ...`` for every alpha and gives a shard report that ``eval merge`` combines (the alpha is
chosen on the merged verdicts); under ``torchrun`` each rank takes its shard and rank 0 chooses;
with ``parts`` finished chunks are kept and an interrupted sweep resumes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mstransform.core.errors import UsageError
from mstransform.core.fileio import atomic_output
from mstransform.core.options import Device, Runtime, check_alpha
from mstransform.core.stats import Stats, load_stats
from mstransform.passes.graph.load import load_model
from mstransform.passes.harden import harden_model
from mstransform.robustness.attacks import AttackConfig, ModelResult, check_classifier, evaluate_model, load_labelled
from mstransform.robustness.chunks import (ChunkStore, Work, check_resume, check_shard, chunk_ranges, of_shard,
                                           run_key)
from mstransform.robustness.alpha_rule import SweepRow, choose_alpha
from mstransform.robustness.plots import plot_sweep
from mstransform.robustness.reports import save_json
from mstransform.runtime import distributed
from mstransform.runtime.inputs import input_specs
from mstransform.runtime.publish import base_session, publish
from mstransform.runtime.session import check_runtime_choice, open_session, providers_for
from mstransform.tools.arguments import checked


@dataclass
class SweepReport:
    """A sweep: one row per alpha, the alpha chosen and why, and every alpha's per-image verdicts."""

    rows: list[SweepRow]
    alpha: float
    reason: str
    max_clean_drop: float
    cfg: AttackConfig
    seconds: float
    results: list[ModelResult] = field(default_factory=list)  # per alpha, with every image's verdicts
    images: int = 0
    shard: tuple[int, int] | None = None
    key: str = ""
    data: str = ""
    primary: bool = True  # False on ranks other than 0 under torchrun
    store: ChunkStore | None = field(default=None, repr=False)
    chunks: list = field(default_factory=list, repr=False)

    def format(self) -> str:
        """The sweep for people: one row per alpha (clean, APGD-CE, BPDA, the worse of the two), and the choice."""
        lines = [f"{'alpha':>6}  {'clean':>6}  {'APGD-CE':>7}  {'BPDA':>6}  {'worst':>6}"]
        lines += [f"{r.alpha:>6g}  {r.clean:6.2f}  {r.standard:7.2f}  {r.bpda:6.2f}  {r.robust:6.2f}" for r in self.rows]
        return "\n".join(lines + [f"chosen: {self.reason}"])

    def to_dict(self) -> dict:
        """The sweep for machines (``sweep --json``): every row, the choice, the settings and every alpha's
        per-image verdicts (which ``eval merge`` reads)."""
        return {"kind": "sweep", "rows": [dataclasses.asdict(r) for r in self.rows], "chosen_alpha": self.alpha,
                "reason": self.reason, "max_clean_drop": self.max_clean_drop, "config": dataclasses.asdict(self.cfg),
                "images": self.images, "data": self.data, "shard": "%d/%d" % self.shard if self.shard else None,
                "key": self.key, "seconds": self.seconds, "results": [dataclasses.asdict(r) for r in self.results]}

    def save(self, json_path=None, csv_path=None, plot_path=None, title: str = "") -> None:
        """Write the sweep as JSON (:meth:`to_dict`), as CSV (one row per alpha) and as a plot, rank 0 only;
        then remove this process's kept chunks."""
        if self.primary:
            self._save(json_path, csv_path, plot_path, title)
        if self.store is not None:
            self.store.clear(self.chunks, len(self.results))

    def _save(self, json_path, csv_path, plot_path, title) -> None:
        if json_path:
            save_json(json_path, self.to_dict())
        if csv_path:
            with atomic_output(csv_path) as tmp:
                Path(tmp).write_text("alpha,clean,apgd_ce,bpda,worst\n" + "".join(
                    f"{r.alpha:g},{r.clean:.2f},{r.standard:.2f},{r.bpda:.2f},{r.robust:.2f}\n" for r in self.rows))
        if plot_path:
            plot_sweep(self.rows, plot_path, title)


@checked
def sweep(model, stats: Stats, data, alphas: list[float], cfg: AttackConfig, *, max_clean_drop: float = 0.5,
          progress: bool = True, log=None, threads: int | None = None, device: Device | str | None = None,
          runtime: Runtime | str = Runtime.ONNXRUNTIME, shard: tuple[int, int] | None = None,
          parts: str | Path | None = None, fresh: bool = False) -> SweepReport:
    """The alpha among ``alphas`` (and 0) whose worse robust accuracy (APGD-CE, BPDA) on labelled held-out
    training ``data`` is highest within ``max_clean_drop`` points of clean accuracy; see the module's docstring.

    ``device``, ``runtime``, ``progress`` and ``log`` as in :func:`~mstransform.tools.evaluation.evaluate`."""
    if not max_clean_drop >= 0:
        raise UsageError(f"must be >= 0 points, got {max_clean_drop}", param="max_clean_drop")
    alphas = sorted({0.0, *(check_alpha(a, "alphas") for a in alphas)})
    if len(alphas) < 2:
        raise UsageError("needs at least one alpha above 0", param="alphas")
    shard, (parts, fresh) = check_shard(shard), check_resume(parts, fresh)
    check_runtime_choice(runtime, device)
    launched = distributed.launched()
    if launched and shard is not None:
        raise UsageError("under torchrun each process sweeps its rank's shard; leave --shard out", param="shard")
    cfg = dataclasses.replace(cfg, attacks=("apgd-ce", "bpda"))
    x, y = load_labelled(data, input_specs(load_model(model)), cfg.n)
    check_classifier(open_session(model, runtime=runtime, threads=threads,
                                  providers=providers_for(device, distributed.local_gpu())), x, y)
    stats = stats if isinstance(stats, Stats) else load_stats(stats)
    key = run_key(cfg, [model], data, runtime, device, alphas=alphas, stats=stats.sha256())
    if not launched:
        return _sweep(model, stats, x, y, alphas, cfg, key, shard, parts, fresh, max_clean_drop, progress, log,
                      threads, device, runtime, data)
    from mstransform.tools.evaluation import gather_results, start_over

    with distributed.process_group(cuda=device is Device.CUDA) as (rank, world):
        start_over(parts, key, fresh, rank)
        report = _sweep(model, stats, x, y, alphas, cfg, key, (rank, world), parts, False, max_clean_drop,
                        progress, log, threads, device, runtime, data)
        gather_results(report.results, len(x))
        (seconds,) = distributed.max_floats([report.seconds])
    merged = _chosen(report.results, cfg, max_clean_drop, seconds, len(x), None, key, str(data))
    merged.store, merged.chunks, merged.primary = report.store, report.chunks, rank == 0
    return merged


def _sweep(model, stats, x, y, alphas, cfg, key, shard, parts, fresh, max_clean_drop, progress, log, threads, device,
           runtime, data) -> SweepReport:
    store = ChunkStore(parts, key, fresh=fresh) if parts is not None else None
    chunks = chunk_ranges(len(x), cfg.batch_size, shard)
    results, t0 = [], time.perf_counter()
    log = of_shard(log, shard)
    work = Work(len(alphas), sum(b - a for a, b in chunks), len(chunks), cfg, log, progress)
    with contextlib.closing(work), tempfile.TemporaryDirectory(prefix="mstransform-sweep-") as tmp:
        harden_model(model, stats, alpha=alphas[-1])  # stats fit the model: fail before any attack
        base = base_session(load_model(model), runtime, threads)  # every alpha's self-check compares with it
        for i, alpha in enumerate(alphas):
            path = Path(model)
            if alpha > 0:
                path = Path(tmp) / f"alpha{alpha:g}.onnx"
                publish(harden_model(model, stats, alpha=alpha), path, base, threads=threads, runtime=runtime)
            r = evaluate_model(f"alpha={alpha:g}", path, x, y, cfg, threads=threads, device=device, runtime=runtime,
                               chunks=chunks, store=store, index=i, work=work)
            results.append(r)
            if log:
                log(f"alpha {alpha:g}: clean {r.accuracy['clean']:.2f}  APGD-CE {r.accuracy['apgd-ce']:.2f}  "
                         f"BPDA {r.accuracy['bpda']:.2f}")
    shard = shard if shard and shard[1] > 1 else None
    report = _chosen(results, cfg, max_clean_drop, time.perf_counter() - t0, len(x), shard, key, str(data))
    report.store, report.chunks = store, chunks
    return report


def _chosen(results, cfg, max_clean_drop, seconds, images, shard, key, data) -> SweepReport:
    """The rows of ``results`` (one per alpha) and the alpha chosen on them; a shard chooses none."""
    rows = [SweepRow(float(r.label.partition("=")[2]), r.accuracy["clean"], r.accuracy["apgd-ce"], r.accuracy["bpda"])
            for r in results]
    if shard:
        alpha, reason = 0.0, (f"none yet: shard {shard[0]}/{shard[1]} holds {results[0].n} of the {images} images; "
                              "merge every shard's --json with `mstransform eval merge`")
    else:
        alpha, reason = choose_alpha(rows, max_clean_drop)
    return SweepReport(rows, alpha, reason, max_clean_drop, cfg, seconds, results, images, shard, key, data)


def merged_sweep(results, cfg, first: dict, extra: dict) -> SweepReport:
    """The sweep report of merged shards (:func:`~.evaluation.merge`): alpha chosen on every image."""
    return _chosen(results, cfg, first["max_clean_drop"], extra["seconds"], extra["images"], None, extra["key"],
                   extra.get("data", ""))
