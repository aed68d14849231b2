"""The band of the sparsify operator as two exact bounds on ``x`` (the ``bounds`` formulation).

``fl(x - c)`` is monotone in ``x``, so ``{x : |fl(x - c)| < t}`` is an interval of floats of the
site's type; its nearest excluded floats ``low`` and ``high`` make ``low < x < high`` decide exactly
as ``|fl(x - c)| < t`` does, NaN and infinities included.
"""
from __future__ import annotations

import numpy as np


def _max_finite(dtype: np.dtype) -> float:
    if dtype.name == "bfloat16":  # ml_dtypes' type: numpy's finfo does not know it
        import ml_dtypes

        return float(ml_dtypes.finfo(dtype).max)
    return float(np.finfo(dtype).max)


def _keys(a: np.ndarray) -> np.ndarray:
    """Unsigned integers that sort like the floats of ``a`` (-0 just below +0, infinities at the ends)."""
    bits = a.view(np.dtype(f"u{a.dtype.itemsize}"))
    sign = bits.dtype.type(1 << (8 * a.dtype.itemsize - 1))
    return np.where(bits & sign, ~bits, bits | sign)


def _floats(keys: np.ndarray, dtype: np.dtype) -> np.ndarray:
    sign = keys.dtype.type(1 << (8 * dtype.itemsize - 1))
    return np.where(keys & sign, keys ^ sign, ~keys).astype(keys.dtype).view(dtype)


def exclusive_bounds(center, threshold, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the nearest floats of ``dtype`` just outside ``{x : |fl(x - c)| < t}``.

    With ``fl`` the subtraction in ``dtype`` (what the ``where`` form and the numpy reference
    compute), the set is an interval of floats because ``fl(x - c)`` is monotone in ``x``; a
    binary search over the floats' order finds its ends ``L <= c <= H``, and ``(low, high)`` are
    the floats just before ``L`` and just after ``H`` (``-inf``/``+inf`` at the ends of the
    range). Then ``low < x < high`` holds exactly when ``|fl(x - c)| < t``. A channel with no
    such ``x`` (``t <= 0``, NaN, or ``c`` not finite) gets ``(+inf, -inf)``: nothing is inside.
    """
    dtype = np.dtype(dtype)
    c = np.asarray(center).astype(dtype)
    t = np.asarray(threshold).astype(dtype)
    with np.errstate(all="ignore"):
        ok = np.isfinite(c.astype(np.float64)) & (t.astype(np.float64) > 0)
        cs = np.where(ok, c, np.zeros((), dtype)).astype(dtype)
        ts = np.where(ok, t, np.ones((), dtype)).astype(dtype)
        big = np.array([_max_finite(dtype)], dtype=dtype)
        kmin, kmax, kc = _keys(-big)[0], _keys(big)[0], _keys(cs)
        lo, hi = np.full_like(kc, kmin), kc.copy()
        while np.any(lo < hi):  # L: the first float with fl(x - c) > -t (true at c)
            mid = lo + (hi - lo) // 2
            inside = (_floats(mid, dtype) - cs) > -ts
            lo, hi = np.where(inside, lo, mid + 1), np.where(inside, mid, hi)
        first = lo
        lo, hi = kc.copy(), np.full_like(kc, kmax)
        while np.any(lo < hi):  # H: the last float with fl(x - c) < t
            mid = hi - (hi - lo) // 2
            inside = (_floats(mid, dtype) - cs) < ts
            lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid - 1)
        low, high = _floats(first - 1, dtype), _floats(lo + 1, dtype)
        inf = np.array(np.inf).astype(dtype)
        return np.where(ok, low, inf).astype(dtype), np.where(ok, high, -inf).astype(dtype)


def bounds_threshold(center: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """A threshold whose band equals ``low < x < high`` around ``center``, in their type.

    ``low`` and ``high`` are the nearest excluded floats, so ``t = min(|fl(low - c)|, |fl(high - c)|)``
    is excluded and everything inside is below it. The matcher recomputes the bounds from this
    ``t`` and accepts the operator only if they come back unchanged."""
    with np.errstate(all="ignore"):
        t = np.minimum(np.abs(low - center), np.abs(high - center))
        return np.where(low < high, t, np.zeros((), center.dtype)).astype(center.dtype)
