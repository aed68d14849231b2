"""The shipped example's held-out images as its model takes them (float32 in [0, 1]): shared by the twin's
check and the API's result tests."""
from __future__ import annotations

import numpy as np
from helpers import EXAMPLE


def example_images(n: int) -> np.ndarray:
    """The first ``n`` images of ``examples/fashion_mnist/test.npz``, scaled to [0, 1]."""
    return (np.load(EXAMPLE / "test.npz")["input"][:n] / 255).astype(np.float32)
