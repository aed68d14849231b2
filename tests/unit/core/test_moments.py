"""Per-channel moments (``core.moments``): merging parts with Chan's rule equals numpy over the whole, to
float64 rounding, and moments of different channel counts are refused in one line."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import numpy_moments

from mstransform.core.errors import StatsError
from mstransform.core.moments import Moments


def test_moments_merge_is_exact_against_numpy():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((101, 3, 4)) * np.array([1e-3, 1.0, 1e3])[None, :, None] + 1e4
    parts = [data[:1], data[1:40], data[40:]]
    m = Moments.empty(3)
    for p in parts:
        m = m.merge(numpy_moments(p, 1, shift=p[0].mean(axis=1)))
    np.testing.assert_allclose(m.mean, data.mean(axis=(0, 2)), rtol=1e-13)
    np.testing.assert_allclose(m.var, data.var(axis=(0, 2)), rtol=1e-9)


def test_moments_of_different_channel_counts_do_not_merge():
    a = Moments(4, np.zeros(3), np.ones(3))
    with pytest.raises(StatsError, match="3 and 2 channels") as e:
        a.merge(Moments(4, np.zeros(2), np.ones(2)))
    assert "\n" not in str(e.value)
