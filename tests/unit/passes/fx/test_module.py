"""The operator as a PyTorch module (``passes/fx/module.py``): its straight-through gradient is the identity where
the plain gradient is zero, and ``set_alpha`` switches it without reinsertion."""
from __future__ import annotations

import numpy as np
import torch

from mstransform.passes.fx.module import MeanSparse, straight_through

def test_straight_through_gradient_is_identity_where_plain_is_zero():
    op = MeanSparse(np.zeros(3), np.ones(3), 0.5, rank=2, axis=1)
    x = torch.tensor([[0.1, -2.0, 0.3], [1.5, 0.2, -0.4]], requires_grad=True)
    (g_plain,) = torch.autograd.grad(op(x).sum(), x)
    blocked = (x.detach().abs() < 0.5)
    assert torch.all(g_plain[blocked] == 0) and torch.all(g_plain[~blocked] == 1)
    with straight_through(op):
        y = op(x)
        (g_st,) = torch.autograd.grad(y.sum(), x)
    assert torch.all(g_st == 1)
    assert torch.equal(y, op(x))  # forward values unchanged
    assert not op.straight_through


def test_set_alpha_switches_without_reinsertion():
    op = MeanSparse(np.zeros(2), np.ones(2), 0.0, rank=2, axis=1)
    x = torch.tensor([[0.2, -0.7]])
    assert torch.equal(op(x), x)
    op.set_alpha(0.5)
    assert torch.equal(op(x), torch.tensor([[0.0, -0.7]]))
