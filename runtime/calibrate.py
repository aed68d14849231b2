"""Calibration: run the model on clean data and measure every site's per-channel statistics.

The statistics are reduced where the data is: each site tensor gets an in-graph reduction
(:mod:`mstransform.passes.onnx.reductions`) to a few channel-sized vectors -- shifted sums,
sums of squares, max and min -- so a session returns kilobytes per batch on any execution
provider (CPU, CUDA, TensorRT) and never copies a site tensor to the host. The host turns
each batch into float64 moments and merges them with Chan's rule, so batch size, shards and
ranks agree up to the float32 sums inside one batch. The graph carries the reductions only
while the session is made (nothing is written to disk); memory is that of one batch plus
O(channels) per site, whatever the number of samples. ``docs/method.md`` derives the
numerical guarantee.
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx_ir as ir

from mstransform.core.errors import DataError, ModelError
from mstransform.core.moments import MAX_OFFSET_RATIO, Moments, offset_ratio
from mstransform.core.options import Runtime, Selection
from mstransform.core.stats import InputRecord, SiteStats, Stats
from mstransform.passes.graph.expose import exposed
from mstransform.passes.graph.fingerprint import fingerprint, weights_digest
from mstransform.passes.onnx.reductions import Reduction, fixable, reducing
from mstransform.passes.sites.placement import axis_by_rank, channel_axis
from mstransform.passes.sites.finder import Site, SiteTable
from mstransform.passes.sites.onnx_finder import OnnxView, find_sites
from mstransform.passes.sites.plan import nothing_selected
from mstransform.runtime.accuracy import is_class_scores
from mstransform.runtime.data import DataSource, Preprocess, head
from mstransform.runtime.inputs import input_specs
from mstransform.runtime.session import describe, open_session, run_step

MAX_RESUMS = 2  # a batch is summed at most this many more times, each with a shift nearer its mean
# samples whose means place the shifts: channel means vary from sample to sample, so one sample left
# ViT-B/16's first batch of 32 at offset ratio 0.60 (a second full run); four left it at 0.17
PROBE_SAMPLES = 4


def calibrate_table(model: ir.Model, table: SiteTable, source, *, batch_size: int = 64, limit: int | None = None,
                    preprocess: Preprocess | None = None, progress: bool = True, providers=None, threads=None,
                    selection: Selection = Selection(), shard: tuple[int, int] | None = None, log=None,
                    runtime: Runtime | str = Runtime.ONNXRUNTIME, extent: bool = True,
                    batch_axes: dict[str, int | None] | None = None, keep: SampleHead | None = None) -> Stats:
    """Measure statistics for the sites of ``table`` in ``model`` over ``source``.

    ``runtime`` runs the graph with its reductions: ONNX Runtime (on ``providers``) or OpenVINO.
    ``extent`` also measures each channel's max ``|x|`` (forged mode needs it; two more reads).

    ``log`` (a callable taking one line) hears when the first batch has gone through: the sign
    of progress the command line prints (bad data fails before it, with one line), and a warning
    where the model's own outputs on the data are degenerate (:class:`OutputWatch`; without ``log``,
    a Python warning). ``keep`` keeps the first samples calibration read (a probe for the self-check
    that takes nothing from a one-shot iterable)."""
    if len(table) == 0:
        if selection.include or selection.exclude:
            every = find_sites(model, table.placement, Selection(include_se=selection.include_se))
            if len(every):
                raise nothing_selected(selection, len(every), "calibrate")
        raise ModelError("the model has no sites to calibrate; `mstransform sites` says why")
    data = source if isinstance(source, DataSource) else DataSource(
        source, input_specs(model, batch_axes), batch_size=batch_size, limit=limit,
        preprocess=preprocess or Preprocess())
    if log is not None:
        for note in getattr(data, "notes", []):
            log(note)
    fp = fingerprint(model)
    run: ReducedRun | None = None
    watch = OutputWatch()
    samples = 0
    inputs: tuple[InputRecord, ...] = ()
    bar = _progress(len(data), progress)
    try:
        for k, batch in enumerate(data):
            if shard is not None and k % shard[1] != shard[0]:
                continue
            if run is None:
                inputs = tuple(InputRecord.of(spec.name, batch.inputs[spec.name], spec.batch_axis)
                               for spec in data.specs)
                layout = site_layout(model, table, batch.inputs, providers, threads, runtime, data.axes)
                few = 0 < len(data) <= 2 * data.batch_size  # a second session would not pay for itself
                run = ReducedRun(model, table, layout, providers, threads, runtime, extent, fix_shifts=not few,
                                 batch_axes=data.axes)
            run.add(batch.inputs, batch.start)
            watch.add(run.output, len(batch), run.output_name)
            if keep is not None:
                keep.add(batch.inputs, data.axes)
            if samples == 0 and log is not None:  # the first batch went through: the data fits
                with bar.external_write_mode():  # the line above the bar, not printed onto it
                    log(f"calibrating {len(table)} site(s) on {data.origin}; {describe(run.session)}")
            samples += len(batch)
            bar.update(len(batch))
    finally:
        bar.close()
    if run is None or samples == 0:
        raise DataError("no samples were calibrated (empty data, or an empty shard)")
    sites, unreached = {}, []
    for s in table:
        moments = run.moments_of(s)
        if moments is None:
            if s.graph == "main":  # the main graph always runs: a site there that saw nothing holds no values
                raise DataError(f"site {s.name!r} saw no values on the calibration data (a tensor with no elements); "
                                "exclude it")
            unreached.append(s.name)  # inside a branch or loop that no calibration sample reached
            continue
        axis, rank, _ = run.layout[s.name]
        dtype = np.dtype(s.feed.dtype.numpy()).name if s.feed.dtype is not None else "float32"
        sites[s.name] = SiteStats(s.name, s.feed.name, s.kind, axis, rank, dtype, moments)
    if not sites:
        raise DataError(f"no site was reached by the calibration data ({len(unreached)} inside branches or loops "
                        "that it never entered)")
    if unreached and log is not None:
        log(f"note: {len(unreached)} site(s) inside branches or loops that no sample reached are left unhardened: "
            + ", ".join(unreached[:3]) + (" ..." if len(unreached) > 3 else ""))
    watch.report(log)
    return Stats(fp, table.placement, sites, samples, selection, inputs, tuple(unreached), weights_digest(model))


def site_layout(model: ir.Model, table: SiteTable, feed: dict, providers=None, threads=None,
                runtime: Runtime | str = Runtime.ONNXRUNTIME,
                batch_axes: dict[str, int | None] | None = None) -> dict[str, tuple[int, int, int]]:
    """(channel axis, rank, channels) per site, from the static shapes.

    Where a rank or channel count is not known statically, one sample of ``feed`` runs with
    those tensors exposed, and their shapes are read off it.
    """
    layout = {}
    for s in table:
        shape = s.feed.shape
        if shape is not None:
            axis = s.axis if s.axis is not None else _channel_axis(s, len(shape))
            if 0 <= axis < len(shape) and isinstance(shape[axis], int):
                layout[s.name] = (axis, len(shape), shape[axis])
    unknown = [s for s in table if s.name not in layout]
    if unknown:
        values = list({id(s.feed): s.feed for s in unknown}.values())  # by identity: bodies reuse value names
        with exposed(model, values) as seen:
            session = open_session(model, runtime=runtime, providers=providers, threads=threads)
        names = [seen.name_of(v) for v in values]
        outs = dict(zip(names, _run(session, names, head(feed, 1, batch_axes), 0)))
        for s in unknown:
            x = outs[seen.name_of(s.feed)]
            if x.size == 0:
                continue  # inside a branch or loop this sample did not reach: no shape to read
            shape = x.shape[seen.levels_of(s.feed):]  # loop bodies: iterations stacked in front
            axis = s.axis if s.axis is not None else _channel_axis(s, len(shape))
            layout[s.name] = (axis, len(shape), shape[axis])
    return layout


def _channel_axis(site: Site, rank: int) -> int:
    """The catalogue's channel axis for a site whose rank is known only now (read off a run)."""
    axis, _ = channel_axis(OnnxView(site.feed.graph), site.feed, rank)
    return axis if axis is not None else axis_by_rank(rank)[0]


class ReducedRun:
    """One session that carries the in-graph reductions, and the float64 moments folded from it.

    Each distinct (tensor, axis) is reduced once, however many sites share it; a tensor is known by
    its value object, not its name (two ``If`` branches may each hold a ``t``). The shifts are
    placed at the means of the first ``PROBE_SAMPLES`` samples and, after every batch, at the mean so far
    (the best estimate of the next batch's mean: one batch's own mean left ViT-B/16's batches at offset
    ratios of 0.20-0.28, a second run for every few batches; the mean so far leaves them at 0.04-0.08).
    A batch whose mean still lies far from its shift, relative to its spread (:func:`offset_ratio`
    above ``MAX_OFFSET_RATIO``), is summed again with the shift moved to that batch's mean.

    On ONNX Runtime's CPU provider the shifts of NCHW sites are fixed in the graph at the first
    batch's means, so their reductions run in its blocked layout (:mod:`mstransform.passes.onnx.reductions`).
    Moving a fixed shift takes a new session, so a site whose batch lies far from its fixed shift is
    reduced with a fed shift from then on (one rebuild, however often its batches wander); the rest
    stay fixed. ``builds`` counts the sessions built; ``fix_shifts=False`` feeds every shift (one session).

    The same run also fetches the graph's first output where it is a float tensor (``output``, the last
    batch's): the model's own answers on the calibration data, at the cost of one small copy per batch.
    """

    def __init__(self, model: ir.Model, table: SiteTable, layout: dict[str, tuple[int, int, int]], providers=None,
                 threads=None, runtime: Runtime | str = Runtime.ONNXRUNTIME, extent: bool = True,
                 fix_shifts: bool = True, batch_axes: dict[str, int | None] | None = None):
        self.layout, self.model, self.extent, self.fix_shifts = layout, model, extent, fix_shifts
        self.batch_axes = batch_axes
        self.options = dict(runtime=runtime, providers=providers, threads=threads, memory_pattern=False)
        sites: dict[tuple[int, int], Site] = {}
        for s in table:
            if s.name in layout:  # a body site that the first batch did not reach has no known rank
                sites.setdefault(self._key(s), s)
        self.keys = list(sites)
        self.targets = [(s.feed, layout[s.name][0], layout[s.name][1]) for s in sites.values()]
        self.site_names = [s.name for s in sites.values()]
        self.channels = [layout[s.name][2] for s in sites.values()]
        self.shifts = [np.zeros(c, np.float32) for c in self.channels]
        self.fixed_sites: set[int] = set()  # indices of targets whose shift is fixed in the graph
        self.moments: dict[tuple[int, int], Moments] = {}
        first = model.graph.outputs[0] if len(model.graph.outputs) else None
        floats = first is not None and first.dtype is not None and first.dtype.is_floating_point()
        self.output_name: str | None = first.name if floats else None
        self.output: np.ndarray | None = None  # the last run's first graph output
        self.builds = 0
        self._open()

    def _key(self, site: Site) -> tuple[int, int]:
        return id(site.feed), self.layout[site.name][0]

    def moments_of(self, site: Site) -> Moments | None:
        """The site's moments so far; None where no batch reached it (or its rank was never known)."""
        return self.moments.get(self._key(site)) if site.name in self.layout else None

    @property
    def fixed(self) -> list[np.ndarray | None]:
        """Per target, the shift fixed in the graph, or None where it is fed."""
        return [shift if i in self.fixed_sites else None for i, shift in enumerate(self.shifts)]

    def _open(self) -> None:
        """(Re)build the session with the reductions, the shifts of ``fixed_sites`` fixed in the graph."""
        with reducing(self.model, self.targets, self.extent, self.fixed, self.channels) as reductions:
            self.session = None  # let the old session go before the new one is made
            self.session = open_session(self.model, **self.options)
        self.reductions = reductions
        self.fetch = [name for r in reductions for name in r.fetch_names]
        if self.output_name is not None:
            self.fetch.append(self.output_name)
        self.builds += 1

    def _fixable(self) -> list[int]:
        """The targets whose shifts to fix: NCHW tensors of static H*W, on ONNX Runtime's CPU provider alone."""
        providers = self.session.get_providers()
        if not self.fix_shifts or providers != ["CPUExecutionProvider"]:
            return []
        return [i for i, target in enumerate(self.targets) if fixable(*target) and target[0].graph is self.model.graph]

    def add(self, inputs: dict[str, np.ndarray], start: int) -> None:
        first = not self.moments
        if first:  # a few samples place the shifts near the means, cheaply
            probe = head(inputs, PROBE_SAMPLES, self.batch_axes)
            self.shifts = [shift if m is None else m.mean.astype(np.float32)
                           for (m, _), shift in zip(self._sums(probe, start), self.shifts)]
        for attempt in range(MAX_RESUMS + 1):
            batch = self._sums(inputs, start)
            far = [i for i, (_, ratio) in enumerate(batch) if ratio > MAX_OFFSET_RATIO]
            if not far or attempt == MAX_RESUMS:
                break
            for i in far:
                self.shifts[i] = batch[i][0].mean.astype(np.float32)
            demoted = self.fixed_sites.intersection(far)
            if demoted:  # a fixed shift moves only with a new session: these sites take a fed shift from now on
                self.fixed_sites -= demoted
                self._open()
        for i, (key, (m, _)) in enumerate(zip(self.keys, batch)):
            if m is None:
                continue  # inside a branch this batch did not take
            prev = self.moments.get(key)
            self.moments[key] = m if prev is None else prev.merge(m)
            if i not in self.fixed_sites:  # the next batch's shift: the mean so far (a fixed one stays)
                self.shifts[i] = self.moments[key].mean.astype(np.float32)
        to_fix = self._fixable() if first else []
        if to_fix:  # fixed at the first batch's means (four samples' left Fashion-MNIST's next batch too far)
            self.fixed_sites.update(to_fix)
            self._open()

    def _sums(self, inputs: dict[str, np.ndarray], start: int) -> list[tuple[Moments, float]]:
        """One run: each reduction's moments and the offset ratio of its shift."""
        feed = dict(inputs)
        for r, shift in zip(self.reductions, self.shifts):
            if r.shift is not None:
                feed[r.shift.name] = shift.reshape(r.shift_shape)
        outs = list(_run(self.session, self.fetch, feed, start))
        if self.output_name is not None:
            self.output = outs.pop()
        results, k = [], 0
        for i, r in enumerate(self.reductions):
            width = len(r.outputs)
            results.append(self._moments(i, r, outs[k:k + width], start))
            k += width
        return results

    def _moments(self, i: int, r: Reduction, outs: list[np.ndarray], start: int) -> tuple[Moments | None, float]:
        """The batch's moments at reduction ``i`` and its shift's offset ratio; None where the site did not run."""
        count, s1, s2, extent = r.host_sums(outs)
        if count == 0:
            return None, 0.0
        if not all(np.isfinite(a).all() for a in (s1, s2, *extent)):
            raise DataError(f"site {self.site_names[i]!r} produced NaN or Inf on the batch starting at sample "
                            f"{start}; check the data's scale")
        return Moments.of_shifted_sums(count, self.shifts[i], s1, s2, *extent), offset_ratio(count, s1, s2)


class SampleHead:
    """The first ``n`` samples of the first batch that calibration read, as they were fed: the self-check's
    probe, taken from the batches calibration reads (a one-shot iterable is never read twice, no sample is
    lost) and no larger than a calibration batch (a model with a fixed batch takes it)."""

    def __init__(self, n: int = 8):
        self.n = n
        self.inputs: dict[str, np.ndarray] | None = None

    def add(self, inputs: dict[str, np.ndarray], axes: dict[str, int | None]) -> None:
        if self.inputs is None:
            self.inputs = head(inputs, self.n, axes)


# One class for at least this share of the samples, with at least MIN_SAMPLES samples, is degenerate: a
# classifier on data scaled otherwise than in training (the 0..1 Fashion-MNIST example fed 0..255 predicts
# one class for 97% of its samples; on its own data no class exceeds 12%).
ONE_CLASS_SHARE, MIN_SAMPLES = 0.9, 16
CAUSE = "check --scale, --mean/--std and the channel order against the model's training"


class OutputWatch:
    """The base model's first output over the calibration data, in O(classes) memory: the argmax count per
    class where it is class scores (batch, classes >= 2), and whether it changes at all from sample to sample."""

    def __init__(self):
        self.name = ""
        self.samples = 0
        self.counts: np.ndarray | None = None
        self.first: np.ndarray | None = None  # the first sample's output, float64
        self.spread = 0.0  # largest |output - first sample's output| seen
        self.scale = 0.0  # largest |output| seen

    def add(self, out: np.ndarray | None, size: int, name: str | None) -> None:
        if out is None or out.ndim == 0 or out.shape[0] != size or size == 0:
            return  # no float output, or no batch axis in front: nothing to say
        self.name = name or ""
        flat = out.reshape(size, -1).astype(np.float64)
        if not np.isfinite(flat).all():
            return
        if is_class_scores(out, size):
            if self.counts is None:
                self.counts = np.zeros(out.shape[1], np.int64)
            if len(self.counts) == out.shape[1]:
                self.counts += np.bincount(flat.argmax(axis=1), minlength=len(self.counts))
        if self.first is None:
            self.first = flat[0]
        if self.first.shape == flat.shape[1:]:
            self.spread = max(self.spread, float(np.abs(flat - self.first).max(initial=0.0)))
            self.scale = max(self.scale, float(np.abs(flat).max(initial=0.0)))
        self.samples += size

    def warning(self) -> str | None:
        """One line where the outputs are degenerate, else None."""
        if self.samples < MIN_SAMPLES:
            return None
        if self.spread <= 1e-6 * self.scale:
            return (f"mstransform: warning: the model's output {self.name!r} is the same for all {self.samples} "
                    f"calibration samples: the data may not be what the model expects; {CAUSE}")
        if self.counts is not None and self.counts.max() >= ONE_CLASS_SHARE * self.counts.sum():
            k = int(self.counts.argmax())
            return (f"mstransform: warning: the model predicts class {k} for {100 * self.counts[k] / self.counts.sum():.0f}% "
                    f"of the {int(self.counts.sum())} calibration samples: the data may be scaled or normalised "
                    f"otherwise than in training; {CAUSE}")
        return None

    def report(self, log) -> None:
        line = self.warning()
        if line is not None:
            if log is not None:
                log(line)
            else:
                warnings.warn(line.removeprefix("mstransform: warning: "), stacklevel=3)


def _run(session, fetch: list[str], feed: dict, start: int) -> list[np.ndarray]:
    return run_step(session, fetch, feed, DataError, f"calibration, batch starting at sample {start}")


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total or None, unit="img", desc="calibrating", disable=None if enabled else True, leave=False)
