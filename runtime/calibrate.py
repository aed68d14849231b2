"""Calibration: run the model on clean data and measure every site's per-channel statistics.

The site tensors are exposed as extra graph outputs of an in-memory copy of the graph
(nothing is written to disk), the model runs batch by batch in ONNX Runtime, and each
batch is folded into float64 streaming moments. Memory is that of one batch plus
O(channels) per site, whatever the number of samples.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mstransform.core.catalogue import axis_by_rank
from mstransform.core.errors import DataError, ModelError
from mstransform.core.moments import Moments
from mstransform.core.options import Placement, Selection
from mstransform.core.stats import SiteStats, Stats
from mstransform.passes.expose import exposed
from mstransform.passes.fingerprint import fingerprint
from mstransform.passes.onnx_view import find_sites
from mstransform.passes.prepare import load_model
from mstransform.passes.sites import SiteTable
from mstransform.runtime.data import DataSource, Preprocess
from mstransform.runtime.session import input_specs, make_session


def calibrate_onnx(model, data, *, placement: Placement | str = Placement.ACTIVATIONS,
                   selection: Selection = Selection(), **options) -> Stats:
    """Load ``model``, find its sites and measure them over ``data`` (see :func:`calibrate_table`)."""
    m = load_model(model)
    return calibrate_table(m, find_sites(m, placement, selection), data, selection=selection, **options)


def calibrate_table(model: ir.Model, table: SiteTable, source, *, batch_size: int = 64, limit: int | None = None,
                    preprocess: Preprocess | None = None, progress: bool = True, providers=None, threads=None,
                    selection: Selection = Selection(), shard: tuple[int, int] | None = None, log=None) -> Stats:
    """Measure statistics for the sites of ``table`` in ``model`` over ``source``.

    ``log`` (a callable taking one line) hears when the first batch has gone through: the sign
    of progress the command line prints (bad data fails before it, with one line)."""
    if len(table) == 0:
        raise ModelError("the model has no sites to calibrate; `mstransform sites` says why")
    specs = input_specs(model)
    data = source if isinstance(source, DataSource) else DataSource(
        source, specs, batch_size=batch_size, limit=limit, preprocess=preprocess or Preprocess())
    fp = fingerprint(model)
    with exposed(model, [s.feed for s in table]):
        session = make_session(model, providers=providers, threads=threads)
    feeds = list(dict.fromkeys(s.feed.name for s in table))
    acc: dict[str, Moments] = {}
    axes: dict[str, int] = {}
    ranks: dict[str, int] = {}
    samples = 0
    per_sample: list[int] = []  # bytes of exposed site tensors per sample, measured on the first run
    bar = _progress(len(data), progress)
    try:
        for k, batch in enumerate(data):
            if shard is not None and k % shard[1] != shard[0]:
                continue
            for start, sub in _sub_batches(batch, per_sample):
                try:
                    outs = session.run(feeds, sub)
                except Exception as e:
                    first = str(e).strip().splitlines()[0]
                    raise DataError(f"ONNX Runtime rejected batch starting at sample {start}: {first}") from None
                if not per_sample:
                    per_sample.append(max(1, sum(o.nbytes for o in outs) // len(next(iter(sub.values())))))
                _fold(table, outs, feeds, acc, axes, ranks, start)
            if samples == 0 and log is not None:  # the first batch went through: the data fits
                log(f"calibrating {len(table)} site(s) on {data.origin}")
            samples += len(batch)
            bar.update(len(batch))
    finally:
        bar.close()
    if samples == 0:
        raise DataError("no samples were calibrated (empty data, or an empty shard)")
    sites = {}
    for s in table:
        axis = axes[s.name]
        m = acc[s.feed.name + "|" + str(axis)]
        dtype = np.dtype(s.feed.dtype.numpy()).name if s.feed.dtype is not None else "float32"
        rank = ranks[s.name]
        sites[s.name] = SiteStats(s.name, s.feed.name, s.kind, axis, rank, dtype, m)
    return Stats(fp, table.placement, sites, samples, selection)


MAX_EXPOSED_BYTES = 256 << 20


def _sub_batches(batch, per_sample):
    """Split a batch so the exposed site tensors of one ORT run stay under MAX_EXPOSED_BYTES.

    Large models expose gigabytes per batch otherwise (ResNet-50: ~38 MB per image), and
    fresh multi-GB outputs on every run cost more in page faults than the inference itself.
    The first run uses one sample to measure the size per sample.
    """
    n = len(batch)
    step = 1 if not per_sample else max(1, min(n, MAX_EXPOSED_BYTES // per_sample[0]))
    i = 0
    while i < n:
        yield batch.start + i, {k: v[i:i + step] for k, v in batch.inputs.items()}
        i += step
        if per_sample:
            step = max(1, min(n, MAX_EXPOSED_BYTES // per_sample[0]))


def _fold(table, outs, feeds, acc, axes, ranks, start) -> None:
    """Fold one run's site tensors into the running moments (a shared tensor counts once)."""
    done = set()
    for site in table:
        x = outs[feeds.index(site.feed.name)]
        axis = axes.get(site.name)
        if axis is None:
            axis = site.axis if site.axis is not None else axis_by_rank(x.ndim)[0]
            axes[site.name] = axis
            ranks[site.name] = x.ndim
        key = f"{site.feed.name}|{axis}"
        if key in done:
            continue
        done.add(key)
        m = Moments.of_batch(x, axis)
        if not (np.isfinite(m.mean).all() and np.isfinite(m.m2).all()):
            raise DataError(f"site {site.name!r} produced NaN or Inf on the batch starting at sample {start}; "
                            "check the data's scale")
        prev = acc.get(key)
        if prev is not None and prev.channels != m.channels:
            raise DataError(f"site {site.name!r} changed channel count from {prev.channels} to {m.channels}")
        acc[key] = m if prev is None else prev.merge(m)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total or None, unit="img", desc="calibrating", disable=None if enabled else True, leave=False)
