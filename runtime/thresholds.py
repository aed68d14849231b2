"""From statistics to per-site (center, threshold): the modes and centers of the papers.

* ``meansparse`` (paper 1): threshold ``alpha * sigma_c``; center ``mean`` (``mu_c``,
  the paper's default), ``zero`` or ``global`` (the mean over all channels) -- the three
  variants of the paper's ablation A.7, all with the channel-wise sigma.
* ``forged`` (paper 2): center 0, threshold ``alpha * max|x|`` of the layer, one number
  per site broadcast to its channels. The paper does not publish its exact threshold;
  this is the scanned-magnitude reading documented in METHOD.md section 6, with
  ``alpha`` playing the role of its ``c`` (2^-8 .. 2^-6).

A channel whose variance is zero gets threshold 0, and strict ``<`` never fires there:
the operator is the identity on it.
"""
from __future__ import annotations

import math
import re

import numpy as np

from mstransform.errors import UsageError
from mstransform.passes.sparsify import SiteParams
from mstransform.runtime.stats import SiteStats

MODES = ("meansparse", "forged")
CENTERS = ("mean", "zero", "global")


def check_alpha(alpha: float, what: str = "alpha") -> float:
    if not isinstance(alpha, (int, float)) or math.isnan(alpha) or math.isinf(alpha):
        raise UsageError(f"{what} must be a finite number, got {alpha!r}")
    if alpha < 0:
        raise UsageError(f"{what} must be >= 0, got {alpha:g}")
    if alpha > 100:
        raise UsageError(f"{what}={alpha:g} would replace almost every value by the center; use a value below 100")
    return float(alpha)


def site_params(s: SiteStats, alpha: float, mode: str = "meansparse", center: str = "mean") -> SiteParams:
    m = s.moments
    if mode == "forged":
        c = np.zeros(m.channels)
        t = np.full(m.channels, alpha * float(m.absmax.max()))
        return SiteParams(c, t)
    if mode != "meansparse":
        raise UsageError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    sigma = np.sqrt(m.var)
    if center == "mean":
        c = m.mean.copy()
    elif center == "zero":
        c = np.zeros(m.channels)
    elif center == "global":
        c = np.full(m.channels, float(m.mean.mean()))
    else:
        raise UsageError(f"unknown center {center!r}; choose one of {', '.join(CENTERS)}")
    return SiteParams(c, alpha * sigma)


def parse_alpha_specs(specs: list[str] | float | None, default: float = 0.2) -> tuple[float, list[tuple[str, float]]]:
    """Parse ``--alpha`` values: one plain number (the default) and ``PATTERN=VALUE`` overrides."""
    if specs is None:
        return check_alpha(default), []
    if isinstance(specs, (int, float)):
        return check_alpha(float(specs)), []
    base, overrides = None, []
    for spec in specs:
        pattern, sep, value = spec.rpartition("=")
        text = value if sep else spec
        try:
            number = float(text)
        except ValueError:
            raise UsageError(f"--alpha {spec!r}: expected a number or SITE_PATTERN=NUMBER") from None
        if sep:
            try:
                re.compile(pattern)
            except re.error as e:
                raise UsageError(f"--alpha {spec!r}: bad site pattern ({e})") from None
            overrides.append((pattern, check_alpha(number, f"alpha for {pattern!r}")))
        elif base is not None:
            raise UsageError("--alpha: give one plain value; use SITE_PATTERN=NUMBER for per-site values")
        else:
            base = check_alpha(number)
    return (default if base is None else base), overrides


def alpha_per_site(names: list[str], base: float, overrides: list[tuple[str, float]]) -> dict[str, float]:
    """Each site's alpha; a later override wins; an override that matches no site is an error."""
    out = {n: base for n in names}
    for pattern, value in overrides:
        hit = [n for n in names if n == pattern or re.fullmatch(pattern, n)]
        if not hit:
            raise UsageError(f"--alpha override {pattern!r} matches no site; `mstransform sites` lists them")
        for n in hit:
            out[n] = value
    return out
