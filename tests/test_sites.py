"""Site finding on real exports: every exporter/opset/BatchNorm setting finds the same sites."""
from __future__ import annotations

import pytest
from conftest import EXPORTS, exported

import mstransform as mst
import zoo

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
