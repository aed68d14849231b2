"""Runtime side: data, calibration, statistics, ONNX Runtime sessions and checks."""
from mstransform.runtime.moments import Moments
from mstransform.runtime.operator import sparsify
from mstransform.runtime.stats import SiteStats, Stats, load_stats

__all__ = ["Moments", "SiteStats", "Stats", "load_stats", "sparsify"]
