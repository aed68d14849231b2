"""The torch.fx pass (``passes/fx/transform.py``): site parity with the ONNX pass, stats interchange, export
parity, alpha 0 as the identity, catalogue entries found as in ONNX, and another model's statistics refused."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from helpers import assert_matches_reference, onnx_operator_values, random_inputs, torch_operator_values

import mstransform as mst
import zoo
from mstransform.core import activations
from mstransform.core.activations import ActivationKind, Form
from mstransform.core.errors import StatsError, UsageError
from mstransform.passes.fx.module import MeanSparse
from mstransform.passes.fx.transform import find_fx_sites


def dynamo_export(model, name, path, opset=20):
    logging.disable(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        zoo.export(model, name, path, dynamo=True, opset=opset)
    logging.disable(logging.NOTSET)
    return path


def export_program(name):
    model = zoo.build(name)
    batch = torch.export.Dim("batch", min=1, max=1024)
    return model, torch.export.export(model, (torch.from_numpy(random_inputs(name, 2)),),
                                      dynamic_shapes={"x": {0: batch}})


@pytest.mark.parametrize("opset", [18, 20])
@pytest.mark.parametrize("name", list(zoo.EXPECTED))
def test_site_parity_with_onnx_pass(name, opset, tmp_path):
    model, ep = export_program(name)
    _, fx_table = find_fx_sites(ep)
    onnx_table = mst.find_sites(dynamo_export(model, name, tmp_path / "m.onnx", opset))
    assert fx_table.kinds() == zoo.EXPECTED[name] == onnx_table.kinds()
    assert [(s.kind, s.axis, s.channels) for s in fx_table] == [(s.kind, s.axis, s.channels) for s in onnx_table]
    same = [a.name == b.name for a, b in zip(fx_table, onnx_table)]
    if name == "mlp":  # the exporter's optimizer drops ELU's output Mul, and with it the name `node_elu`
        assert same.count(False) == 1 and fx_table.sites[1].name == "node_elu"
    else:
        assert all(same), ([s.name for s in fx_table], [s.name for s in onnx_table])


def test_renamed_site_falls_back_to_position(tmp_path):
    model, ep = export_program("mlp")
    x = random_inputs("mlp", 16)
    stats = mst.calibrate(ep, x)
    path = dynamo_export(model, "mlp", tmp_path / "mlp.onnx")
    report = mst.harden(path, stats, alpha=0.2, output=tmp_path / "h.onnx")
    assert len(report.sites) == 9 and "node_Elu_13" in report.sites


def test_symbolic_trace_finds_the_same_kinds():
    for name in zoo.EXPECTED:
        x = torch.from_numpy(random_inputs(name, 2))
        _, table = find_fx_sites(zoo.build(name), example=(x,))
        assert table.kinds() == zoo.EXPECTED[name], name


def test_residual_placement_parity(tmp_path):
    model, ep = export_program("vit")
    _, fx_table = find_fx_sites(ep, "activations+residual")
    onnx_table = mst.find_sites(dynamo_export(model, "vit", tmp_path / "v.onnx"), "activations+residual")
    assert fx_table.kinds() == onnx_table.kinds() == {"Gelu": 2, "residual": 4}


def test_stats_measured_on_fx_apply_to_onnx_and_back(tmp_path):
    model, ep = export_program("resnet")
    x = random_inputs("resnet", 48, seed=3)
    fx_stats = mst.calibrate(ep, x, batch_size=16)
    path = dynamo_export(model, "resnet", tmp_path / "r.onnx")
    onnx_stats = mst.calibrate(path, {"input": x}, batch_size=16, progress=False)
    assert list(fx_stats.sites) == list(onnx_stats.sites)
    for name, s in fx_stats.sites.items():
        o = onnx_stats.sites[name].moments
        assert s.moments.count == o.count
        np.testing.assert_allclose(s.moments.mean, o.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s.moments.var, o.var, rtol=1e-5, atol=1e-6)
    # FX stats harden the ONNX export; ONNX stats harden the FX graph
    fx_stats.save(tmp_path / "fx.npz")
    r = mst.harden(path, mst.load_stats(tmp_path / "fx.npz"), alpha=0.2, output=tmp_path / "h.onnx")
    assert len(r.sites) == 5 and r.max_abs_diff == 0
    gm = mst.harden_torch(ep, onnx_stats, alpha=0.2)
    assert sum(isinstance(m, MeanSparse) for m in gm.modules()) == 5


@pytest.mark.parametrize("name", ["resnet", "mobilenet", "vit"])
def test_export_parity(name, tmp_path):
    model, ep = export_program(name)
    x = random_inputs(name, 32, seed=1)
    path = dynamo_export(model, name, tmp_path / "m.onnx")
    stats = mst.calibrate(path, {"input": x}, progress=False)
    mst.harden(path, stats, alpha=0.3, output=tmp_path / "pass.onnx")
    gm = mst.harden_torch(ep, stats, alpha=0.3)
    fx_onnx = dynamo_export(gm, name, tmp_path / "fx.onnx")
    ops = [n.op_type for n in onnx.load(str(fx_onnx)).graph.node]
    n_sites = sum(zoo.EXPECTED[name].values())
    for op in ("Sub", "Abs", "Less", "Where"):
        assert ops.count(op) >= n_sites, (op, ops.count(op))
    # the independent reference: the torch model with the paper's operator hooked in, constants from the stats,
    # each operator's output forced to the implementation's (conftest.check_operators)
    params = [(s.moments.mean, 0.3 * np.sqrt(s.moments.var), s.axis) for s in stats.sites.values()]
    probe = random_inputs(name, 4, seed=9)
    base = ort.InferenceSession(str(path)).run(None, {"input": probe})[0]
    with torch.no_grad():
        assert np.max(np.abs(gm(torch.from_numpy(probe)).numpy() - base)) > 1e-4  # hardening moved the output
    for label, (out, ops) in (("FX graph, eager", torch_operator_values(gm, probe)),
                              ("FX graph exported", onnx_operator_values(fx_onnx, probe)),
                              ("ONNX pass", onnx_operator_values(tmp_path / "pass.onnx", probe))):
        assert len(ops) == n_sites, label
        assert_matches_reference(out, ops, name, params, probe)


def test_alpha_zero_is_the_identity():
    model, ep = export_program("vit")
    stats = mst.calibrate(ep, random_inputs("vit", 16))
    gm = mst.harden_torch(ep, stats, alpha=0.0)
    x = torch.from_numpy(random_inputs("vit", 4, seed=2))
    with torch.no_grad():
        assert torch.equal(gm(x), ep.module()(x))


class ConvSineRelu(torch.nn.Module):
    """``Conv1d -> torch.sin -> ReLU``, and hardtanh(0, 6) and hardtanh(-1, 1) of the Conv, on ``[N, 4, 16]`` (rank 3)."""

    def __init__(self):
        super().__init__()
        self.conv, self.act = torch.nn.Conv1d(4, 6, 3, padding=1), torch.nn.ReLU()

    def forward(self, x):
        c = self.conv(x)
        return self.act(torch.sin(c)), torch.nn.functional.hardtanh(c, 0.0, 6.0), torch.nn.functional.hardtanh(c)


def test_an_activation_added_to_the_table_alone_is_an_fx_site_and_keeps_the_layout(monkeypatch):
    """As in the ONNX pass (tests/unit/passes/sites/test_onnx_finder.py): one catalogue entry, found and kept through; and a hardtanh is a
    ReLU6 by its arguments, as the table says."""
    x = torch.randn(2, 4, 16)
    _, before = find_fx_sites(ConvSineRelu(), example=(x,))
    assert [(s.kind, s.axis) for s in before] == [("Relu", 2), ("Clip(ReLU6)", 1)]
    sine = ActivationKind("Sine", (Form("sine", np.sin),), frozenset({"Sin"}),
                          ("function:torch.sin", "method:sin", "aten:sin.default"))
    monkeypatch.setattr(activations, "ACTIVATIONS", activations.ACTIVATIONS + (sine,))
    _, table = find_fx_sites(ConvSineRelu(), example=(x,))
    assert [(s.kind, s.axis) for s in table] == [("Sine", 1), ("Relu", 1), ("Clip(ReLU6)", 1)], table.format()
    assert not [r for r in table.rejected if r.op_type == "Clip(ReLU6)"]  # hardtanh(-1, 1): no activation at all
    _, aten = find_fx_sites(torch.export.export(ConvSineRelu(), (x,)), example=(x,))  # ATen names: aten:sin.default
    assert [(s.kind, s.axis) for s in aten] == [("Sine", 1), ("Relu", 1), ("Clip(ReLU6)", 1)], aten.format()


class LoneErf(torch.nn.Module):
    def forward(self, x):
        return torch.erf(x) + 1.0


def test_a_lone_erf_is_reported_as_in_onnx():
    """The engine reports an op the catalogue names as a part only (an Erf of GELU), for FX as for ONNX
    (tests/unit/passes/sites/test_onnx_rules.py): no site, one line saying why."""
    _, table = find_fx_sites(LoneErf(), example=(torch.randn(2, 8),))
    assert len(table) == 0
    assert [(r.op_type, r.reason) for r in table.rejected] == [
        ("erf", "Erf computes no catalogue activation beyond its own op (it appears only inside a Gelu): not hardened")]


# -- another model's statistics ------------------------------------------------------------------------------

def convnet(width: int) -> nn.Module:
    torch.manual_seed(width)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


def test_harden_torch_refuses_another_models_stats():
    x = np.random.default_rng(0).standard_normal((32, 3, 6, 6)).astype(np.float32)
    stats = mst.calibrate(convnet(8), x, batch_size=16, progress=False)
    other_arch = nn.Sequential(nn.Flatten(), nn.Linear(108, 10), nn.ReLU(), nn.Linear(10, 7), nn.ReLU()).eval()
    for label, model in (("same architecture, other widths", convnet(12)), ("another architecture", other_arch)):
        with pytest.raises(StatsError) as err:
            mst.harden_torch(model, stats, alpha=0.2)
        assert "\n" not in str(err.value), label
    exported = torch.export.export(convnet(12), (torch.zeros(2, 3, 6, 6),))
    with pytest.raises(StatsError, match="channels"):
        mst.harden_torch(exported, stats, alpha=0.2)
    with pytest.raises(UsageError, match="example"):  # no shapes to check against: asked for, not guessed
        mst.harden_torch(convnet(12), dataclasses.replace(stats, inputs=()), alpha=0.2)
    # its own stats still harden it, with or without an example batch
    for example in (None, (torch.from_numpy(x[:2]),)):
        hardened = mst.harden_torch(convnet(8), stats, alpha=0.2, example=example)
        with torch.no_grad():
            assert hardened(torch.from_numpy(x[:4])).shape == (4, 5)
