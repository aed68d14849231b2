"""AOTInductor packages: a hardened model compiled into a .pt2 and loaded back, against the paper's operator.

Inductor fuses the operators into the surrounding kernels, so a value at a band edge may be rounded
the other way there than in eager PyTorch. The package is therefore checked split at its operators
(``conftest.check_operators``): a second package of the same hardened graph also returns every
operator's input and output, and the reference runs with each operator's output forced to the
package's. The package a user gets (``mst.package_torch``, nothing exposed) must then agree with that
one on every sample where no operator input lies within rounding distance of its band edge.
"""
from __future__ import annotations

import numpy as np
import torch
from helpers import REL_TOL, OperatorValues, assert_matches_reference

import mstransform as mst
import zoo
from mstransform.deploy.aoti import load_package, package_module
from mstransform.passes.fx.module import MeanSparse

ALPHA = 0.3


def exposing_operators(gm: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, list[MeanSparse]]:
    """``gm`` (a hardened GraphModule, edited in place) returning ``(output, x_0.., y_0..)`` of its operators."""
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), MeanSparse)]
    out = next(n for n in gm.graph.nodes if n.op == "output")
    (result,) = out.args
    out.args = ((result, *[n.args[0] for n in calls], *calls),)
    gm.recompile()
    return gm, [gm.get_submodule(n.target) for n in calls]


def near_edge(ops: list[OperatorValues], margin: float) -> np.ndarray:
    """Per sample: whether some operator input lies within ``margin`` of its tensor's scale (plus 4 ulps)
    of its band edge, where two compilations of the same graph may decide it either way."""
    near = np.zeros(len(ops[0].x), bool)
    for op in ops:
        x = op.x.astype(np.float64)
        edge = np.abs(np.abs(x - op.center.astype(np.float64)) - op.threshold.astype(np.float64))
        scale = float(np.max(np.abs(x)))
        near |= np.any((edge <= margin * scale + 4 * float(np.spacing(np.float32(scale)))).reshape(len(x), -1), axis=1)
    return near


def images(n: int, seed: int) -> np.ndarray:
    """4x4 images for the (fully convolutional) ResNet: 128 values per site and sample, so that most samples
    hold no value within rounding distance of a band edge (at 16x16 every sample holds some)."""
    return np.random.default_rng(seed).standard_normal((n, 1, 4, 4)).astype(np.float32)


def test_package_runs_the_hardened_model_without_model_code(tmp_path):
    model = zoo.build("resnet").eval()
    stats = mst.calibrate(model, images(64, seed=1), progress=False)
    example = (torch.from_numpy(images(2, seed=0)),)
    params = [(s.moments.mean, ALPHA * np.sqrt(s.moments.var), s.axis) for s in stats.sites.values()]
    probe = images(32, seed=4)  # another batch size: the batch is dynamic

    # the same hardened graph, compiled with every operator's input and output as outputs
    gm, modules = exposing_operators(mst.harden_torch(model, stats, alpha=ALPHA))
    seen = package_module(gm, example, tmp_path / "exposed.pt2")
    with torch.no_grad():
        out, *values = [t.numpy() for t in load_package(seen)(torch.from_numpy(probe))]
    k = len(modules)
    ops = [OperatorValues(values[i], values[k + i], m.center.numpy(), m.threshold.numpy())
           for i, m in enumerate(modules)]
    assert k == 5
    assert_matches_reference(out, ops, "resnet", params, probe)

    # the package a user gets
    path = mst.package_torch(model, stats, example, tmp_path / "m.pt2", alpha=ALPHA)
    assert path.is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing staged left
    compiled = load_package(path)  # a fresh loader: no reference to the Python model
    with torch.no_grad():
        got, base = compiled(torch.from_numpy(probe)).numpy(), model(torch.from_numpy(probe)).numpy()
    assert np.max(np.abs(got - base)) > 1e-4  # hardening moved the output: the comparison can fail
    # Both compilations' operator inputs lie within REL_TOL of scale of the reference's (checked above for
    # one, by the same re-association argument for the other), so within 2 * REL_TOL of each other: only a
    # sample with a value that close to an edge may be decided differently. Every other sample must agree.
    clean = ~near_edge(ops, 2 * REL_TOL)
    assert clean.sum() >= 4, "too few samples away from every band edge for the comparison to mean anything"
    per_sample = np.max(np.abs(got - out).reshape(len(got), -1), axis=1) / max(float(np.max(np.abs(out))), 1e-6)
    assert np.all(per_sample[clean] <= 2 * REL_TOL), per_sample[clean]
