"""Exact streaming per-channel moments (count, mean, M2, max |x|) in float64.

Each batch is reduced to its own (count, mean, M2) and folded in with Chan et al.'s
pairwise merge, so the result does not depend on batch size or order beyond float64
rounding, memory does not grow with the number of samples, and shards measured in
separate processes merge into exactly what one pass would give.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Moments:
    count: int
    mean: np.ndarray  # (C,) float64
    m2: np.ndarray  # (C,) float64, sum of squared deviations
    absmax: np.ndarray  # (C,) float64

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
    def of_batch(cls, x: np.ndarray, axis: int) -> "Moments":
        """Moments of one batch ``x`` per channel along ``axis``."""
        axes = tuple(i for i in range(x.ndim) if i != axis)
        channels = x.shape[axis]
        n = x.size // channels if channels else 0
        if n == 0:
            return cls.empty(channels)
        bshape = [1] * x.ndim
        bshape[axis] = channels
        work = x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)
        rough = work.sum(axis=axes, dtype=np.float64) / n
        shift = rough.astype(work.dtype).reshape(bshape)
        d = work - shift  # centred in the working precision; the residual mean is added back below
        s1 = d.sum(axis=axes, dtype=np.float64)
        sq = np.square(d, out=d)
        s2 = sq.sum(axis=axes, dtype=np.float64)
        mean = shift.reshape(-1).astype(np.float64) + s1 / n
        m2 = np.maximum(s2 - s1 * s1 / n, 0.0)
        absmax = np.maximum(work.max(axis=axes), -work.min(axis=axes)).astype(np.float64)
        return cls(n, mean, m2, absmax)

    def merge(self, other: "Moments") -> "Moments":
        """Chan's parallel merge of two disjoint sets of samples."""
        if other.count == 0:
            return Moments(self.count, self.mean.copy(), self.m2.copy(), self.absmax.copy())
        if self.count == 0:
            return Moments(other.count, other.mean.copy(), other.m2.copy(), other.absmax.copy())
        if self.channels != other.channels:
            raise ValueError(f"cannot merge moments of {self.channels} and {other.channels} channels")
        total = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / total)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / total)
        return Moments(total, mean, m2, np.maximum(self.absmax, other.absmax))
