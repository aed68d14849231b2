"""The Python API; the command line is a thin layer over these functions.

``find_sites`` -> ``calibrate`` -> ``harden`` (ONNX) or ``harden_torch`` (PyTorch); the
one-step ``calibrate_and_harden``; ``compare_accuracy`` and ``run`` for inference; evaluation
(``evaluate``, ``merge_eval``) and the alpha sweep (``sweep``) from :mod:`mstransform.tools.evaluation`
and :mod:`mstransform.tools.sweep`, and the plots, so the commands import this module only. Every
function raises :class:`mstransform.core.errors.MstError` subclasses on bad input and never modifies
its inputs.
"""
from __future__ import annotations

import functools
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mstransform.core.errors import UsageError
from mstransform.core.fileio import atomic_output
from mstransform.core.options import (AlphaPlan, Center, Device, Formulation, Mode, Placement, Precision, Runtime,
                                      Selection, choice)
from mstransform.core.stats import Stats, load_stats
from mstransform.deploy.trt_check import TrtCheck
from mstransform.passes import harden as _passes
from mstransform.passes.graph.load import load_model
from mstransform.passes.harden import Hardened, refuse_hardened
from mstransform.passes.sites.finder import SiteTable
from mstransform.passes.sites.onnx_finder import find_sites as _find_sites
from mstransform.passes.sites.plan import nothing_selected
from mstransform.robustness.plots import plot_site_histogram
from mstransform.runtime import publish as _publish
from mstransform.runtime.accuracy import Accuracy, accuracy, is_class_scores, score
from mstransform.runtime.calibrate import SampleHead, calibrate_table
from mstransform.runtime.data import DataSource, Preprocess
from mstransform.runtime.distributed import calibrate_ranks, launched  # launched: for the commands, not public
from mstransform.runtime.inputs import input_specs
from mstransform.runtime.outputs import declared_outputs, gather_outputs
from mstransform.runtime.publish import HardenReport, retract_output
from mstransform.runtime.session import check_runtime_choice, describe, open_session, providers_for
from mstransform.robustness.attacks import AttackConfig
from mstransform.tools.arguments import check_paths, checked, is_torch
from mstransform.tools.bench import bench
from mstransform.tools.evaluation import evaluate, parts_folder  # parts_folder: for the commands, not public
from mstransform.tools.evaluation import merge as merge_eval
from mstransform.tools.site_view import site_fractions
from mstransform.tools.sweep import sweep

__all__ = ["AttackConfig", "Hardened", "HardenReport", "OneStepResult", "RunResult", "TrtCheck", "bench",
           "build_engine", "calibrate", "calibrate_and_harden", "check_trt", "compare_accuracy", "default_output",
           "evaluate", "find_sites", "harden", "harden_model", "harden_torch", "load_model", "load_stats",
           "merge_stats", "package_torch", "run", "site_fractions", "sweep"]

harden_model = checked(_passes.harden_model)  # the pass manager, in memory: mstransform.passes.harden
harden = checked(models_out=("output",))(_publish.harden)  # written and checked: mstransform.runtime.publish

@checked
def find_sites(model, placement: Placement | str = Placement.ACTIVATIONS,
               selection: Selection = Selection()) -> SiteTable:
    """The site table of an ONNX ``model`` (path or ``onnx_ir`` model): sites of ``placement``, narrowed
    and re-axed by ``selection`` (include/exclude patterns, SE branches, channel-axis overrides)."""
    placement = choice(Placement, placement, "placement")
    return _find_sites(load_model(model), placement, selection)


@checked
def calibrate(model, data, *, placement: Placement | str = Placement.ACTIVATIONS, selection: Selection = Selection(),
              batch_size: int = 64,
              limit: int | None = None, preprocess: Preprocess | None = None, progress: bool = True,
              threads: int | None = None, shard: tuple[int, int] | None = None, log=None,
              device: Device | str | None = None, runtime: Runtime | str = Runtime.ONNXRUNTIME,
              extent: bool | None = None, batch_axes: dict[str, int | None] | None = None) -> Stats:
    """Measure per-site statistics of ``model`` on clean ``data``; returns :class:`Stats`.

    ``model`` is an ONNX path or ``onnx_ir`` model, or a torch ``nn.Module`` /
    ``torch.export`` program (then ``data`` is a tensor, array or iterable of batches, and the
    statistics are reduced on the model's own device). ``device`` picks ONNX Runtime's provider
    (None: the best that starts here); ``runtime`` runs the calibration graph on ONNX Runtime or OpenVINO.
    ``extent`` also measures each channel's max ``|x|``, which forged mode needs (None: only for the
    linear-inputs placement, forged mode's own); it costs two more reads of every site tensor.
    ``batch_axes`` names, per input, the axis holding the samples, or None to pass that input whole
    with every batch (default: found from the model, :mod:`mstransform.runtime.inputs`). ``selection``
    narrows the sites (include/exclude patterns, SE branches, channel-axis overrides). Under ``torchrun``
    each rank measures its batches and every rank returns the merged stats (a process group the caller made is
    used as it is).
    """
    placement = choice(Placement, placement, "placement")
    extent = placement is Placement.LINEAR_INPUTS if extent is None else bool(extent)
    if is_torch(model):
        from mstransform.runtime.fx_calibrate import calibrate_fx

        onnx_only = {"selection patterns or axes": selection.include or selection.exclude or selection.axes,
                     "preprocess": preprocess,
                     "threads": threads, "shard": shard, "device": device, "batch_axes": batch_axes,
                     "runtime": None if choice(Runtime, runtime, "runtime") is Runtime.ONNXRUNTIME else runtime}
        given = [k for k, v in onnx_only.items() if v]
        if given:  # refused, not ignored: the FX path runs the module on its own device, on batches as given
            raise UsageError(f"does not apply to torch models (the FX path): {', '.join(given)}", param="model")

        return calibrate_fx(model, data, placement=placement, batch_size=batch_size, limit=limit,
                            include_se=selection.include_se, progress=progress, extent=extent)
    check_runtime_choice(runtime, device)
    m = load_model(model)
    measure = functools.partial(calibrate_table, m, _find_sites(m, placement, selection), data, batch_size=batch_size,
                                limit=limit, preprocess=preprocess, progress=progress, selection=selection, log=log,
                                runtime=runtime, extent=extent, batch_axes=batch_axes)
    return calibrate_ranks(measure, shard=shard, device=device, threads=threads)  # under torchrun: the merge


@checked
def harden_torch(model, stats: Stats | str | Path, alpha: float | AlphaPlan = 0.2, *,
                 mode: Mode | str = Mode.MEANSPARSE, center: Center | str = Center.MEAN, example: tuple | None = None):
    """A hardened ``GraphModule`` of a torch ``nn.Module``, ``torch.export`` program or GraphModule.

    ``stats`` are checked against the model first, as :func:`harden` checks them: site names (kinds and
    channel counts by position where the graph is another capture of the model) and every site's channel
    count, read from the graph's shapes -- a traced module's from ``example`` or, without it, from the
    calibration samples the stats record. Another model's stats raise :class:`StatsError` here."""
    from mstransform.passes.fx.transform import harden_fx

    if not is_torch(model):
        raise UsageError("is not a torch model; use mstransform.harden for ONNX models", param="model")
    return harden_fx(model, stats if isinstance(stats, Stats) else load_stats(stats), alpha, mode=mode,
                     center=center, example=example)


@checked
def package_torch(model, stats: Stats | str | Path, example: tuple, output: str | Path,
                  alpha: float | AlphaPlan = 0.2, *, mode: Mode | str = Mode.MEANSPARSE,
                  center: Center | str = Center.MEAN, dynamic_batch: tuple[int, int] | None = (1, 1024)) -> Path:
    """Harden a torch model (``nn.Module`` or ``torch.export`` program) and write it as an AOTInductor
    package (``.pt2``) that runs from Python or C++ (libtorch) with no model code."""
    from mstransform.deploy.aoti import package_module

    hardened = harden_torch(model, stats, alpha, mode=mode, center=center, example=example)
    return package_module(hardened, example, output, dynamic_batch=dynamic_batch)


@dataclass
class OneStepResult:
    """What :func:`calibrate_and_harden` wrote: the statistics (and their file) and the hardening report."""

    stats: Stats
    stats_path: Path
    report: HardenReport
    seconds: float = 0.0  # the calibration's wall-clock time

    def to_dict(self) -> dict:
        """Both steps for machines: the hardening report, with the statistics file it was made from."""
        return {**self.report.to_dict(), "stats_file": str(self.stats_path)}

    def format(self) -> str:
        """Both steps for people: the statistics measured and their file, then the hardening report."""
        return (f"calibrated {len(self.stats)} site(s) on {self.stats.samples} sample(s) in {self.seconds:.1f} s; "
                f"wrote {self.stats_path}\n{self.report.format()}")


@checked(models_out=("output",))
def calibrate_and_harden(model: str | Path, data, *, output: str | Path, stats_output: str | Path,
                         alpha: float | AlphaPlan = 0.2, mode: Mode | str = Mode.MEANSPARSE,
                         center: Center | str = Center.MEAN, formulation: Formulation | str = Formulation.WHERE,
                         placement: Placement | str | None = None, selection: Selection = Selection(),
                         batch_size: int = 64,
                         limit: int | None = None, preprocess: Preprocess | None = None, verify: bool = True,
                         threads: int | None = None, log=None, precision: Precision | str = Precision.FP32,
                         runtime: Runtime | str = Runtime.ONNXRUNTIME,
                         batch_axes: dict[str, int | None] | None = None) -> OneStepResult:
    """Calibrate on ``data``, harden with the new stats (probing with real data), and write both files.

    ``data`` is read once, as calibration reads it (a generator or a ``DataLoader`` works): every sample
    counts in the stats, and the self-check's probe is the first samples of the first batch, kept as
    calibration read them.

    ``runtime`` runs the calibration and the self-check; ``precision`` is that of the written model;
    ``selection``'s include/exclude patterns choose which calibrated sites are hardened.

    All or nothing: outputs are checked against every input first, and if any step fails
    neither the hardened model nor the stats file is left behind.
    """
    mode = choice(Mode, mode, "mode")
    placement = choice(Placement, placement or (Placement.LINEAR_INPUTS if mode is Mode.FORGED
                                                else Placement.ACTIVATIONS), "placement")
    m = load_model(model)
    found = _find_sites(m, placement)
    chosen = [s.name for s in found if selection.rejects((s.name, s.feed_name)) is None]
    if len(found) and not chosen:  # before the expensive step, not after it
        raise nothing_selected(selection, len(found), "harden")
    AlphaPlan.of(alpha).per_site(chosen)
    refuse_hardened(m)
    check_runtime_choice(runtime)
    t0 = time.perf_counter()
    keep = SampleHead(min(batch_size, 8))  # the probe: the first samples calibration reads, never read twice
    stats = calibrate_table(m, found, data, batch_size=batch_size, limit=limit, preprocess=preprocess or Preprocess(),
                            threads=threads, log=log, runtime=runtime, providers=providers_for(None),
                            extent=mode is Mode.FORGED or placement is Placement.LINEAR_INPUTS,
                            batch_axes=batch_axes, keep=keep)
    probe, seconds = keep.inputs, time.perf_counter() - t0
    # the model loaded above, its outputs checked once (@checked): publishes nothing when it fails
    report = _publish.harden(m, stats, output, alpha=alpha, mode=mode, center=center, formulation=formulation,
                             selection=selection, probe=probe, verify=verify, threads=threads, precision=precision,
                             runtime=runtime)
    try:
        stats.save(stats_output)  # atomic: a failed save leaves no file of its own
    except BaseException:
        retract_output(report)  # only the model this call published, never another run's
        raise
    return OneStepResult(stats, stats_output, report, seconds)


@checked
def compare_accuracy(models: list[str | Path], data, *, batch_size: int = 64, preprocess: Preprocess | None = None,
                     threads: int | None = None, runtime: Runtime | str = Runtime.ONNXRUNTIME,
                     batch_axes: dict[str, int | None] | None = None) -> list[Accuracy]:
    """Clean accuracy of each model on labelled ``data``, measured by ``runtime``."""
    specs = input_specs(load_model(models[0]), batch_axes)
    return [accuracy(open_session(p, runtime=runtime, threads=threads),
                     DataSource(data, specs, batch_size=batch_size, preprocess=preprocess or Preprocess()))
            for p in models]


@checked
def default_output(model: str | Path, mode: Mode | str = Mode.MEANSPARSE) -> Path:
    """Where a hardened model goes when no output is named: ``MODEL.<mode>.onnx`` next to the input."""
    model = Path(model)
    return model.with_name(f"{model.stem}.{choice(Mode, mode, 'mode').value}.onnx")


def default_stats_output(output: str | Path) -> Path:
    """Where the one-step form keeps its statistics when no path is named: ``OUT.stats.npz``."""
    output = Path(output)
    return output.with_name(output.stem + ".stats.npz")


@checked
def merge_stats(paths: list[str | Path], output: str | Path) -> Stats:
    """Merge shards (Chan's rule in float64) and write the result to ``output``; returns the merged stats."""
    out = output  # checked against every input by @checked
    if not paths:
        raise UsageError("names no stats file to merge", param="stats")
    parts = [load_stats(p) for p in paths]
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    merged.save(out)
    return merged


@checked
def check_trt(model, version: str | None = None, *, fp16: bool = False) -> TrtCheck:
    """The static TensorRT compatibility check of ``model`` against one release's ONNX parser facts."""
    from mstransform.deploy.trt_check import DEFAULT_VERSION, release_table
    from mstransform.deploy.trt_check import check_trt as _check

    version = version or DEFAULT_VERSION
    release_table(version)  # an unknown version is refused before the model is read
    return TrtCheck(version, _check(load_model(model), version, fp16=fp16), fp16)


@checked
def build_engine(model: str | Path, output: str | Path, *, shapes: str | None = None, fp16: bool = False,
                 bf16: bool = False, workspace_mib: int = 1024, timing_cache: str | Path | None = None) -> Path:
    """A TensorRT engine of ``model`` written to ``output``; ``shapes`` is MIN/OPT/MAX (batch sizes or
    ``NAME:1x3x224x224/...`` per input). Needs TensorRT (DependencyError otherwise)."""
    from mstransform.deploy.trt_engine import build_engine as _build
    from mstransform.deploy.trt_engine import import_tensorrt, parse_shapes

    out = output  # checked against the model, its external data and the timing cache by @checked
    specs = input_specs(load_model(model))
    unknown = [s.name for s in specs if s.shape is None]
    if unknown:
        raise UsageError(f"input {unknown[0]!r} has no known shape; TensorRT needs ranked inputs (re-export with shapes)",
                         param="model")
    if not 1 <= workspace_mib <= 1 << 20:
        raise UsageError(f"must be between 1 and 1048576 MiB, got {workspace_mib}", param="workspace")
    profile = parse_shapes(shapes, {s.name: s.shape for s in specs})
    import_tensorrt()
    return _build(model, out, fp16=fp16, bf16=bf16, profile=profile, workspace_mib=workspace_mib,
                  timing_cache=timing_cache)


@dataclass
class RunResult:
    runtime: str  # one line: the runtime and the provider that ran the model
    predictions: np.ndarray | None  # arg-max of the first output where it holds class scores, else None
    accuracy: Accuracy | None  # where the first output holds class scores and the data has labels
    notes: list[str]  # about the data and the outputs, one line each (e.g. empty class folders)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # every tensor output, by name, in graph order
    output_axes: dict[str, int | None] = field(default_factory=dict)  # each output's batch axis (None: none)
    samples: int = 0
    reads: dict = field(default_factory=dict, repr=False)  # role -> path of what the run read: never saved over
    providers_note: str = ""  # why these providers (the preferred order, what this build lacks)

    def to_dict(self) -> dict:
        """The run for machines (``run --json``): the runtime, every output's shape, type and batch axis, and
        the accuracy where there is one (the arrays themselves go to ``save``)."""
        acc = None if self.accuracy is None else self.accuracy.to_dict()
        return {"runtime": self.runtime, "samples": self.samples, "accuracy": acc, "notes": list(self.notes),
                "outputs": {name: {"shape": list(a.shape), "dtype": str(a.dtype), "batch_axis": self.output_axes.get(name)}
                            for name, a in self.outputs.items()}}

    def format(self) -> str:
        """The run for people: the runtime, then the accuracy, else the first predictions, else every output's
        shape, type and batch axis (the notes are the caller's to show, as warnings)."""
        if self.accuracy is not None:
            result = self.accuracy.format()
        elif self.predictions is not None:
            preds = self.predictions
            result = f"predictions for {len(preds)} sample(s): {preds[:20].tolist()}{' ...' if len(preds) > 20 else ''}"
        else:
            result = f"outputs for {self.samples} sample(s): {self._outputs_line()}"
        return f"{self.runtime}\n{result}"

    def _outputs_line(self) -> str:
        """``boxes [100,7,4] float32 (batch axis 0), anchors [7,4] float32 (no batch axis)``."""
        parts = []
        for name, array in self.outputs.items():
            axis = self.output_axes.get(name)
            parts.append(f"{name} [{','.join(map(str, array.shape))}] {array.dtype} "
                         f"({'no batch axis' if axis is None else f'batch axis {axis}'})")
        return ", ".join(parts) or "none is a tensor"

    def save(self, path: str | Path) -> Path:
        """Write atomically: a ``.npz`` path gets every output under its name (joined along its batch
        axis), any other path the predictions as a ``.npy`` file (class scores only). A file the run
        read (the model, its external data, the data) is never the output."""
        path = check_paths({**self.reads, "output": path})["output"]
        if path.suffix.lower() == ".npz":
            with atomic_output(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
                for name, array in self.outputs.items():  # not np.savez: an output may be called 'file'
                    with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                        np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)
            return path
        if self.predictions is None:
            first = next(iter(self.outputs), "?")
            raise UsageError(f"{path}: output {first!r} holds no class scores, so there are no predictions to "
                             "write; name a .npz file to write every output", param="output")
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, self.predictions)
        return path


@checked
def run(model: str | Path, data, *, providers: list[str | tuple[str, dict]] | None = None, batch_size: int = 64,
        limit: int | None = None, preprocess: Preprocess | None = None, threads: int | None = None,
        runtime: Runtime | str = Runtime.ONNXRUNTIME, batch_axes: dict[str, int | None] | None = None,
        device: Device | str | None = None) -> RunResult:
    """Batch inference in ONNX Runtime or OpenVINO on any model: every output, joined along its batch
    axis (:mod:`mstransform.runtime.outputs`); where the first output holds class scores
    ``(batch, classes)``, the arg-max predictions too, and the accuracy when ``data`` has labels.
    ``device`` picks ONNX Runtime's providers as in :func:`calibrate`; ``providers`` names them."""
    m = load_model(model)
    session = open_session(model, runtime=runtime, device=device, providers=providers, threads=threads)
    specs = input_specs(m, batch_axes)
    source = DataSource(data, specs, batch_size=batch_size, limit=limit, preprocess=preprocess or Preprocess())
    declared = declared_outputs(m)
    got = gather_outputs(session, source, declared, specs)
    notes = [*source.notes, *got.notes]
    first = next(iter(declared))
    scores = got.arrays.get(first)
    preds = acc = None
    if scores is not None and is_class_scores(scores, got.samples, got.batch_axes.get(first)):
        preds, acc = score(scores, got.labels)
    elif got.labels is not None:
        shape = "a sequence or map" if scores is None else f"shape {list(scores.shape)}"
        notes.append(f"mstransform: warning: the data has labels, but output {first!r} ({shape}) holds no class "
                     "scores (batch, classes): no accuracy")
    return RunResult(describe(session), preds, acc, notes, got.arrays, got.batch_axes, got.samples,
                     {"model": model, "data": data if isinstance(data, Path) else None}, session.why)
