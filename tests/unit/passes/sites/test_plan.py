"""The plan builder (passes/sites/plan.py): each site's center and threshold from its statistics, the sites
it leaves out, and the statistics it refuses."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import tiny_model
from tiny_graphs import node

from mstransform.core.errors import StatsError
from mstransform.core.moments import Moments
from mstransform.core.options import AlphaPlan, Center, Mode, Placement, Selection
from mstransform.core.stats import SiteStats, Stats
from mstransform.passes.graph.load import load_model
from mstransform.passes.sites.plan import build_plan


def two_relus(tmp_path):
    nodes = [node("Relu", ["x"], ["r1"]), node("Neg", ["r1"], ["n"]), node("Relu", ["n"], ["r2"])]
    path = tmp_path / "two.onnx"
    onnx.save(tiny_model(nodes, [("x", [4, 3, 2, 2])], [("r2", None)]), str(path))
    from mstransform.passes.sites.onnx_finder import find_sites

    return find_sites(load_model(path))


def stats_for(table, means, variances, axis=1, absmax=None, unreached=()):
    sites = {}
    for s, mean, var, extent in zip(table, means, variances, absmax or [None] * len(means)):
        mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
        sites[s.name] = SiteStats(s.name, s.feed_name, s.kind, axis, 4, "float32",
                                  Moments(100, mean, var * 100, None if extent is None else np.asarray(extent)))
    return Stats("fingerprint", Placement.ACTIVATIONS, sites, 100, unreached=tuple(unreached))


MEANS = [[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]]
VARS = [[4.0, 0.25, 1.0], [0.0, 9.0, 2.25]]


def test_plan_takes_the_papers_center_and_threshold_per_site(tmp_path):
    table = two_relus(tmp_path)
    assert [s.name for s in table] == ["r1", "r2"]
    stats = stats_for(table, MEANS, VARS, axis=1)
    plan = build_plan(table, stats, AlphaPlan(0.5, (("r2", 2.0),)), Mode.MEANSPARSE, Center.MEAN)
    assert plan.alphas == {"r1": 0.5, "r2": 2.0}
    for (site, params), mean, var, alpha in zip(plan.entries, MEANS, VARS, (0.5, 2.0)):
        np.testing.assert_array_equal(params.center, mean)
        np.testing.assert_allclose(params.threshold, alpha * np.sqrt(var), rtol=1e-15)
        assert (site.axis, site.rank) == (1, 4)
    zero = build_plan(table, stats, 0.5, Mode.MEANSPARSE, Center.ZERO).entries
    glob = build_plan(table, stats, 0.5, Mode.MEANSPARSE, Center.GLOBAL).entries
    for (_, z), (_, g), mean in zip(zero, glob, MEANS):
        np.testing.assert_array_equal(z.center, np.zeros(3))
        np.testing.assert_allclose(g.center, np.full(3, np.mean(mean)), rtol=1e-15)
    forged = build_plan(table, stats_for(table, MEANS, VARS, absmax=[[1, 4, 2], [3, 1, 1]]), 0.01, Mode.FORGED,
                        Center.MEAN).entries
    for (_, p), top in zip(forged, (4.0, 3.0)):
        np.testing.assert_array_equal(p.center, np.zeros(3))
        np.testing.assert_allclose(p.threshold, np.full(3, 0.01 * top), rtol=1e-15)


def test_plan_leaves_out_narrowed_and_unreached_sites(tmp_path):
    table = two_relus(tmp_path)
    stats = stats_for(table, MEANS, VARS)
    assert [s.name for s, _ in build_plan(table, stats, 0.2, Mode.MEANSPARSE, Center.MEAN,
                                          narrow=Selection(exclude="r2")).entries] == ["r1"]
    import dataclasses

    table.sites[1] = dataclasses.replace(table.sites[1], graph="If_0:then_branch")  # only a body site may be unreached
    partial = stats_for(list(table)[:1], MEANS[:1], VARS[:1], unreached=["r2"])
    assert [s.name for s, _ in build_plan(table, partial, 0.2, Mode.MEANSPARSE, Center.MEAN).entries] == ["r1"]


def test_plan_refuses_stats_that_do_not_fit(tmp_path):
    table = two_relus(tmp_path)
    with pytest.raises(StatsError, match="site 'r2' has no statistics"):
        build_plan(table, stats_for(list(table)[:1], MEANS[:1], VARS[:1]), 0.2, Mode.MEANSPARSE, Center.MEAN)
    wide = stats_for(table, [[0.0] * 4, [0.0] * 4], [[1.0] * 4, [1.0] * 4])
    with pytest.raises(StatsError, match="has 3 channels but its stats have 4"):
        build_plan(table, wide, 0.2, Mode.MEANSPARSE, Center.MEAN)
    huge = stats_for(table, [[7e4, 0, 0], [0, 0, 0]], VARS)
    build_plan(table, huge, 0.2, Mode.MEANSPARSE, Center.MEAN, dtype_of=lambda s: np.float32)  # fits float32
    with pytest.raises(StatsError, match="its center 7e\\+04 \\(channel 0\\) is not finite in float16"):
        build_plan(table, huge, 0.2, Mode.MEANSPARSE, Center.MEAN, dtype_of=lambda s: np.float16)
