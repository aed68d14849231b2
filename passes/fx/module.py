"""The MeanSparse operator as a PyTorch module: what the FX pass inserts.

``MeanSparse`` holds its constants as buffers pre-shaped for broadcasting
(``[1,C,1,1]``, ``[1,1,C]``, ...), so ``torch.onnx.export`` emits the same
``Sub -> Abs -> Less -> Where`` chain as the ONNX pass with the same constant shapes.
The forward has no Python branching on tensor values: it traces, exports and compiles.
``threshold = alpha * sigma`` is kept as a buffer (recomputed by :meth:`set_alpha`), so
``alpha = 0`` gives threshold 0 and strict ``<`` never fires: exactly the identity.

The constants are buffers, so they follow ``.to(device)`` with the model; the pass creates
them on the device of the tensors they guard. The comparison runs in the guarded tensor's
dtype (fp32, fp16, bf16), as the exported ONNX operator does.

``straight_through = True`` switches the backward pass to the identity (BPDA, for
adaptive evaluation) without touching the forward values or re-inserting anything.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn as nn



def _shaped(values: np.ndarray, rank: int, axis: int, device=None) -> torch.Tensor:
    shape = [1] * rank
    shape[axis] = -1
    return torch.as_tensor(np.asarray(values, dtype=np.float32)).reshape(shape).clone().to(device)


class _StraightThroughSparsify(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, center, threshold):
        return torch.where((x - center).abs() < threshold, center, x)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


class MeanSparse(nn.Module):
    """``y = center where |x - center| < threshold else x``, per channel along ``axis``."""

    def __init__(self, center: np.ndarray, sigma: np.ndarray, alpha: float, *, rank: int, axis: int,
                 site: str = "", device: torch.device | str | None = None):
        super().__init__()
        self.site, self.axis, self.rank = site, axis, rank
        self.register_buffer("center", _shaped(center, rank, axis, device))
        self.register_buffer("sigma", _shaped(sigma, rank, axis, device))
        self.register_buffer("alpha", torch.tensor(float(alpha), device=device))
        self.register_buffer("threshold", self.sigma * self.alpha)
        self.straight_through = False

    def set_alpha(self, alpha: float) -> None:
        self.alpha.fill_(float(alpha))
        self.threshold.copy_(self.sigma * self.alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.center.to(x.dtype)
        t = self.threshold.to(x.dtype)
        if self.straight_through:
            return _StraightThroughSparsify.apply(x, c, t)
        return torch.where((x - c).abs() < t, c, x)

    def extra_repr(self) -> str:
        return f"site={self.site!r}, axis={self.axis}, alpha={float(self.alpha):g}"


@contextlib.contextmanager
def straight_through(model: nn.Module, enabled: bool = True):
    """Temporarily give every MeanSparse in ``model`` an identity backward (BPDA)."""
    ops = [m for m in model.modules() if isinstance(m, MeanSparse)]
    previous = [m.straight_through for m in ops]
    for m in ops:
        m.straight_through = enabled
    try:
        yield model
    finally:
        for m, p in zip(ops, previous):
            m.straight_through = p
