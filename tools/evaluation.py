"""Robustness evaluation of several ONNX models side by side: the workflow behind ``mstransform eval``.

Every model and the data are opened and checked before the first attack runs (an unreadable
second model must not cost minutes of attacks on the first), and every model must take the
same input as the first.

At dataset scale an evaluation runs in chunks of ``batch_size`` images (:mod:`~.chunks`):

* ``shard=(I, N)`` attacks chunks ``I, I + N, ...`` and gives a shard report; :func:`merge`
  combines the shards' JSON reports into the report of a single run, image by image;
* under ``torchrun`` each process takes its rank's shard and rank 0 gets the merged report
  (gloo on the CPU, NCCL with ``device="cuda"``);
* with ``parts`` (a folder beside the report) each finished chunk's verdicts are kept there as
  they come; the same call after an interruption resumes from them and ends with the report an
  uninterrupted run gives; ``fresh=True`` starts over. The folder is removed once the report is
  written, and only a complete report (or a shard's, marked as one) is ever returned.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mstransform.core.errors import DataError, UsageError
from mstransform.passes.graph.load import load_model
from mstransform.robustness.attacks import AttackConfig, ModelResult, check_classifier, evaluate_model, load_labelled
from mstransform.robustness.chunks import (ChunkStore, Work, accuracy, check_resume, check_shard, chunk_ranges, of_shard,
                                           run_key)
from mstransform.core.options import Device, Runtime
from mstransform.robustness.reports import format_table, merge_reports, read_report, save_csv, save_json
from mstransform.runtime import distributed
from mstransform.runtime.inputs import input_specs
from mstransform.runtime.session import check_runtime_choice, describe, open_session, providers_for
from mstransform.tools.arguments import checked


@dataclass
class EvalReport:
    """An evaluation: every model's accuracies and per-image verdicts, and what they were measured with."""

    results: list[ModelResult]
    cfg: AttackConfig
    data: str
    n: int  # images in the evaluation (a shard attacks some of them)
    seconds: float
    runtime: str = ""  # one line: the runtime and provider every accuracy was measured on
    shard: tuple[int, int] | None = None  # (I, N) for a shard's report; None for a whole evaluation
    key: str = ""  # what the verdicts depend on (settings, models' and data's bytes): shards must share it
    primary: bool = True  # False on ranks other than 0 under torchrun: nothing to print or write
    store: ChunkStore | None = field(default=None, repr=False)
    chunks: list = field(default_factory=list, repr=False)

    def format(self) -> str:
        """The report for people: the threat model, the images, the runtime, then the models side by side."""
        where = f"{self.n} images from {self.data}"
        if self.shard:
            where = (f"shard {self.shard[0]}/{self.shard[1]}: {self.results[0].n} of the {self.n} images from "
                     f"{self.data} (merge every shard's --json with `mstransform eval merge`)")
        return (f"{self.cfg.norm} eps={self.cfg.eps:g}, {where}, seed {self.cfg.seed}; "
                f"accuracy in %; every figure measured on the .onnx file by {self.runtime} ({self.seconds:.0f} s)\n"
                + format_table(self.results))

    def to_dict(self) -> dict:
        """The report for machines (``eval --json``): the settings and every model's accuracies and per-image
        verdicts, which :func:`merge` reads."""
        return {"config": asdict(self.cfg), "results": [asdict(r) for r in self.results], "data": self.data,
                "images": self.n, "shard": "%d/%d" % self.shard if self.shard else None, "key": self.key,
                "runtime": self.runtime, "seconds": self.seconds}

    def save(self, json_path=None, csv_path=None) -> None:
        """Write the report as JSON (:meth:`to_dict`) and as CSV (one row per model), rank 0 only; then remove
        this process's kept chunks."""
        if self.primary and json_path:
            save_json(json_path, self.to_dict())
        if self.primary and csv_path:
            save_csv(csv_path, self.results, self.cfg)
        if self.store is not None:
            self.store.clear(self.chunks, len(self.results))


def parts_folder(json_path=None, csv_path=None) -> Path | None:
    """Where an evaluation keeps its finished chunks: ``REPORT.parts`` beside its JSON (else CSV) report."""
    report = json_path or csv_path
    return None if report is None else Path(report).with_name(Path(report).name + ".parts")


@checked
def evaluate(models: list[str | Path], data, cfg: AttackConfig, *, progress: bool = True, log=None,
             threads: int | None = None, device: Device | str | None = None,
             runtime: Runtime | str = Runtime.ONNXRUNTIME, shard: tuple[int, int] | None = None,
             parts: str | Path | None = None, fresh: bool = False) -> EvalReport:
    """Clean, white-box, black-box and straight-through accuracy of each model on labelled ``data``.

    ``device`` (cpu or cuda) runs ONNX Runtime on that provider and the twin and attacks there;
    ``runtime`` (onnxruntime or openvino) is what every accuracy is measured on. ``progress`` shows a
    bar over the chunks; ``log`` (a callable taking one line) hears the work ahead, an estimate of its
    duration and each model's accuracies. ``shard``, ``parts`` and ``fresh``: see the module's docstring."""
    shard, (parts, fresh) = check_shard(shard), check_resume(parts, fresh)
    check_runtime_choice(runtime, device)  # before any work is announced
    launched = distributed.launched()
    if launched and shard is not None:
        raise UsageError("under torchrun each process evaluates its rank's shard; leave --shard out", param="shard")
    specs = input_specs(load_model(models[0]))
    for path in models[1:]:
        other = input_specs(load_model(path))
        if [(s.name, s.shape) for s in other] != [(s.name, s.shape) for s in specs]:
            raise DataError(f"{path} takes inputs {[(s.name, s.shape) for s in other]}, not those of {models[0]} "
                            f"{[(s.name, s.shape) for s in specs]}; compare models of one architecture")
    x, y = load_labelled(data, specs, cfg.n)
    for path in models:
        session = open_session(path, runtime=runtime, threads=threads,
                               providers=providers_for(device, distributed.local_gpu()))
        check_classifier(session, x, y)
    key = run_key(cfg, models, data, runtime, device)
    if not launched:
        return _run(models, x, y, cfg, key, shard, parts, fresh, progress, log, threads, device, runtime, session,
                    data)
    with distributed.process_group(cuda=device is Device.CUDA) as (rank, world):
        start_over(parts, key, fresh, rank)
        report = _run(models, x, y, cfg, key, (rank, world), parts, False, progress, log, threads, device,
                      runtime, session, data)
        return _gathered(report, rank)


def start_over(parts, key: str, fresh: bool, rank: int) -> None:
    """Under torchrun: with ``fresh``, rank 0 removes the kept chunks before any rank reads them."""
    if fresh and parts is not None and rank == 0:
        ChunkStore(parts, key, fresh=True)
    distributed.barrier()


def _run(models, x, y, cfg, key, shard, parts, fresh, progress, log, threads, device, runtime, session, data):
    store = ChunkStore(parts, key, fresh=fresh) if parts is not None else None
    chunks = chunk_ranges(len(x), cfg.batch_size, shard)
    t0 = time.perf_counter()
    log = of_shard(log, shard)
    work = Work(len(models), sum(b - a for a, b in chunks), len(chunks), cfg, log, progress)
    try:
        results = [evaluate_model(Path(m).stem, m, x, y, cfg, log=log, threads=threads, device=device,
                                  runtime=runtime, chunks=chunks, store=store, index=i, work=work)
                   for i, m in enumerate(models)]
    finally:
        work.close()
    return EvalReport(results, cfg, str(data), len(x), time.perf_counter() - t0, describe(session),
                      shard if shard and shard[1] > 1 else None, key, store=store, chunks=chunks)


def _gathered(report: EvalReport, rank: int) -> EvalReport:
    """Every rank's verdicts overlaid (the merged report, on every rank; rank 0 prints and writes it)."""
    gather_results(report.results, report.n)
    (report.seconds,) = distributed.max_floats([report.seconds])
    report.shard, report.primary = None, rank == 0
    return report


def gather_results(results: list[ModelResult], n: int) -> None:
    """Under torchrun: each result's verdicts overlaid over every rank, seconds summed, the twin check's
    worst figures kept, accuracies recomputed, in place."""
    for r in results:
        names = list(r.verdicts)
        r.verdicts = dict(zip(names, distributed.overlay_verdicts([r.verdicts[k] for k in names])))
        r.seconds = dict(zip(r.seconds, distributed.sum_floats(list(r.seconds.values()))))
        r.twin_max_rel_diff, flips = distributed.max_floats([r.twin_max_rel_diff, float(r.twin_edge_flips)])
        r.twin_edge_flips, r.n = int(flips), n
        r.accuracy = {k: accuracy(v) for k, v in r.verdicts.items()}


def merge(reports: list[str | Path], output: str | Path):
    """The JSON reports of every shard of one evaluation (or one sweep), merged exactly, written to ``output``."""
    docs = [read_report(p) for p in reports]
    results, extra = merge_reports(docs, [str(p) for p in reports])
    cfg = AttackConfig(**{**docs[0]["config"], "attacks": tuple(docs[0]["config"]["attacks"])})
    if docs[0].get("kind") == "sweep":
        from mstransform.tools.sweep import merged_sweep

        report = merged_sweep(results, cfg, docs[0], extra)
    else:
        report = EvalReport(results, cfg, extra["data"], extra["images"], extra["seconds"], extra.get("runtime", ""),
                            None, extra["key"])
    report.save(output)
    return report


__all__ = ["AttackConfig", "EvalReport", "evaluate", "merge", "parts_folder"]
