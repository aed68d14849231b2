"""Site finding on real exports: every exporter/opset/BatchNorm setting finds the same sites."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from helpers import EXPORTS, exported, tiny_model

import mstransform as mst
import zoo
from mstransform.core import activations
from mstransform.core.activations import ActivationKind, Form, TorchCall

MODELS = list(zoo.EXPECTED)


@pytest.mark.parametrize("label", [e[0] for e in EXPORTS])
@pytest.mark.parametrize("name", MODELS)
def test_expected_sites_found(name, label, export_dir):
    table = mst.find_sites(exported(name, label, export_dir))
    assert table.kinds() == zoo.EXPECTED[name], table.format()
    for site in table:
        assert site.axis is not None and isinstance(site.channels, int), table.format()


@pytest.mark.parametrize("label", ["legacy-17-bn", "dynamo-20-folded"])
def test_squeeze_excite_is_skipped_with_a_reason(label, export_dir):
    path = exported("mobilenet", label, export_dir)
    table = mst.find_sites(path)
    se = [r for r in table.rejected if "Squeeze-and-Excitation" in r.reason]
    assert sorted(r.op_type for r in se) == ["HardSigmoid", "Relu"]
    with_se = mst.find_sites(path, selection=mst.Selection(include_se=True))
    assert len(with_se) == len(table) + 2


def test_batchnorm_kept_is_the_producer(export_dir):
    table = mst.find_sites(exported("resnet", "legacy-17-bn", export_dir))
    assert [s.producer for s in table] == ["BatchNormalization", "BatchNormalization", "Add (residual)",
                                           "BatchNormalization", "Add (residual)"]
    folded = mst.find_sites(exported("resnet", "legacy-17-folded", export_dir))
    assert [s.producer for s in folded] == ["Conv", "Conv", "Add (residual)", "Conv", "Add (residual)"]


@pytest.mark.parametrize("label", ["legacy-17-folded", "dynamo-20-folded"])
def test_channel_axis_per_layout(label, export_dir):
    conv = mst.find_sites(exported("resnet", label, export_dir))
    assert {(s.axis, s.channels) for s in conv} == {(1, 8)}
    tokens = mst.find_sites(exported("vit", label, export_dir))
    assert {(s.axis, s.channels) for s in tokens} == {(2, 32)}


@pytest.mark.parametrize("label", ["legacy-17-folded", "dynamo-18-folded"])
def test_gelu_decompositions_are_one_site_each(label, export_dir):
    table = mst.find_sites(exported("vit", label, export_dir))
    assert sorted(s.form.split(":")[0] for s in table) == ["erf", "tanh"]
    # nothing of the decomposition (Erf, Tanh) is reported as a separate activation
    assert not [r for r in table.rejected if r.op_type in ("Erf", "Tanh")]


def test_residual_placement_adds_each_residual_output(export_dir):
    vit = mst.find_sites(exported("vit", "dynamo-20-folded", export_dir), "activations+residual")
    assert vit.kinds() == {"Gelu": 2, "residual": 4}
    # in the ResNet every residual add already feeds a ReLU: no extra site
    res = mst.find_sites(exported("resnet", "legacy-17-bn", export_dir), "activations+residual")
    assert res.kinds() == {"Relu": 5}


def test_linear_inputs_placement(export_dir):
    table = mst.find_sites(exported("resnet", "legacy-17-folded", export_dir), "linear-inputs")
    # 4 convs inside the blocks + the classifier; the stem reads the raw image and is skipped
    assert table.kinds() == {"Conv": 4, "Gemm": 1}
    assert any("graph input" in r.reason for r in table.rejected)


def test_include_exclude_and_axis_override(export_dir):
    path = exported("resnet", "legacy-17-folded", export_dir)
    assert len(mst.find_sites(path, selection=mst.Selection(include="block1"))) == 2
    assert len(mst.find_sites(path, selection=mst.Selection(exclude="block"))) == 1
    table = mst.find_sites(path, selection=mst.Selection(axes=(("/act/Relu", 0),)))
    assert table.by_name()["/act/Relu"].axis_rule == "override"


def test_sites_command_prints_table_and_reasons(cli, export_dir):
    r = cli("sites", exported("mobilenet", "legacy-17-folded", export_dir))
    assert r.code == 0
    assert "HardSwish" in r.out and "Clip(ReLU6)" in r.out
    assert "not matched (2)" in r.out and "Squeeze-and-Excitation" in r.out


# -- the catalogue is one table: an entry is found, kept by layout and named everywhere ---------------------------

def conv1d_then(path, *ops):
    """``Conv1d -> ops... -> Relu`` on ``[N, 4, 16]``: rank 3, where the rank rule alone says tokens (axis 2); only
    a layout kept through every op reaches the Conv and gives axis 1."""
    rng = np.random.default_rng(0)
    names = ["c", *[f"a{i}" for i in range(len(ops))]]
    nodes = [oh.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3], pads=[1, 1])]
    nodes += [oh.make_node(op, [names[i]], [names[i + 1]], name=op.lower()) for i, op in enumerate(ops)]
    nodes.append(oh.make_node("Relu", [names[-1]], ["y"], name="relu"))
    model = tiny_model(nodes, [("x", ["N", 4, 16])], [("y", None)],
                       {"w": rng.standard_normal((6, 4, 3)).astype(np.float32)})
    onnx.save(onnx.shape_inference.infer_shapes(model), str(path))
    return path


def test_a_site_is_found_through_softsigns_layout(tmp_path):
    table = mst.find_sites(conv1d_then(tmp_path / "m.onnx", "Softsign"))
    assert [(s.kind, s.axis, s.channels) for s in table] == [("Softsign", 1, 6), ("Relu", 1, 6)], table.format()
    assert table.sites[1].axis_rule == "conv (N,C,H)"


SINE = ActivationKind("Sine", (Form("sine", np.sin),), frozenset({"Sin"}),
                      ("function:torch.sin", "method:sin", "aten:sin.default"),
                      twin=TorchCall("torch.sin"))


def test_an_activation_added_to_the_table_alone_is_a_site_and_keeps_the_layout(tmp_path, monkeypatch):
    path = conv1d_then(tmp_path / "m.onnx", "Sin")
    before = mst.find_sites(path)
    assert [(s.kind, s.axis) for s in before] == [("Relu", 2)]  # Sin: no activation, and it hides the Conv
    monkeypatch.setattr(activations, "ACTIVATIONS", activations.ACTIVATIONS + (SINE,))
    table = mst.find_sites(path)
    assert [(s.name, s.kind, s.form, s.axis) for s in table] == [("sin", "Sine", "op", 1), ("relu", "Relu", "op", 1)]
