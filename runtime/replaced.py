"""How much each operator blocks: the fraction of a site's values that the operator replaces, measured.

The statistics hold each channel's mean and variance only, so the fraction of values inside the
band ``|x - c| < alpha * sigma`` cannot be read from them (a normal approximation would be a guess,
and activations are not normal). It is counted instead: the model runs on the given data with every
site's tensor exposed as an output (:mod:`mstransform.passes.graph.expose`, as the self-check and ``plot``
read inner tensors), and each value is tested as the inserted operator tests it -- in the tensor's
own type, with center and threshold from the same plan ``harden`` builds (per-site alphas
included). A site no sample reached (inside a branch not taken) counts no values.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mstransform.core.errors import ModelError
from mstransform.core.operator import in_band
from mstransform.core.options import AlphaPlan, Center, Mode
from mstransform.core.stats import Stats
from mstransform.passes.graph.expose import exposed
from mstransform.passes.graph.load import load_model
from mstransform.passes.sites.onnx_finder import find_sites
from mstransform.passes.sites.plan import build_plan
from mstransform.runtime.data import DataSource, Preprocess
from mstransform.runtime.inputs import input_specs
from mstransform.runtime.session import open_session, run_step

__all__ = ["SiteFraction", "replaced_fractions"]


@dataclass(frozen=True)
class SiteFraction:
    """One site: its place in the graph (``depth``: index in the site table, input to output), its
    alpha, and how many of the values seen fell in the blocked band."""

    depth: int
    name: str
    kind: str
    channels: int
    alpha: float
    replaced: int
    values: int

    @property
    def fraction(self) -> float | None:
        return self.replaced / self.values if self.values else None


def replaced_fractions(model, stats: Stats, data, alpha: float | AlphaPlan, *, mode: Mode = Mode.MEANSPARSE,
                       center: Center = Center.MEAN, batch_size: int = 64, limit: int | None = None,
                       preprocess: Preprocess | None = None, threads: int | None = None, runtime=None,
                       batch_axes: dict[str, int | None] | None = None) -> list[SiteFraction]:
    """Per site of ``stats``, the values of ``data`` the operator at ``alpha`` would replace, in depth order."""
    m = load_model(model)
    from_fx = stats.selection.framework == "fx"  # stats of the FX path: names carry over, tensor names do not
    table = find_sites(m, stats.placement, dataclasses.replace(stats.selection, framework="onnx"))
    plan = build_plan(table, stats, alpha, Mode(mode), Center(center), by_position=from_fx, check_feeds=not from_fx)
    entries = list(plan.entries)
    counts = {site.name: [0, 0] for site, _ in entries}
    with exposed(m, [site.feed for site, _ in entries]) as seen:
        session = open_session(m, runtime=runtime, threads=threads)
    fetch = [seen.name_of(site.feed) for site, _ in entries]
    source = DataSource(data, input_specs(m, batch_axes), batch_size=batch_size, limit=limit,
                        preprocess=preprocess or Preprocess())
    for batch in source:
        outs = run_step(session, fetch, batch.inputs, ModelError, "measuring the replaced fraction")
        for (site, params), x in zip(entries, outs):
            x = np.asarray(x)
            if x.size == 0:
                continue
            axis = site.axis + seen.levels_of(site.feed)  # values stacked over loop iterations come first
            counts[site.name][0] += int(np.count_nonzero(in_band(x, params.center, params.threshold, axis)))
            counts[site.name][1] += x.size
    depth = {s.name: i for i, s in enumerate(table)}
    return [SiteFraction(depth[site.name], site.name, site.kind, int(params.center.shape[0]),
                         plan.alphas[site.name], *counts[site.name]) for site, params in entries]
