"""The site finder's rules, one by one, on minimal hand-built graphs.

Each ONNX pattern rule (passes/sites/onnx_rules.py) is matched on the smallest graph that holds its form,
asserting what it binds (kind, form, the tensor entering the activation, the nodes it claims and the
readers that must see the sparsified tensor), and refused on a near miss of that form, asserting the
reason it gives. Then the placement rules: the gate and Squeeze-and-Excitation rejections
(passes/sites/finder.py) and the channel-axis rules (passes/sites/placement.py).
"""
from __future__ import annotations

import math

import numpy as np
import onnx.helper as oh
import onnx_ir as ir
import pytest
from helpers import tiny_model

import mstransform as mst
from mstransform.passes.sites.onnx_finder import OnnxView
from mstransform.passes.sites.onnx_rules import (ActivationMatch, ClipRule, CompositeRule, NoMatch, SingleOpRule,
                                                 composites, match_activations)
from mstransform.passes.sites.placement import channel_axis


def f32(v):
    return np.array(v, np.float32)


def graph_of(nodes, consts=None, inputs=(("x", [2, 4]),), outputs=(("out", None),), opset=17) -> ir.Graph:
    return ir.serde.deserialize_model(tiny_model(nodes, inputs, outputs, consts, opset)).graph


def named(graph: ir.Graph, name: str) -> ir.Node:
    return next(n for n in graph if n.name == name)


def value(graph: ir.Graph, name: str) -> ir.Value:
    if name in [v.name for v in graph.inputs]:
        return next(v for v in graph.inputs if v.name == name)
    return next(v for n in graph for v in n.outputs if v.name == name)


def node(op, inputs, outputs, name=None, **attrs):
    return oh.make_node(op, inputs, outputs, name=name or outputs[0], **attrs)


def assert_match(result, kind, form, graph, nodes, readers):
    """``result`` is a match of ``kind``/``form`` fed by graph input ``x``, claiming exactly ``nodes`` (by name)
    and routing exactly ``readers`` ((node name, input index)) through the operator."""
    assert isinstance(result, ActivationMatch), result
    assert result.kind == kind
    assert result.form == form or result.form.startswith(form + ": "), result.form  # composites: "what: ops"
    assert result.feed is value(graph, "x")
    assert sorted(n.name for n in result.nodes) == sorted(nodes)
    assert sorted((n.name, i) for n, i in result.readers) == sorted(readers)


def assert_refused(rule, graph, anchor, reason):
    """``rule`` refuses the node named ``anchor`` with a :class:`NoMatch` naming the rule, that node and ``reason``
    (a reason ending in "..." is a prefix)."""
    result = rule.match(named(graph, anchor))
    assert isinstance(result, NoMatch), result
    assert (result.rule, result.node.name) == (type(rule), anchor)
    if reason.endswith("..."):
        assert result.reason.startswith(reason[:-3]), result.reason
    else:
        assert result.reason == reason
    assert str(result) == result.reason


MERGES = "{op} sits inside an expression of its own input that merges back at '{at}' and computes no catalogue activation"


# -- GELU, exact (Erf) form ---------------------------------------------------------------------

def gelu_erf(pre="div", scale=math.sqrt(2), one=1.0, tail="x-then-half"):
    consts = {"s": f32(scale if pre == "div" else 1 / scale), "one": f32(one), "half": f32(0.5)}
    nodes = [node("Div" if pre == "div" else "Mul", ["x", "s"], ["pre"]), node("Erf", ["pre"], ["erf"]),
             node("Add", ["one", "erf"], ["add"])]  # the constant first: commuted operands
    if tail == "x-then-half":
        nodes += [node("Mul", ["x", "add"], ["mulx"]), node("Mul", ["mulx", "half"], ["out"])]
    elif tail == "half-then-x":
        nodes += [node("Mul", ["add", "half"], ["mulh"]), node("Mul", ["mulh", "x"], ["out"])]
    elif tail == "half-of-x":  # (0.5 * x) * (1 + erf): torch's decomposition at some opsets
        nodes += [node("Mul", ["x", "half"], ["hx"]), node("Mul", ["hx", "add"], ["out"])]
    elif tail == "no-x":
        nodes += [node("Mul", ["add", "half"], ["out"])]
    return graph_of(nodes, consts)


@pytest.mark.parametrize("pre", ["div", "mul"])
@pytest.mark.parametrize("tail", ["x-then-half", "half-then-x", "half-of-x"])
def test_gelu_erf_form_matches(pre, tail):
    g = gelu_erf(pre, tail=tail)
    middle = {"x-then-half": ["mulx"], "half-then-x": ["mulh"], "half-of-x": ["hx"]}[tail]
    readers = {"x-then-half": [("pre", 0), ("mulx", 0)], "half-then-x": [("pre", 0), ("out", 1)],
               "half-of-x": [("pre", 0), ("hx", 0)]}[tail]
    assert_match(CompositeRule().match(named(g, "erf")), "Gelu", "erf", g,
                 ["pre", "erf", "add", *middle, "out"], readers)


ERF_ALONE = "Erf computes no catalogue activation beyond its own op (it appears only inside a Gelu): not hardened"


@pytest.mark.parametrize("graph, reason", [
    (lambda: gelu_erf(scale=2.0), MERGES.format(op="Erf", at="mulx") + ": not hardened"),
    (lambda: gelu_erf(pre="mul", scale=2.0), MERGES.format(op="Erf", at="mulx") + ": not hardened"),
    (lambda: gelu_erf(one=2.0), MERGES.format(op="Erf", at="mulx") + "..."),
    (lambda: gelu_erf(tail="no-x"), ERF_ALONE),  # the normal CDF: no activation of the catalogue
    (lambda: graph_of([node("Erf", ["x"], ["erf"]), node("Identity", ["erf"], ["out"])]), ERF_ALONE),
], ids=["div-by-2", "mul-by-half", "add-2", "no-mul-by-x", "erf-of-input"])
def test_gelu_erf_near_misses(graph, reason):
    g = graph()
    assert_refused(CompositeRule(), g, "erf", reason)


def test_a_lone_erf_is_reported_not_a_site():
    matches, leftover = match_activations(gelu_erf(tail="no-x"))
    assert matches == []
    assert [(n.name, r.rule) for n, r in leftover.items()] == [("erf", CompositeRule)]


# -- GELU, tanh form ----------------------------------------------------------------------------

def gelu_tanh(cubic="pow", coeff=0.044715, k=math.sqrt(2 / math.pi), power=3.0, scaled=True):
    consts = {"p3": f32(power), "c": f32(coeff), "k": f32(k), "one": f32(1.0), "half": f32(0.5)}
    if cubic == "pow":
        nodes = [node("Pow", ["x", "p3"], ["cube"])]
    else:  # x * x * x
        nodes = [node("Mul", ["x", "x"], ["sq"]), node("Mul", ["sq", "x"], ["cube"])]
    nodes += [node("Mul", ["c", "cube"], ["cubic"]), node("Add", ["x", "cubic"], ["inner"])]
    nodes += [node("Mul", ["inner", "k"], ["scaled"]), node("Tanh", ["scaled"], ["tanh"])] if scaled else \
        [node("Tanh", ["inner"], ["tanh"])]
    nodes += [node("Add", ["tanh", "one"], ["add"]), node("Mul", ["x", "add"], ["mulx"]),
              node("Mul", ["mulx", "half"], ["out"])]
    return graph_of(nodes, consts)


@pytest.mark.parametrize("cubic", ["pow", "mul-chain"])
def test_gelu_tanh_form_matches(cubic):
    g = gelu_tanh(cubic)
    cube = ["cube"] if cubic == "pow" else ["sq", "cube"]
    readers = [("inner", 0), ("mulx", 0)] + ([("cube", 0)] if cubic == "pow" else [("sq", 0), ("sq", 1), ("cube", 1)])
    assert_match(CompositeRule().match(named(g, "tanh")), "Gelu", "tanh", g,
                 [*cube, "cubic", "inner", "scaled", "tanh", "add", "mulx", "out"], readers)


@pytest.mark.parametrize("graph, closest", [
    (lambda: gelu_tanh(coeff=0.05), True), (lambda: gelu_tanh(k=0.8), True),
    (lambda: gelu_tanh(power=2.0), False), (lambda: gelu_tanh(scaled=False), False),
], ids=["coefficient-0.05", "scale-0.8", "square-not-cube", "unscaled"])
def test_gelu_tanh_near_misses(graph, closest):
    """A near miss is reported (naming the GELU it nearly is) and never becomes a Tanh site on the Tanh's argument."""
    g = graph()
    tail = " (closest: Gelu tanh, ..." if closest else ": not hardened"
    assert_refused(CompositeRule(), g, "tanh", MERGES.format(op="Tanh", at="mulx") + tail)
    matches, leftover = match_activations(g)
    assert matches == [] and [n.name for n in leftover] == ["tanh"]


# -- Mish and Softplus --------------------------------------------------------------------------

def softplus_nodes(dynamo: bool, swapped: bool = False):
    if not dynamo:
        return [node("Softplus", ["x"], ["sp"])], "sp"
    arms = ["sp0", "x"] if swapped else ["x", "sp0"]
    return [node("Softplus", ["x"], ["sp0"]), node("Greater", ["x", "twenty"], ["big"]),
            node("Where", ["big", *arms], ["sp"])], "sp"


def mish(dynamo=False, multiplies="x", then="Tanh"):
    nodes, sp = softplus_nodes(dynamo)
    nodes += [node(then, [sp], ["tanh"]), node("Mul", ["tanh", multiplies], ["out"])]
    return graph_of(nodes, {"twenty": f32(20.0)}, inputs=(("x", [2, 4]), ("y", [2, 4])))


@pytest.mark.parametrize("dynamo", [False, True], ids=["op", "dynamo-where"])
def test_mish_matches(dynamo):
    g = mish(dynamo)
    first = named(g, "sp0" if dynamo else "sp")
    claimed = ["sp0", "big", "sp", "tanh", "out"] if dynamo else ["sp", "tanh", "out"]
    readers = [("sp0", 0), ("big", 0), ("sp", 1), ("out", 1)] if dynamo else [("sp", 0), ("out", 1)]
    assert_match(CompositeRule().match(first), "Mish", "mish", g, claimed, readers)


def test_mish_near_misses():
    g = mish(multiplies="y")  # Tanh(Softplus(x)) gating another tensor: two single ops, no Mish
    assert_refused(CompositeRule(), g, "sp", "Softplus computes no catalogue activation beyond its own op")
    assert [m.kind for m in match_activations(g)[0]] == ["Softplus", "Tanh"]
    g = mish(then="Sigmoid")  # x * Sigmoid(Softplus(x)): an expression of x, no activation
    assert_refused(CompositeRule(), g, "sp", MERGES.format(op="Softplus", at="out") + "...")


def softplus_graph(dynamo, swapped=False):
    nodes, sp = softplus_nodes(dynamo, swapped)
    return graph_of([*nodes, node("Identity", [sp], ["out"])], {"twenty": f32(20.0)})


@pytest.mark.parametrize("dynamo", [False, True], ids=["op", "dynamo-where"])
def test_softplus_matches(dynamo):
    g = softplus_graph(dynamo)
    if dynamo:
        assert_match(CompositeRule().match(named(g, "sp0")), "Softplus", "softplus", g,
                     ["sp0", "big", "sp"], [("sp0", 0), ("big", 0), ("sp", 1)])
    else:
        assert_match(SingleOpRule().match(named(g, "sp")), "Softplus", "op", g, ["sp"], [("sp", 0)])


def test_softplus_near_miss_is_reported_not_guessed():
    """Arms swapped (``Where(x > 20, Softplus(x), x)``) is an expression of x that is no catalogue function:
    reported, and the Softplus inside it is not hardened on its own."""
    g = softplus_graph(True, swapped=True)
    matches, leftover = match_activations(g)
    assert matches == []
    assert [(n.name, r.reason) for n, r in leftover.items()] == [
        ("sp0", MERGES.format(op="Softplus", at="sp") + ": not hardened")]


# -- SiLU / HardSwish: x times its own gate ------------------------------------------------------

def self_gate(op="Sigmoid", gated="x", extra_reader=False, **attrs):
    nodes = [node(op, ["x"], ["gate"], **attrs), node("Mul", [gated, "gate"], ["out"])]
    outputs = [("out", None)]
    if extra_reader:
        nodes.append(node("Neg", ["gate"], ["other"]))
        outputs.append(("other", None))
    return graph_of(nodes, inputs=(("x", [2, 4]), ("y", [2, 4])), outputs=outputs)


@pytest.mark.parametrize("op, attrs, kind, form", [
    ("Sigmoid", {}, "SiLU", "silu"),
    ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}, "HardSwish", "hardswish"),
])
def test_self_gate_matches(op, attrs, kind, form):
    g = self_gate(op, **attrs)
    assert_match(CompositeRule().match(named(g, "gate")), kind, form, g, ["gate", "out"], [("gate", 0), ("out", 0)])


def test_swish_with_a_scale_is_one_silu_site():
    """Paddle's swish: ``x * Sigmoid(beta * x)``: one activation whose tensor is x, read by both Muls."""
    g = graph_of([node("Mul", ["x", "beta"], ["scaled"]), node("Sigmoid", ["scaled"], ["gate"]),
                  node("Mul", ["x", "gate"], ["out"])], {"beta": f32(1.7)})
    assert_match(CompositeRule().match(named(g, "gate")), "SiLU", "swish(beta=1.7)", g,
                 ["scaled", "gate", "out"], [("scaled", 0), ("out", 0)])


def test_a_scaled_gate_of_another_tensor_is_not_swish():
    g = graph_of([node("Mul", ["y", "beta"], ["scaled"]), node("Sigmoid", ["scaled"], ["gate"]),
                  node("Mul", ["x", "gate"], ["out"])], {"beta": f32(1.7)}, inputs=(("x", [2, 4]), ("y", [2, 4])))
    assert_refused(CompositeRule(), g, "gate", "Sigmoid computes no catalogue activation beyond its own op")


@pytest.mark.parametrize("graph, reason", [
    (lambda: self_gate("HardSigmoid"), MERGES.format(op="HardSigmoid", at="out") + "..."),
    (lambda: self_gate("Sigmoid", gated="y"), "Sigmoid computes no catalogue activation beyond its own op"),
    (lambda: self_gate("Sigmoid", extra_reader=True),
     "Sigmoid is part of a SiLU (silu) ending at 'out', but its inner value 'gate' is read outside it: not hardened"),
], ids=["hardsigmoid-defaults", "gates-another", "two-readers"])
def test_self_gate_near_misses(graph, reason):
    g = graph()
    assert_refused(CompositeRule(), g, "gate", reason)


# -- Clip as ReLU6 / ReLU ------------------------------------------------------------------------

@pytest.mark.parametrize("inputs, consts, opset, attrs, kind", [
    (["x", "zero", "six"], {"zero": f32(0), "six": f32(6)}, 17, {}, "Clip(ReLU6)"),
    (["x", "zero"], {"zero": f32(0)}, 17, {}, "Clip(ReLU)"),
    (["x"], {}, 6, {"min": 0.0, "max": 6.0}, "Clip(ReLU6)"),  # opset < 11: bounds are attributes
])
def test_clip_matches(inputs, consts, opset, attrs, kind):
    g = graph_of([node("Clip", inputs, ["out"], **attrs)], consts, opset=opset)
    assert_match(ClipRule().match(named(g, "out")), kind, "op", g, ["out"], [("out", 0)])


@pytest.mark.parametrize("inputs, consts, reason", [
    (["x", "lo", "hi"], {"lo": f32(-1), "hi": f32(1)}, "Clip(min=-1.0, max=1.0) is a clamp, not ReLU6"),
    (["x", "zero", "five"], {"zero": f32(0), "five": f32(5)}, "Clip(min=0.0, max=5.0) is a clamp, not ReLU6"),
    (["x", "y", "six"], {"six": f32(6)}, "Clip bounds are not constants"),
], ids=["clamp", "relu5", "computed-bound"])
def test_clip_near_misses(inputs, consts, reason):
    g = graph_of([node("Clip", inputs, ["out"])], consts, inputs=(("x", [2, 4]), ("y", [])))
    assert_refused(ClipRule(), g, "out", reason)


# -- single ops ----------------------------------------------------------------------------------

@pytest.mark.parametrize("op, kind, attrs", [
    ("Relu", "Relu", {}), ("LeakyRelu", "LeakyRelu", {}), ("Elu", "Elu", {}), ("Selu", "Selu", {}),
    ("Celu", "Celu", {}), ("Tanh", "Tanh", {}), ("Sigmoid", "Sigmoid", {}), ("HardSigmoid", "HardSigmoid", {}),
    ("HardSwish", "HardSwish", {}), ("Mish", "Mish", {}), ("Softsign", "Softsign", {}),
    ("ThresholdedRelu", "ThresholdedRelu", {}), ("Gelu", "Gelu", {"approximate": "tanh"}),
])
def test_single_op_matches(op, kind, attrs):
    g = graph_of([node(op, ["x"], ["out"], **attrs)], opset=20)
    form = "op (approximate=tanh)" if op == "Gelu" else "op"
    assert_match(SingleOpRule().match(named(g, "out")), kind, form, g, ["out"], [("out", 0)])


def test_single_op_prelu_routes_only_its_data_input():
    g = graph_of([node("PRelu", ["x", "slope"], ["out"])], {"slope": f32([0.1] * 4)})
    assert_match(SingleOpRule().match(named(g, "out")), "PRelu", "op", g, ["out"], [("out", 0)])


def test_single_op_near_miss_on_a_constant():
    g = graph_of([node("Relu", ["c"], ["r"]), node("Add", ["x", "r"], ["out"])], {"c": f32([1.0] * 4)})
    assert_refused(SingleOpRule(), g, "r", "Relu input is a constant")


def test_composite_claims_its_nodes_and_leftovers_keep_their_reason():
    """In one graph: a tanh GELU (its Tanh is not reported again as a plain Tanh) and a clamp (reported
    with its reason, not as a site)."""
    g = gelu_tanh()
    g.append(ir.node("Clip", [g.outputs[0], g.initializers["half"], g.initializers["one"]], name="clamp"))
    matches, leftover = match_activations(g)
    assert [(m.kind, m.form.split(":")[0]) for m in matches] == [("Gelu", "tanh")]
    assert {n.name: (r.rule, r.reason) for n, r in leftover.items()} == {
        "clamp": (ClipRule, "Clip(min=0.5, max=1.0) is a clamp, not ReLU6")}


def test_finding_composites_leaves_the_graph_meta_as_it_was():
    """Site finding only reads a user's in-memory graph: nothing is kept in its meta between calls."""
    g = gelu_tanh()
    before = dict(g.meta)
    assert [c.identified.kind for c in composites(g)[0]] == ["Gelu"]
    match_activations(g)
    assert CompositeRule().match(named(g, "tanh")).kind == "Gelu"
    assert dict(g.meta) == before


# -- placement: gates of recurrent cells / GLU, Squeeze-and-Excitation ----------------------------

def save(proto, path):
    import onnx

    onnx.save(proto, str(path))
    return path


def gated(op="Sigmoid", join="Mul"):
    """GLU: ``(x W2) * gate(x W1)``; ``join`` Add makes it no gate."""
    w = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    nodes = [node("MatMul", ["x", "w1"], ["a"]), node("MatMul", ["x", "w2"], ["b"]), node(op, ["a"], ["gate"]),
             node(join, ["b", "gate"], ["out"])]
    return tiny_model(nodes, [("x", [2, 4])], [("out", None)], {"w1": w, "w2": w.T.copy()})


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh", "HardSigmoid"])
def test_gate_of_another_tensor_is_rejected_with_its_reason(op, tmp_path):
    path = save(gated(op), tmp_path / "glu.onnx")
    table = mst.find_sites(path)
    assert len(table) == 0
    assert [(r.node, r.reason) for r in table.rejected] == [
        ("gate", "a gate: its output scales another tensor at 'out' (a recurrent cell's or GLU's gate); "
                 "include_se hardens it")]
    assert [s.kind for s in mst.find_sites(path, selection=mst.Selection(include_se=True))] == [op]


def test_squashing_activation_added_not_multiplied_is_a_site(tmp_path):
    table = mst.find_sites(save(gated("Sigmoid", join="Add"), tmp_path / "add.onnx"))
    assert [(s.name, s.kind) for s in table] == [("gate", "Sigmoid")] and table.rejected == []


def squeeze_excite(join="Mul"):
    rng = np.random.default_rng(1)
    consts = {"w0": rng.standard_normal((4, 4, 3, 3)).astype(np.float32),
              "w1": rng.standard_normal((2, 4, 1, 1)).astype(np.float32),
              "w2": rng.standard_normal((4, 2, 1, 1)).astype(np.float32)}
    nodes = [node("Conv", ["x", "w0"], ["f"], pads=[1, 1, 1, 1]), node("GlobalAveragePool", ["f"], ["p"]),
             node("Conv", ["p", "w1"], ["c1"]), node("Relu", ["c1"], ["squeeze"]),
             node("Conv", ["squeeze", "w2"], ["c2"]),
             node("HardSigmoid", ["c2"], ["excite"]), node(join, ["f", "excite"], ["scaled"]),
             node("Relu", ["scaled"], ["out"])]
    return tiny_model(nodes, [("x", [1, 4, 6, 6])], [("out", None)], consts)


def test_squeeze_excite_branch_is_rejected_with_its_reason(tmp_path):
    path = save(squeeze_excite(), tmp_path / "se.onnx")
    table = mst.find_sites(path)
    assert [(s.name, s.axis, s.channels) for s in table] == [("out", 1, 4)]
    reason = "inside a Squeeze-and-Excitation branch (gates 'scaled'); include_se hardens it"
    assert sorted((r.node, r.reason) for r in table.rejected) == [("excite", reason), ("squeeze", reason)]
    assert [s.name for s in mst.find_sites(path, selection=mst.Selection(include_se=True))] == ["squeeze", "excite", "out"]


def test_pooled_branch_that_does_not_scale_the_map_is_no_squeeze_excite(tmp_path):
    table = mst.find_sites(save(squeeze_excite(join="Add"), tmp_path / "add.onnx"))
    assert [s.name for s in table] == ["squeeze", "excite", "out"] and table.rejected == []


# -- channel axes --------------------------------------------------------------------------------

def axis_of(nodes, target, rank, consts=None, shape=None):
    g = graph_of(nodes, consts, inputs=(("x", shape),), outputs=(("out", None),))
    return channel_axis(OnnxView(g), value(g, target), rank)


W4 = {"w": np.ones((3, 3, 1, 1), np.float32), "m": np.ones((3, 3), np.float32), "b": np.ones((1, 3, 1, 1), np.float32),
      "w1": np.ones((3, 3, 1), np.float32), "shape": np.array([2, 3, 5], np.int64)}


@pytest.mark.parametrize("nodes, target, rank, expect", [
    ([node("Conv", ["x", "w"], ["out"])], "out", 4, (1, "conv (N,C,H,W)")),
    ([node("Conv", ["x", "w"], ["c"]), node("Add", ["c", "b"], ["a"]), node("Relu", ["a"], ["out"])], "out", 4,
     (1, "conv (N,C,H,W)")),  # through elementwise ops to the producer that says
    ([node("MatMul", ["x", "m"], ["out"])], "out", 3, (2, "tokens (N,L,C)")),
    ([node("MatMul", ["x", "m"], ["out"])], "out", 4, (3, "last axis (after MatMul/LayerNorm)")),
    ([node("Transpose", ["x"], ["out"], perm=[0, 2, 3, 1])], "out", 4, (3, "channels-last (after Transpose)")),
    ([node("Transpose", ["x"], ["out"], perm=[0, 2, 1])], "out", 3, (2, "tokens (N,L,C) after Transpose")),
    ([node("Relu", ["x"], ["out"])], "out", 2, (1, "features (N,C)")),
    ([node("Relu", ["x"], ["out"])], "out", None, (None, "rank unknown")),
], ids=["conv", "conv-through-elementwise", "matmul-tokens", "matmul-rank4", "channels-last", "tokens-transposed",
        "features", "rank-unknown"])
def test_channel_axis_from_the_producer(nodes, target, rank, expect):
    assert axis_of(nodes, target, rank, W4) == expect


@pytest.mark.parametrize("readers, expect", [
    ([node("Conv", ["r", "w1"], ["out"])], (1, "conv (N,C,H), from its readers")),
    ([node("Relu", ["r"], ["a"]), node("Conv", ["a", "w1"], ["out"])], (1, "conv (N,C,H), from its readers")),
    ([node("MatMul", ["r", "m5"], ["out"])], (2, "tokens (N,L,C) by rank")),
    ([node("Relu", ["r"], ["a"]), node("Flatten", ["a"], ["f"]), node("Conv", ["f", "w1"], ["out"])],
     (2, "tokens (N,L,C) by rank")),  # a Flatten between says nothing about this tensor's layout
], ids=["conv1d-reader", "conv1d-through-relu", "matmul-reader", "conv-after-flatten"])
def test_channel_axis_from_convolution_like_readers(readers, expect):
    """A tensor no producer explains (a Reshape: a recurrent layer's output made (N, C, L)) takes its layout
    from a convolution reading it, directly or through elementwise ops; without one, the rank decides."""
    consts = dict(W4, m5=np.ones((5, 5), np.float32))
    nodes = [node("Reshape", ["x", "shape"], ["r"]), *readers]
    assert axis_of(nodes, "r", 3, consts, shape=[2, 15]) == expect


def test_a_shape_read_of_an_inner_value_does_not_split_the_activation():
    """Exporters read shapes of intermediate values (``Shape(Sigmoid(x))``): the number is not read, so the
    SiLU stays whole and its Sigmoid is not reported on its own."""
    g = graph_of([node("Sigmoid", ["x"], ["gate"]), node("Mul", ["x", "gate"], ["out"]),
                  node("Shape", ["gate"], ["shape"])], outputs=(("out", None), ("shape", None)))
    matches, leftover = match_activations(g)
    assert [(m.kind, m.form.split(":")[0]) for m in matches] == [("SiLU", "silu")] and not leftover
