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
