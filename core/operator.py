"""The paper's operator in numpy: the independent reference for every check.

``y = center where |x - center| < threshold, else x`` per channel along ``axis``.
"""
from __future__ import annotations

import numpy as np


def sparsify(x: np.ndarray, center: np.ndarray, threshold: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * x.ndim
    shape[axis] = -1
    c = np.asarray(center, dtype=x.dtype).reshape(shape)
    t = np.asarray(threshold, dtype=x.dtype).reshape(shape)
    return np.where(np.abs(x - c) < t, c, x)


def unit_roundoff(dtype) -> float:
    """Half the spacing of 1.0 in ``dtype`` (2^-24 float32, 2^-11 float16, 2^-8 bfloat16)."""
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16":  # ml_dtypes' type: numpy's finfo does not know it
        return 2.0 ** -8
    return float(np.finfo(dtype).eps) / 2


def edge_band(x: np.ndarray, center: np.ndarray, threshold: np.ndarray, axis: int) -> np.ndarray:
    """Where ``|x - c| < t`` may be decided either way by a runtime working in ``x``'s type or wider.

    ``c`` and ``t`` are of ``x``'s type already. A runtime may round two things differently
    from numpy in that type: the subtraction (error at most ``u |x - c|``), and ``x`` itself --
    ONNX Runtime's CPU fallback for fp16 runs the producer and the operator in float32 and
    drops the Cast pair between them, so the operator sees ``x`` before the rounding that the
    exposed value got (error at most ``u |x|``). Only values whose exact distance lies within
    those errors of ``t`` can come out differently; everywhere else the decision is fixed."""
    shape = [1] * x.ndim
    shape[axis] = -1
    x64 = x.astype(np.float64)
    c = np.asarray(center, np.float64).reshape(shape)
    t = np.asarray(threshold, np.float64).reshape(shape)
    distance = np.abs(x64 - c)
    return np.abs(distance - t) <= 2 * unit_roundoff(x.dtype) * (np.abs(x64) + np.maximum(distance, t))
