"""Calibration: run the model on clean data and measure every site's per-channel statistics.

The site tensors are exposed as extra graph outputs of an in-memory copy of the graph
(nothing is written to disk), the model runs batch by batch in ONNX Runtime, and each
batch is folded into float64 streaming moments. Memory is that of one batch plus
O(channels) per site, whatever the number of samples.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mstransform.errors import DataError, ModelError
from mstransform.passes.fingerprint import fingerprint
from mstransform.passes.sites import SiteTable
from mstransform.runtime.data import DataSource
from mstransform.runtime.moments import Moments
from mstransform.runtime.session import input_specs, make_session
from mstransform.runtime.stats import SiteStats, Stats


def _expose(model: ir.Model, table: SiteTable) -> list[ir.Value]:
    """Add each distinct site tensor as a graph output; return the ones added (to remove later)."""
    added, seen = [], set()
    for site in table:
        v = site.feed
        if id(v) in seen or v.is_graph_output():
            seen.add(id(v))
            continue
        seen.add(id(v))
        model.graph.outputs.append(v)
        added.append(v)
    return added


def calibrate_table(model: ir.Model, table: SiteTable, source, *, batch_size: int = 64, limit: int | None = None,
                    preprocess=None, progress: bool = True, providers=None, threads=None, selection=None,
                    shard: tuple[int, int] | None = None) -> Stats:
    """Measure statistics for the sites of ``table`` in ``model`` over ``source``."""
    from mstransform.runtime.data import Preprocess

    if len(table) == 0:
        raise ModelError("the model has no sites to calibrate; `mstransform sites` says why")
    specs = input_specs(model)
    data = source if isinstance(source, DataSource) else DataSource(
        source, specs, batch_size=batch_size, limit=limit, preprocess=preprocess or Preprocess())
    fp = fingerprint(model)
    added = _expose(model, table)
    try:
        session = make_session(model, providers=providers, threads=threads)
    finally:
        for v in added:
            model.graph.outputs.remove(v)
    feeds = list(dict.fromkeys(s.feed.name for s in table))
    acc: dict[str, Moments] = {}
    axes: dict[str, int] = {}
    ranks: dict[str, int] = {}
    samples = 0
    bar = _progress(len(data), progress)
    try:
        for k, batch in enumerate(data):
            if shard is not None and k % shard[1] != shard[0]:
                continue
            try:
                outs = session.run(feeds, batch.inputs)
            except Exception as e:
                first = str(e).strip().splitlines()[0]
                raise DataError(f"ONNX Runtime rejected batch starting at sample {batch.start}: {first}") from None
            done = set()
            for site in table:
                x = outs[feeds.index(site.feed.name)]
                axis = axes.get(site.name)
                if axis is None:
                    axis = site.axis if site.axis is not None else _axis_by_rank(x.ndim)
                    axes[site.name] = axis
                    ranks[site.name] = x.ndim
                key = f"{site.feed.name}|{axis}"
                if key in done:  # two sites on one tensor: fold the batch in once
                    continue
                done.add(key)
                m = Moments.of_batch(x, axis)
                if not (np.isfinite(m.mean).all() and np.isfinite(m.m2).all()):
                    raise DataError(f"site {site.name!r} produced NaN or Inf on the batch starting at sample "
                                    f"{batch.start}; check the data's scale")
                prev = acc.get(key)
                if prev is not None and prev.channels != m.channels:
                    raise DataError(f"site {site.name!r} changed channel count from {prev.channels} to {m.channels}")
                acc[key] = m if prev is None else prev.merge(m)
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
    return Stats(fp, table.placement.value, sites, samples, selection or {})


def _axis_by_rank(ndim: int) -> int:
    return ndim - 1 if ndim <= 3 else 1


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total or None, unit="img", desc="calibrating", disable=None if enabled else True, leave=False)
