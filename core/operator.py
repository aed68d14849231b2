"""The paper's operator in numpy: the independent reference for every check.

``y = center where |x - center| < threshold, else x`` per channel along ``axis``.
"""
from __future__ import annotations

import numpy as np


def _along(values, dtype, ndim: int, axis: int | None) -> np.ndarray:
    """Per-channel ``values`` as ``dtype``, shaped to broadcast along ``axis`` of a rank-``ndim`` tensor
    (``axis`` None: as given, already shaped to broadcast)."""
    a = np.asarray(values, dtype=dtype)
    if axis is None:
        return a
    shape = [1] * ndim
    shape[axis] = -1
    return a.reshape(shape)


def in_band(x: np.ndarray, center: np.ndarray, threshold: np.ndarray, axis: int | None) -> np.ndarray:
    """Where the operator replaces ``x``: ``|x - c| < t`` (strict) computed in ``x``'s type, ``c`` and ``t``
    per channel along ``axis`` (None: already shaped to broadcast against ``x``)."""
    c, t = _along(center, x.dtype, x.ndim, axis), _along(threshold, x.dtype, x.ndim, axis)
    return np.abs(x - c) < t


def sparsify(x: np.ndarray, center: np.ndarray, threshold: np.ndarray, axis: int | None) -> np.ndarray:
    """The paper's operator: ``center`` where :func:`in_band`, else ``x``."""
    return np.where(in_band(x, center, threshold, axis), _along(center, x.dtype, x.ndim, axis), x)


def unit_roundoff(dtype) -> float:
    """Half the spacing of 1.0 in ``dtype`` (2^-24 float32, 2^-11 float16, 2^-8 bfloat16)."""
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16":  # ml_dtypes' type: numpy's finfo does not know it
        return 2.0 ** -8
    return float(np.finfo(dtype).eps) / 2


def edge_band(x: np.ndarray, center: np.ndarray, threshold: np.ndarray, axis: int | None) -> np.ndarray:
    """Where ``|x - c| < t`` may be decided either way by a runtime working in ``x``'s type or wider.

    ``c`` and ``t`` are of ``x``'s type already. A runtime may round two things differently
    from numpy in that type: the subtraction (error at most ``u |x - c|``), and ``x`` itself --
    ONNX Runtime's CPU fallback for fp16 runs the producer and the operator in float32 and
    drops the Cast pair between them, so the operator sees ``x`` before the rounding that the
    exposed value got (error at most ``u |x|``). Only values whose exact distance lies within
    those errors of ``t`` can come out differently; everywhere else the decision is fixed."""
    x64 = x.astype(np.float64)
    c, t = _along(center, np.float64, x.ndim, axis), _along(threshold, np.float64, x.ndim, axis)
    distance = np.abs(x64 - c)
    return np.abs(distance - t) <= 2 * unit_roundoff(x.dtype) * (np.abs(x64) + np.maximum(distance, t))
