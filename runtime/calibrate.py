"""Calibration: run the model on clean data and measure every site's per-channel statistics.

The statistics are reduced where the data is: each site tensor gets an in-graph reduction
(:mod:`mstransform.passes.site_reductions`) to a few channel-sized vectors -- shifted sums,
sums of squares, max and min -- so a session returns kilobytes per batch on any execution
provider (CPU, CUDA, TensorRT) and never copies a site tensor to the host. The host turns
each batch into float64 moments and merges them with Chan's rule, so batch size, shards and
ranks agree up to the float32 sums inside one batch. The graph carries the reductions only
while the session is made (nothing is written to disk); memory is that of one batch plus
O(channels) per site, whatever the number of samples. ``docs/method.md`` derives the
numerical guarantee.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mstransform.core.catalogue import axis_by_rank
from mstransform.core.errors import DataError, ModelError
from mstransform.core.moments import MAX_OFFSET_RATIO, Moments, offset_ratio
from mstransform.core.options import Placement, Runtime, Selection
from mstransform.core.stats import SiteStats, Stats
from mstransform.passes.expose import exposed
from mstransform.passes.fingerprint import fingerprint
from mstransform.passes.onnx_view import find_sites
from mstransform.passes.prepare import load_model
from mstransform.passes.site_reductions import reducing
from mstransform.passes.sites import Site, SiteTable
from mstransform.runtime.data import DataSource, Preprocess
from mstransform.runtime.session import describe, input_specs, open_session

MAX_RESUMS = 2  # a batch is summed at most this many more times, each with a shift nearer its mean
# samples whose means place the shifts: channel means vary from sample to sample, so one sample left
# ViT-B/16's first batch of 32 at offset ratio 0.60 (a second full run); four left it at 0.17
PROBE_SAMPLES = 4


def calibrate_onnx(model, data, *, placement: Placement | str = Placement.ACTIVATIONS,
                   selection: Selection = Selection(), **options) -> Stats:
    """Load ``model``, find its sites and measure them over ``data`` (see :func:`calibrate_table`)."""
    m = load_model(model)
    return calibrate_table(m, find_sites(m, placement, selection), data, selection=selection, **options)


def calibrate_table(model: ir.Model, table: SiteTable, source, *, batch_size: int = 64, limit: int | None = None,
                    preprocess: Preprocess | None = None, progress: bool = True, providers=None, threads=None,
                    selection: Selection = Selection(), shard: tuple[int, int] | None = None, log=None,
                    runtime: Runtime | str = Runtime.ONNXRUNTIME, extent: bool = True) -> Stats:
    """Measure statistics for the sites of ``table`` in ``model`` over ``source``.

    ``runtime`` runs the graph with its reductions: ONNX Runtime (on ``providers``) or OpenVINO.
    ``extent`` also measures each channel's max ``|x|`` (forged mode needs it; two more reads).

    ``log`` (a callable taking one line) hears when the first batch has gone through: the sign
    of progress the command line prints (bad data fails before it, with one line)."""
    if len(table) == 0:
        raise ModelError("the model has no sites to calibrate; `mstransform sites` says why")
    data = source if isinstance(source, DataSource) else DataSource(
        source, input_specs(model), batch_size=batch_size, limit=limit, preprocess=preprocess or Preprocess())
    fp = fingerprint(model)
    run: ReducedRun | None = None
    samples = 0
    bar = _progress(len(data), progress)
    try:
        for k, batch in enumerate(data):
            if shard is not None and k % shard[1] != shard[0]:
                continue
            if run is None:
                layout = site_layout(model, table, batch.inputs, providers, threads, runtime)
                run = ReducedRun(model, table, layout, providers, threads, runtime, extent)
            run.add(batch.inputs, batch.start)
            if samples == 0 and log is not None:  # the first batch went through: the data fits
                log(f"calibrating {len(table)} site(s) on {data.origin}; {describe(run.session)}")
            samples += len(batch)
            bar.update(len(batch))
    finally:
        bar.close()
    if run is None or samples == 0:
        raise DataError("no samples were calibrated (empty data, or an empty shard)")
    sites = {}
    for s in table:
        axis, rank, _ = run.layout[s.name]
        dtype = np.dtype(s.feed.dtype.numpy()).name if s.feed.dtype is not None else "float32"
        sites[s.name] = SiteStats(s.name, s.feed.name, s.kind, axis, rank, dtype, run.moments[(s.feed.name, axis)])
    return Stats(fp, table.placement, sites, samples, selection)


def site_layout(model: ir.Model, table: SiteTable, feed: dict, providers=None, threads=None,
                runtime: Runtime | str = Runtime.ONNXRUNTIME) -> dict[str, tuple[int, int, int]]:
    """(channel axis, rank, channels) per site, from the static shapes.

    Where a rank or channel count is not known statically, one sample of ``feed`` runs with
    those tensors exposed, and their shapes are read off it.
    """
    layout = {}
    for s in table:
        shape = s.feed.shape
        if shape is not None:
            axis = s.axis if s.axis is not None else axis_by_rank(len(shape))[0]
            if 0 <= axis < len(shape) and isinstance(shape[axis], int):
                layout[s.name] = (axis, len(shape), shape[axis])
    unknown = [s for s in table if s.name not in layout]
    if unknown:
        with exposed(model, [s.feed for s in unknown]):
            session = open_session(model, runtime=runtime, providers=providers, threads=threads)
        names = list(dict.fromkeys(s.feed.name for s in unknown))
        outs = dict(zip(names, _run(session, names, {k: v[:1] for k, v in feed.items()}, 0)))
        for s in unknown:
            x = outs[s.feed.name]
            axis = s.axis if s.axis is not None else axis_by_rank(x.ndim)[0]
            layout[s.name] = (axis, x.ndim, x.shape[axis])
    return layout


class ReducedRun:
    """One session that carries the in-graph reductions, and the float64 moments folded from it.

    Each distinct (tensor, axis) is reduced once, however many sites share it. The shifts are
    placed at the means of the first ``PROBE_SAMPLES`` samples and, after every batch, at the mean so far
    (the best estimate of the next batch's mean: one batch's own mean left ViT-B/16's batches at offset
    ratios of 0.20-0.28, a second run for every few batches; the mean so far leaves them at 0.04-0.08).
    A batch whose mean still lies far from its shift, relative to its spread (:func:`offset_ratio`
    above ``MAX_OFFSET_RATIO``), is summed again with the shift moved to that batch's mean.
    """

    def __init__(self, model: ir.Model, table: SiteTable, layout: dict[str, tuple[int, int, int]], providers=None,
                 threads=None, runtime: Runtime | str = Runtime.ONNXRUNTIME, extent: bool = True):
        self.layout = layout
        sites: dict[tuple[str, int], Site] = {}
        for s in table:
            sites.setdefault((s.feed.name, layout[s.name][0]), s)
        self.keys = list(sites)
        targets = [(s.feed, layout[s.name][0], layout[s.name][1]) for s in sites.values()]
        with reducing(model, targets, extent) as reductions:
            self.session = open_session(model, runtime=runtime, providers=providers, threads=threads,
                                        memory_pattern=False)
        self.fetch = [v.name for r in reductions for v in r.outputs]
        self.width = len(reductions[0].outputs) if reductions else 0
        self.shift_inputs = [(r.shift.name, r.shift_shape) for r in reductions]
        self.site_names = [s.name for s in sites.values()]
        self.shifts = [np.zeros(layout[s.name][2], np.float32) for s in sites.values()]
        self.moments: dict[tuple[str, int], Moments] = {}

    def add(self, inputs: dict[str, np.ndarray], start: int) -> None:
        if not self.moments:  # the first batch: a few samples place the shifts near the means, cheaply
            probe = {k: v[:PROBE_SAMPLES] for k, v in inputs.items()}
            self.shifts = [m.mean.astype(np.float32) for m, _ in self._sums(probe, start)]
        for attempt in range(MAX_RESUMS + 1):
            batch = self._sums(inputs, start)
            far = [i for i, (_, ratio) in enumerate(batch) if ratio > MAX_OFFSET_RATIO]
            if not far or attempt == MAX_RESUMS:
                break
            for i in far:
                self.shifts[i] = batch[i][0].mean.astype(np.float32)
        for i, (key, (m, _)) in enumerate(zip(self.keys, batch)):
            prev = self.moments.get(key)
            self.moments[key] = m if prev is None else prev.merge(m)
            self.shifts[i] = self.moments[key].mean.astype(np.float32)  # the next batch's shift: the mean so far

    def _sums(self, inputs: dict[str, np.ndarray], start: int) -> list[tuple[Moments, float]]:
        """One run: each reduction's moments and the offset ratio of its shift."""
        feed = dict(inputs)
        for (name, shape), shift in zip(self.shift_inputs, self.shifts):
            feed[name] = shift.reshape(shape)
        outs = _run(self.session, self.fetch, feed, start)
        k = self.width
        return [self._moments(i, outs[k * i:k * (i + 1)], start) for i in range(len(self.keys))]

    def _moments(self, i: int, outs: list[np.ndarray], start: int) -> tuple[Moments, float]:
        s1, s2, shape, *extent = outs  # extent: max and min, where measured
        if not all(np.isfinite(a).all() for a in (s1, s2, *extent)):
            raise DataError(f"site {self.site_names[i]!r} produced NaN or Inf on the batch starting at sample "
                            f"{start}; check the data's scale")
        count = int(np.prod(shape, dtype=np.int64)) // max(1, len(s1))
        return (Moments.of_shifted_sums(count, self.shifts[i], s1, s2, *extent),
                offset_ratio(count, s1, s2))


def _run(session, fetch: list[str], feed: dict, start: int) -> list[np.ndarray]:
    try:
        return session.run(fetch, feed)
    except Exception as e:  # ORT raises its own exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"ONNX Runtime rejected batch starting at sample {start}: {first}") from None


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total or None, unit="img", desc="calibrating", disable=None if enabled else True, leave=False)
