"""The real-model tier on the torch.fx path: a trained PyTorch model shipped in a wheel.

facenet-pytorch 2.6.0 ships MTCNN's trained nets as ``torch.save`` state_dicts
(``tests/support/realmodels.py``: ``TORCH_MODELS["mtcnn-onet"]``). Its own module imports torchvision,
so :class:`ONet` (``tests/support/mtcnn.py``) rebuilds the architecture of ``facenet_pytorch/models/mtcnn.py``
(``class ONet``: same layers, names and forward) and loads the shipped weights with
``torch.load(weights_only=True)``. Evaluation data is real too: crops of matplotlib's Grace Hopper
portrait (faces) and of foolbox's ImageNet images (no faces).

Checked: the model goes through ``torch.export`` -> ``mst.calibrate`` -> ``mst.harden_torch``;
the hardened module agrees with an independent reference (the original module with forward
pre-hooks applying the paper's operator in float64 to the tensor entering each PReLU), except in
samples where some value lies within rounding distance of a band edge; ``torch.compile`` of the
hardened module agrees with it eagerly the same way; alpha = 0 is the base model bit for bit; and
the face / non-face accuracy and landmarks of the hardened model stay those of the base model.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import mstransform as mst
import realmodels as rm
from mstransform.passes.fx.module import MeanSparse
from mtcnn import THRESHOLD, ONet, _faces, _non_faces

ALPHA = 0.2
U32 = 2.0 ** -24
EDGE = 4 * U32  # band-edge window, relative to |x| + |c| + t: float32 c, t and x - c against float64
COMPILE_EDGE = 16 * U32  # the same for compiled against eager: fused kernels may round a few ulp apart


# ----------------------------------------------------------------------------- the reference
def _reference(model: ONet, stats, alpha: float, x: torch.Tensor, edge: float = EDGE):
    """The base module with a float64 MeanSparse on the input of each PReLU (a forward pre-hook),
    independent of the pass; returns its outputs and, per sample, whether any replaced-or-kept
    decision lay within ``edge`` (relative) of the band edge."""
    prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    sites = list(stats.sites.values())
    assert [s.kind for s in sites] == ["PRelu"] * len(prelus)
    near = torch.zeros(len(x), dtype=torch.bool)

    def hook_for(site):
        mean = torch.from_numpy(site.moments.mean)
        thr = alpha * torch.from_numpy(np.sqrt(site.moments.var))

        def hook(module, args):
            nonlocal near
            (v,) = args
            assert site.axis == 1 and v.shape[1] == module.num_parameters == len(mean)
            shape = [1, -1] + [1] * (v.dim() - 2)
            v64, c, t = v.double(), mean.reshape(shape), thr.reshape(shape)
            d = (v64 - c).abs()
            close = (d - t).abs() <= edge * (v64.abs() + c.abs() + t)
            near = near | close.flatten(1).any(1)
            return (torch.where(d < t, c, v64).to(v.dtype),)

        return hook

    handles = [m.register_forward_pre_hook(hook_for(s)) for m, s in zip(prelus, sites)]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, near


def _edge_samples(hardened: nn.Module, x: torch.Tensor, edge: float) -> torch.Tensor:
    """Per sample: does any MeanSparse of ``hardened`` see a value within ``edge`` of its band edge?"""
    near = torch.zeros(len(x), dtype=torch.bool)

    def hook(module, args):
        nonlocal near
        (v,) = args
        d = (v.double() - module.center.double()).abs()
        t = module.threshold.double()
        close = (d - t).abs() <= edge * (v.double().abs() + module.center.double().abs() + t)
        near = near | close.flatten(1).any(1)

    ops = [m for m in hardened.modules() if isinstance(m, MeanSparse)]
    handles = [m.register_forward_pre_hook(hook) for m in ops]
    try:
        with torch.no_grad():
            hardened(x)
    finally:
        for h in handles:
            h.remove()
    return near


def _sample_diff(got, ref) -> torch.Tensor:
    """Per sample, the largest |got - ref| over all three outputs, relative to 1 + |ref|."""
    return torch.stack([((g.double() - r.double()).abs() / (1 + r.double().abs())).flatten(1).amax(1)
                        for g, r in zip(got, ref)]).amax(0)


# ----------------------------------------------------------------------------- the fixture
@pytest.fixture(scope="module")
def onet():
    torch.manual_seed(0)
    model = ONet().eval()
    model.load_state_dict(rm.state_dict_or_skip("mtcnn-onet"))
    portrait, imagenet = rm.faces_or_skip()
    calib = torch.cat([_faces(portrait, 24, seed=100), _non_faces(portrait, imagenet, 40, seed=101)])
    pos, neg = _faces(portrait, 32, seed=0), _non_faces(portrait, imagenet, 32, seed=1)
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, (calib[:2],), dynamic_shapes={"x": {0: batch}})
    stats = mst.calibrate(ep, calib, batch_size=16, progress=False)
    hardened = mst.harden_torch(ep, stats, alpha=ALPHA).eval()
    return dict(model=model, ep=ep, stats=stats, hardened=hardened, calib=calib,
                x=torch.cat([pos, neg]), labels=torch.tensor([1] * len(pos) + [0] * len(neg)))


def test_sites_and_stats(onet):
    stats = onet["stats"]
    assert stats.samples == len(onet["calib"]) == 64
    assert [(s.kind, s.axis, s.moments.channels) for s in stats.sites.values()] == \
        [("PRelu", 1, c) for c in (32, 64, 64, 128, 256)]
    ops = [m for m in onet["hardened"].modules() if isinstance(m, MeanSparse)]
    assert len(ops) == 5 and all(float(m.alpha) == np.float32(ALPHA) for m in ops)
    assert all(np.all(s.moments.var > 0) for s in stats.sites.values())


def test_hardened_matches_the_hook_reference(onet):
    x = torch.cat([onet["x"], onet["calib"]])
    with torch.no_grad():
        got = onet["hardened"](x)
    ref, near = _reference(onet["model"], onet["stats"], ALPHA, x)
    diff = _sample_diff(got, ref)
    print(f"\nhardened vs hook reference: max {diff.max().item():.3g} over {len(x)} samples, "
          f"{int(near.sum())} within {EDGE:.2g} of a band edge")
    # away from the band edge the hardened model is the reference up to float32 rounding
    assert diff[~near].max() <= 1e-6, (diff[~near].max(), int(near.sum()))
    assert near.float().mean() <= 0.25, f"{int(near.sum())} of {len(x)} samples touch a band edge"
    # the operator really acts: the hardened outputs are not the base model's
    with torch.no_grad():
        base = onet["model"](x)
    assert _sample_diff(base, ref).median() > 1e-4


def test_compiled_matches_eager(onet):
    hardened, x = onet["hardened"], onet["x"]
    near = _edge_samples(hardened, x, COMPILE_EDGE)
    compiled = torch.compile(hardened)
    with torch.no_grad():
        a, b = compiled(x), hardened(x)
    diff = _sample_diff(a, b)
    print(f"\nmax |compiled - eager| (relative to 1 + |eager|) {diff.max().item():.3g}; "
          f"{int(near.sum())} of {len(x)} samples within {COMPILE_EDGE:.2g} of a band edge")
    assert diff[~near].max() <= 1e-5, diff[~near].max()
    assert near.float().mean() <= 0.25


def test_alpha_zero_is_the_base_model_exactly(onet):
    identity = mst.harden_torch(onet["ep"], onet["stats"], alpha=0.0).eval()
    x = onet["x"]
    with torch.no_grad():
        got, base = identity(x), onet["model"](x)
    assert len(got) == len(base) == 3
    assert all(torch.equal(g, b) for g, b in zip(got, base))


def _accuracy(p, labels) -> float:
    return ((p[:, 1] > THRESHOLD).long() == labels).float().mean().item()


def test_face_quality_base_vs_hardened(onet):
    x, labels = onet["x"], onet["labels"]
    with torch.no_grad():
        (_, lm_b, p_b), (_, lm_h, p_h) = onet["model"](x), onet["hardened"](x)
        stronger = {a: _accuracy(mst.harden_torch(onet["ep"], onet["stats"], alpha=a)(x)[2], labels)
                    for a in (0.5, 1.0)}
    acc_b, acc_h = _accuracy(p_b, labels), _accuracy(p_h, labels)
    faces = labels == 1
    # landmarks are fractions of the box side (5 x, then 5 y): moved distance in pixels of the 48x48 crop
    moved = (48 * (lm_h[faces] - lm_b[faces]).view(-1, 2, 5).norm(dim=1)).mean().item()
    print(f"\nONet face/non-face accuracy at p > {THRESHOLD} on {int(faces.sum())} faces + {int((~faces).sum())} "
          f"non-faces: base {acc_b:.3f}, hardened alpha {ALPHA} {acc_h:.3f} "
          f"(mean |dp| {(p_h[:, 1] - p_b[:, 1]).abs().mean().item():.2g}; landmarks moved {moved:.3f} px of 48); "
          + ", ".join(f"alpha {a} {v:.3f}" for a, v in stronger.items()))
    assert acc_b >= 0.95
    assert acc_h >= acc_b - 0.05
    assert moved < 1.0
