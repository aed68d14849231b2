"""From statistics to per-site (center, threshold): the modes and centers of the papers.

* ``Mode.MEANSPARSE`` (paper 1): threshold ``alpha * sigma_c``; center ``mu_c``
  (``Center.MEAN``, the paper's default), 0 (``Center.ZERO``) or the mean over all channels
  (``Center.GLOBAL``) -- the three variants of the paper's ablation A.7, all with the
  channel-wise sigma.
* ``Mode.FORGED`` (paper 2): center 0, threshold ``alpha * max|x|`` of the layer, one number
  per site broadcast to its channels. The paper does not publish its exact threshold; this is
  the scanned-magnitude reading described in ``docs/method.md``, with ``alpha`` playing the
  role of its ``c`` (2^-8 .. 2^-6).

A channel whose variance is zero gets threshold 0, and strict ``<`` never fires there: the
operator is the identity on it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mstransform.core.errors import StatsError
from mstransform.core.options import Center, Mode, check_alpha, choice
from mstransform.core.stats import SiteStats


@dataclass(frozen=True)
class SiteParams:
    """Per-channel center and threshold for one site (1-D float64 arrays of length C)."""

    center: np.ndarray
    threshold: np.ndarray

    @property
    def is_identity(self) -> bool:
        return not np.any(self.threshold > 0)


def site_params(s: SiteStats, alpha: float, mode: Mode | str = Mode.MEANSPARSE,
                center: Center | str = Center.MEAN) -> SiteParams:
    alpha = check_alpha(alpha)
    mode, center = choice(Mode, mode, "mode"), choice(Center, center, "center")
    m = s.moments
    if mode is Mode.FORGED:
        if m.absmax is None:
            raise StatsError(f"site {s.name!r}: these stats carry no max |x|, which forged mode needs; calibrate "
                             "with --extent (or --mode forged / placement linear-inputs, which measure it)")
        return SiteParams(np.zeros(m.channels), np.full(m.channels, alpha * float(m.absmax.max())))
    c = {Center.MEAN: lambda: m.mean.copy(), Center.ZERO: lambda: np.zeros(m.channels),
         Center.GLOBAL: lambda: np.full(m.channels, float(m.mean.mean()))}[center]()
    return SiteParams(c, alpha * np.sqrt(m.var))
