"""Streaming per-channel moments (count, mean, M2, max |x|) in float64.

Each batch arrives as its own moments (built from the in-graph reductions' shifted sums by
:meth:`Moments.of_shifted_sums`, or by the FX observer) and is folded in with Chan et al.'s
pairwise merge, so the merge adds only float64 rounding whatever the batch size or order, memory does not grow
with the number of samples, and shards measured in separate processes merge into what one
pass gives. The error of a batch's own sums is stated in ``docs/method.md``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mstransform.core.errors import StatsError

MAX_OFFSET_RATIO = 0.25  # (mean - shift)^2 / E[(x - shift)^2] above which a batch is summed again


def offset_ratio(count: int, s1: np.ndarray, s2: np.ndarray) -> float:
    """The share of ``E[d^2]`` that comes from the offset of the shift: (s1/n)^2 / (s2/n), worst channel.

    The float32 sum ``s2`` carries a relative error; ``M2 = s2 - s1^2/n`` amplifies it by
    ``1 / (1 - ratio)``, so a ratio kept under 1/4 bounds the amplification by 4/3.
    """
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    offset = s1 * s1 / count
    ratio = np.divide(offset, s2, out=np.zeros_like(offset), where=s2 > 0)
    return float(ratio.max(initial=0.0))


def chan_merge(na: int, mean_a, m2_a, nb: int, mean_b, m2_b):
    """Chan et al.'s merge of two disjoint sets' (mean, M2) of ``na`` and ``nb`` > 0 samples.

    Plain arithmetic, so numpy arrays and torch tensors (the FX observers, on their device) share it."""
    total = na + nb
    delta = mean_b - mean_a
    return mean_a + delta * (nb / total), m2_a + m2_b + delta * delta * (na * nb / total)


@dataclass
class Moments:
    count: int
    mean: np.ndarray  # (C,) float64
    m2: np.ndarray  # (C,) float64, sum of squared deviations
    absmax: np.ndarray | None = None  # (C,) float64 max |x|; None where not measured (calibrate's ``extent``)

    @classmethod
    def empty(cls, channels: int) -> "Moments":
        z = np.zeros(channels, dtype=np.float64)
        return cls(0, z, z.copy(), z.copy())

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    @property
    def var(self) -> np.ndarray:
        """Population variance (divide by count)."""
        return self.m2 / max(self.count, 1)

    @classmethod
    def of_shifted_sums(cls, count: int, shift: np.ndarray, s1: np.ndarray, s2: np.ndarray,
                        hi: np.ndarray | None = None, lo: np.ndarray | None = None) -> "Moments":
        """Moments from sums of ``d = x - shift`` per channel: ``s1 = sum d``, ``s2 = sum d*d``.

        This is how the in-graph reductions report a batch (float32 sums, combined here in
        float64). ``M2 = s2 - s1^2/n`` loses nothing as long as the shift lies near the mean,
        which the caller ensures (see :func:`offset_ratio`).
        """
        s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
        mean = np.asarray(shift, np.float64) + s1 / count
        m2 = np.maximum(s2 - s1 * s1 / count, 0.0)
        absmax = None if hi is None else np.maximum(np.asarray(hi, np.float64), -np.asarray(lo, np.float64))
        return cls(int(count), mean, m2, absmax)

    def merge(self, other: "Moments") -> "Moments":
        """Chan's parallel merge of two disjoint sets of samples."""
        if other.count == 0:
            return self.copy()
        if self.count == 0:
            return other.copy()
        if self.channels != other.channels:
            raise StatsError(f"cannot merge moments of {self.channels} and {other.channels} channels: "
                             "measured at different sites or on differently shaped data")
        mean, m2 = chan_merge(self.count, self.mean, self.m2, other.count, other.mean, other.m2)
        total = self.count + other.count
        absmax = None if self.absmax is None or other.absmax is None else np.maximum(self.absmax, other.absmax)
        return Moments(total, mean, m2, absmax)

    def copy(self) -> "Moments":
        return Moments(self.count, self.mean.copy(), self.m2.copy(), None if self.absmax is None else self.absmax.copy())

