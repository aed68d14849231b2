"""Exact streaming per-channel moments (count, mean, M2, max |x|) in float64.

Each batch is reduced to its own (count, mean, M2) and folded in with Chan et al.'s
pairwise merge, so the result does not depend on batch size or order beyond float64
rounding, memory does not grow with the number of samples, and shards measured in
separate processes merge into exactly what one pass would give.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


CHUNK_ELEMENTS = 1 << 15  # float64 temporaries of 256 KiB: they stay in cache


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
        """Moments of one batch ``x`` per channel along ``axis``.

        Two passes, both exact in float64: the channel sums (cast on the fly, no float64
        copy of the batch), then squared deviations from the batch mean over cache-sized
        chunks, so the float64 temporaries stay small.
        """
        channels = x.shape[axis]
        pre = int(np.prod(x.shape[:axis], dtype=np.int64))
        post = int(np.prod(x.shape[axis + 1:], dtype=np.int64))
        n = pre * post
        if n == 0 or channels == 0:
            return cls.empty(channels)
        xr = x.reshape(pre, channels, post)
        mean = xr.sum(axis=(0, 2), dtype=np.float64) / n
        m2 = np.zeros(channels)
        step = max(1, CHUNK_ELEMENTS // (channels * post))
        centre = mean[None, :, None]
        for i in range(0, pre, step):
            d = xr[i:i + step].astype(np.float64)
            d -= centre
            m2 += np.einsum("acb,acb->c", d, d)
        absmax = np.maximum(xr.max(axis=(0, 2)), -xr.min(axis=(0, 2))).astype(np.float64)
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

