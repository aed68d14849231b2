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
        w = x.astype(np.float64)  # exact: every float32/float16 value is a float64
        mean = w.sum(axis=axes) / n
        bshape = [1] * x.ndim
        bshape[axis] = channels
        w -= mean.reshape(bshape)
        m2 = np.einsum(_einsum_spec(x.ndim, axis), w, w)
        absmax = np.maximum(x.max(axis=axes), -x.min(axis=axes)).astype(np.float64)
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


def _einsum_spec(ndim: int, axis: int) -> str:
    """``sum over all axes but axis of a*b``, e.g. ``abcd,abcd->b``."""
    letters = "abcdefghijklmnop"[:ndim]
    return f"{letters},{letters}->{letters[axis]}"
