"""From a site table and statistics to the plan a pass inserts: one builder for the ONNX and FX paths.

A plan is, per chosen site, the site (with the channel axis and rank the statistics were measured
along) and its :class:`~mstransform.core.params.SiteParams` (center and threshold per channel).
Sites the statistics never reached (inside branches no calibration sample took) and sites the
selection narrows away are left out; every constant must be finite in the site's own type. A plan
with nothing to insert is an error, never an unhardened model written with exit 0: a selection that
keeps no site (usage), statistics that reached none of the chosen sites or that call a main-graph
site unreached (stats). Alpha 0 is not empty: its sites are planned, as the identity.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mstransform.core.errors import ModelError, StatsError, UsageError
from mstransform.core.options import AlphaPlan, Center, Mode, Selection
from mstransform.core.params import SiteParams, site_params
from mstransform.core.stats import Stats
from mstransform.passes.sites.finder import Site, SiteTable


@dataclass(frozen=True)
class Plan:
    """What to insert: ``entries`` (site, parameters) in graph order, and the alpha each site got."""

    entries: tuple[tuple[Site, SiteParams], ...]
    alphas: dict[str, float]
    stats: Stats  # the statistics as matched to this graph's site names


def build_plan(table: SiteTable, stats: Stats, alpha: float | AlphaPlan, mode: Mode, center: Center, *,
               narrow: Selection = Selection(), by_position: bool = False, check_feeds: bool = True,
               dtype_of=None) -> Plan:
    """The plan for ``table`` from ``stats``.

    ``by_position`` allows the documented fallback between an FX graph and its ONNX export (an
    exporter renamed a node); ``check_feeds`` compares guarded tensor names (ONNX on both sides);
    ``dtype_of(site)`` gives a site's numpy dtype, for the check that every constant is finite in it."""
    matched = stats.matched_to([(s.name, s.kind, s.channels, s.feed_name) for s in table], by_position=by_position,
                               check_feeds=check_feeds)
    main = [s.name for s in table if s.graph == "main" and s.name in matched.unreached]
    if main:
        raise StatsError(f"stats list site {main[0]!r} as unreached, but it is in the main graph, which every sample "
                         "runs; the stats file is corrupt or of another model: recalibrate")
    selected = [s for s in table if narrow.rejects((s.name, s.feed_name)) is None]
    if table.sites and not selected:
        raise nothing_selected(narrow, len(table), "harden")
    if not selected:
        raise ModelError("the model has no sites to harden; `mstransform sites` says why")
    chosen = [s for s in selected if s.name in matched.sites]
    if not chosen:
        raise StatsError(f"no site to harden: the stats list all {len(selected)} selected site(s) as unreached "
                         "(inside branches or loops that no calibration sample entered); calibrate on data that "
                         "reaches them")
    alphas = AlphaPlan.of(alpha).per_site([s.name for s in chosen])
    entries = []
    for s in chosen:
        st = matched.sites[s.name]
        entry = (dataclasses.replace(s, axis=st.axis, rank=st.rank), site_params(st, alphas[s.name], mode, center))
        if dtype_of is not None:
            _check_representable(entry, np.dtype(dtype_of(s)))
        entries.append(entry)
    return Plan(tuple(entries), alphas, matched)


def nothing_selected(selection: Selection, available: int, what: str) -> UsageError:
    """The error for include/exclude patterns that keep none of the ``available`` sites."""
    param = "include" if selection.include else "exclude"
    pattern = selection.include or selection.exclude
    also = f" (with exclude {selection.exclude!r})" if selection.include and selection.exclude else ""
    return UsageError(f"{pattern!r}{also} leaves none of the model's {available} site(s) to {what}; "
                      "`mstransform sites` lists them", param=param)


def _check_representable(entry: tuple[Site, SiteParams], dtype: np.dtype) -> None:
    """Every constant finite in the type it is written in (a variance of 1e80 is no float32 threshold,
    a mean of 7e4 no float16 center)."""
    site, params = entry
    for label, values in (("center", params.center), ("threshold", params.threshold)):
        with np.errstate(over="ignore", invalid="ignore"):
            written = np.asarray(values).astype(dtype)
        bad = ~np.isfinite(written.astype(np.float64))
        if bad.any():
            worst = float(np.asarray(values, np.float64)[bad][0])
            raise StatsError(f"site {site.name!r}: its {label} {worst:.3g} (channel {int(np.argmax(bad))}) is not "
                             f"finite in {dtype.name}, the site's type; the stats do not fit this model")
