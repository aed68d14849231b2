"""The graph passes one by one, on tiny hand-built models, against numpy.

* in-graph reductions (passes/onnx/reductions.py): the sums ONNX Runtime computes equal numpy's
  float64 sums within the float32 summation bound, counts and extents exactly, and the model is
  byte-identical once the context exits -- in the main graph and inside an ``If`` branch;
* exposing and lifting values (passes/graph/expose.py, passes/graph/subgraphs.py) out of ``If`` and ``Loop``
  bodies: the values read are the body's own, and the model is restored exactly;
* the preparation passes (passes/graph/load.py) and the plan builder (passes/sites/plan.py).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx_ir.passes import PreconditionError
from helpers import U32, tiny_model

from mstransform.core.errors import ModelError, StatsError
from mstransform.core.moments import Moments
from mstransform.core.options import AlphaPlan, Center, Mode, Placement, Selection
from mstransform.core.stats import SiteStats, Stats
from mstransform.passes.graph.expose import ExposeValuesPass, exposed
from mstransform.passes.graph.load import (OPERATOR_OPSET, DefaultDomainPass, DynamicDimsPass, NameAfterOutputsPass,
                                          UpgradeOpsetPass, load_model)
from mstransform.passes.graph.subgraphs import lifting
from mstransform.passes.onnx.precision import precision_opset_pass
from mstransform.passes.onnx.reductions import AddSiteReductionsPass, reducing
from mstransform.passes.sites.plan import build_plan


def model_of(proto) -> ir.Model:
    return ir.serde.deserialize_model(proto)


def serialized(model: ir.Model) -> bytes:
    return ir.to_proto(model).SerializeToString()


def session(model: ir.Model) -> ort.InferenceSession:
    return ort.InferenceSession(serialized(model), providers=["CPUExecutionProvider"])


def value(model: ir.Model, name: str) -> ir.Value:
    for graph in [model.graph, *model.graph.subgraphs()]:
        for v in [*graph.inputs, *(o for n in graph for o in n.outputs)]:
            if v.name == name:
                return v
    raise KeyError(name)


def node(op, inputs, outputs, **attrs):
    return oh.make_node(op, inputs, outputs, name=outputs[0], **attrs)


# -- in-graph reductions ----------------------------------------------------------------------------

def relu_model(shape):
    """``out = -Relu(x)``; the site ``Relu(x)`` with its shape inferred (a fixed shift needs static sizes)."""
    proto = tiny_model([node("Relu", ["x"], ["site"]), node("Neg", ["site"], ["out"])], [("x", shape)],
                       [("out", shape)])
    return model_of(onnx.shape_inference.infer_shapes(proto))


def numpy_sums(x: np.ndarray, axis: int, shift: np.ndarray):
    """(count per channel, sum d, sum d^2, sum |d|, max, min) in float64, d = x - shift, per channel along axis."""
    x = np.moveaxis(x.astype(np.float64), axis, -1).reshape(-1, x.shape[axis])
    d = x - shift.astype(np.float64)
    return len(x), d.sum(0), (d * d).sum(0), np.abs(d).sum(0), x.max(0), x.min(0)


def assert_sums(got, x, axis, shift, terms):
    """``got`` = (count, s1, s2, [max, min]) from ``Reduction.host_sums`` against numpy.

    Any float32 summation order of n terms errs by at most (n - 1) u sum|terms| (first order); the two-stage
    sums span ``terms`` = (terms inside one sample) + (samples) of them, the subtraction x - shift and the
    square add u and 2u per term, a per-sample mean (fixed shift) a division: (terms + 4) u bounds all."""
    count, s1, s2, extent = got
    n, r1, r2, abs1, hi, lo = numpy_sums(x, axis, shift)
    assert count == n
    bound = (terms + 4) * U32
    assert np.all(np.abs(s1 - r1) <= bound * abs1), (s1, r1)
    assert np.all(np.abs(s2 - r2) <= bound * r2), (s2, r2)
    if extent:
        np.testing.assert_array_equal(extent[0], hi)  # max and min are exact in any order
        np.testing.assert_array_equal(extent[1], lo)


@pytest.mark.parametrize("shape, axis, fixed", [
    ((3, 2, 4, 5), 1, False), ((3, 2, 4, 5), 1, True), ((4, 6, 3), 2, False), ((5, 3), 1, False),
], ids=["nchw-fed-shift", "nchw-fixed-shift", "tokens", "features"])
def test_site_reductions_equal_numpy_and_leave_the_model_as_it_was(shape, axis, fixed):
    model = relu_model(list(shape))
    before = serialized(model)
    x = (np.random.default_rng(0).standard_normal(shape) * 2 + 1).astype(np.float32)
    site = np.maximum(x, 0)  # Relu: exact in float32
    channels = shape[axis]
    shift = np.linspace(0.3, 0.9, channels).astype(np.float32)
    target = (value(model, "site"), axis, len(shape))
    with reducing(model, [target], extent=True, fixed=[shift] if fixed else None) as (r,):
        feed = {"x": x}
        if r.shift is not None:
            feed[r.shift.name] = shift.reshape(r.shift_shape)
        outs = session(model).run(list(r.fetch_names), feed)
    terms = int(np.prod(shape[1:])) // channels + shape[0]
    assert_sums(r.host_sums(outs), site, axis, shift, terms)
    assert serialized(model) == before


@pytest.mark.parametrize("axis, fixed, words", [
    (0, None, "channel axis 0 is not in 1..3"),
    (2, [np.zeros(4, np.float32)], "a fixed shift needs channel axis 1"),
    (1, [np.zeros(4, np.float32), None], "2 fixed shifts for 1 targets"),
])
def test_site_reductions_refuse_what_they_cannot_reduce(axis, fixed, words):
    model = relu_model([2, 3, 4, 5])
    before = serialized(model)
    with pytest.raises(Exception, match=words):
        AddSiteReductionsPass([(value(model, "site"), axis, 4)], fixed=fixed)(model)
    assert serialized(model) == before


# -- If and Loop bodies -----------------------------------------------------------------------------

def if_model():
    """``y = cond ? Relu(2x) : -x``, with ``doubled`` = 2x inside the then-branch."""
    two = oh.make_node("Constant", [], ["two"], name="two",
                       value=oh.make_tensor("t", onnx.TensorProto.FLOAT, [], [2.0]))
    then = oh.make_graph([two, node("Mul", ["x", "two"], ["doubled"]), node("Relu", ["doubled"], ["then_out"])],
                         "then", [], [oh.make_tensor_value_info("then_out", onnx.TensorProto.FLOAT, None)])
    other = oh.make_graph([node("Neg", ["x"], ["else_out"])], "else", [],
                          [oh.make_tensor_value_info("else_out", onnx.TensorProto.FLOAT, None)])
    cond = oh.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])
    return model_of(tiny_model([node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
                               [cond, ("x", [2, 3])], [("y", [2, 3])]))


def loop_model(trips=3):
    """``v_{k+1} = v_k + x`` from ``v_0 = x``, with ``h = 2 v_{k+1}`` inside the body."""
    body = oh.make_graph(
        [node("Add", ["v", "x"], ["v_next"]), node("Mul", ["v_next", "two"], ["h"]),
         node("Identity", ["cond"], ["cond_out"])], "body",
        [oh.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         oh.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []),
         oh.make_tensor_value_info("v", onnx.TensorProto.FLOAT, None)],
        [oh.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
         oh.make_tensor_value_info("v_next", onnx.TensorProto.FLOAT, None)])
    consts = {"trips": np.array(trips, np.int64), "go": np.array(True), "two": np.array(2.0, np.float32)}
    return model_of(tiny_model([node("Loop", ["trips", "go", "x"], ["v_final"], body=body)], [("x", [3])],
                               [("v_final", [3])], consts))


X = np.array([[1.0, -2.0, 0.5], [3.0, -0.25, 0.0]], np.float32)  # small: every product and sum below is exact


def test_exposed_reads_an_if_branch_value_and_restores_the_model():
    model = if_model()
    before = serialized(model)
    inner = value(model, "doubled")
    with exposed(model, [inner, model.graph.outputs[0]], fills=[np.full((2, 3), -7, np.float32), None]) as seen:
        assert (seen.levels_of(inner), seen.levels_of(model.graph.outputs[0])) == (0, 0) and seen.names["y"] == "y"
        s = session(model)
        taken, y = s.run([seen.names["doubled"], "y"], {"cond": np.array(True), "x": X})
        skipped, y_else = s.run([seen.names["doubled"], "y"], {"cond": np.array(False), "x": X})
    np.testing.assert_array_equal(taken, 2 * X)
    np.testing.assert_array_equal(y, np.maximum(2 * X, 0))
    np.testing.assert_array_equal(skipped, np.full((2, 3), -7))  # the branch did not run: the fill
    np.testing.assert_array_equal(y_else, -X)
    assert serialized(model) == before


def test_lifting_a_loop_value_stacks_it_over_iterations_and_restores_the_model():
    model = loop_model(trips=3)
    before = serialized(model)
    with lifting(model, [value(model, "h"), value(model, "v_final")]) as (h, v):
        assert (h.levels, v.levels) == (1, 0) and v.value is model.graph.outputs[0]
        model.graph.outputs.append(h.value)
        stacked, final = session(model).run([h.value.name, "v_final"], {"x": X[0]})
        model.graph.outputs.pop()
    x = X[0].astype(np.float64)
    np.testing.assert_array_equal(stacked, np.stack([2 * (k + 2) * x for k in range(3)]))
    np.testing.assert_array_equal(final, 4 * x)
    assert serialized(model) == before


def test_lifting_out_of_a_custom_operators_body_is_a_model_error_and_restores_the_model():
    """Only If, Loop and Scan can hand a body's value out: another op's body is refused in one line."""
    body = oh.make_graph([node("Relu", ["x"], ["inner"])], "body", [],
                         [oh.make_tensor_value_info("inner", onnx.TensorProto.FLOAT, None)])
    proto = tiny_model([oh.make_node("Fused", ["x"], ["y"], name="fused", domain="my.ops", body=body)],
                       [("x", [2, 3])], [("y", [2, 3])])
    proto.opset_import.append(oh.make_opsetid("my.ops", 1))
    model = model_of(proto)
    before = serialized(model)
    with pytest.raises(ModelError, match="body of my.ops::Fused node 'fused'") as e:
        with lifting(model, [value(model, "inner")]):
            pass
    assert "\n" not in str(e.value)
    assert serialized(model) == before


def test_reductions_inside_an_if_branch_count_only_the_branch_taken():
    model = if_model()
    before = serialized(model)
    with reducing(model, [(value(model, "doubled"), 1, 2)], extent=False, channels=[3]) as (r,):
        assert r.fetch is not None  # lifted out of the branch
        s = session(model)
        shift = np.full((1, 3), 0.5, np.float32).reshape(r.shift_shape)
        taken = r.host_sums(s.run(list(r.fetch_names), {"cond": np.array(True), "x": X, r.shift.name: shift}))
        skipped = r.host_sums(s.run(list(r.fetch_names), {"cond": np.array(False), "x": X, r.shift.name: shift}))
    assert_sums(taken, 2 * X, 1, np.full(3, 0.5, np.float32), terms=2)
    assert skipped[0] == 0 and not np.any(skipped[1]) and not np.any(skipped[2])
    assert serialized(model) == before


def test_expose_pass_adds_each_value_once_and_skips_graph_outputs():
    model = relu_model([2, 3])
    site, out = value(model, "site"), model.graph.outputs[0]
    assert ExposeValuesPass([site, out, site])(model).modified
    assert [v.name for v in model.graph.outputs] == ["out", "site"]
    assert not ExposeValuesPass([site, out])(model).modified and len(model.graph.outputs) == 2


# -- preparation passes -----------------------------------------------------------------------------

def test_dynamic_dims_pass_makes_legacy_sizes_symbolic():
    proto = tiny_model([node("Relu", ["x"], ["y"])], [("x", [-1, 0, 3, "n"])], [("y", [-1, 4])])
    model = model_of(proto)
    assert DynamicDimsPass()(model).modified
    shapes = [[d.value if isinstance(d, ir.SymbolicDim) else d for d in v.shape]
              for v in (model.graph.inputs[0], model.graph.outputs[0])]
    assert shapes == [["unk__0", "unk__1", 3, "n"], ["unk__2", 4]]
    assert not DynamicDimsPass()(model).modified  # nothing left to spell


def test_default_domain_pass_spells_ai_onnx_as_the_default_domain():
    proto = tiny_model([oh.make_node("Relu", ["x"], ["y"], name="r", domain="ai.onnx")], [("x", [2])], [("y", [2])])
    del proto.opset_import[:]
    proto.opset_import.extend([oh.make_opsetid("ai.onnx", 17), oh.make_opsetid("", 13)])
    model = model_of(proto)
    assert DefaultDomainPass()(model).modified
    assert dict(model.opset_imports) == {"": 17} and [n.domain for n in model.graph] == [""]
    assert not DefaultDomainPass()(model).modified
    np.testing.assert_array_equal(session(model).run(None, {"x": np.array([-1, 2], np.float32)})[0], [0, 2])


def test_upgrade_opset_pass_goes_to_the_first_opset_that_gives_what_the_model_lacks():
    old = model_of(tiny_model([node("Relu", ["x"], ["y"])], [("x", [2, 3])], [("y", [2, 3])], opset=7))
    upgrade = UpgradeOpsetPass(OPERATOR_OPSET)  # the operator's ops: Where from opset 9
    assert upgrade.missing(old) == f"the model is at opset 7, below {OPERATOR_OPSET}"
    new = upgrade(old).model
    assert new.opset_imports[""] == OPERATOR_OPSET and upgrade.missing(new) is None
    with pytest.raises(PreconditionError, match="needs no upgrade"):
        upgrade(new)
    conv = model_of(tiny_model([node("Conv", ["x", "w"], ["y"])], [("x", [1, 1, 4, 4])], [("y", [1, 1, 2, 2])],
                               {"w": np.ones((1, 1, 3, 3), np.float32)}))
    bf16 = precision_opset_pass("bf16")  # the same pass, for ops that take bf16 (Conv from opset 22)
    assert bf16.missing(conv) == "Conv takes no bf16 tensors"
    assert precision_opset_pass("fp16").missing(conv) is None
    new = bf16(conv).model
    assert new.opset_imports[""] == 22 and bf16.missing(new) is None
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(session(new).run(None, {"x": x})[0], session(conv).run(None, {"x": x})[0])


def test_name_after_outputs_pass_names_unnamed_and_generic_nodes_only():
    nodes = [oh.make_node("Relu", ["x"], ["a"]),  # unnamed
             oh.make_node("Neg", ["a"], ["b"], name="n4"),  # onnxscript's generic name
             oh.make_node("Abs", ["b"], ["c"], name="keep_me"),
             oh.make_node("Neg", ["c"], ["d"], name="node_e"),  # takes the name the next one would get
             oh.make_node("Abs", ["d"], ["e"], name="n0_2")]
    model = model_of(tiny_model(nodes, [("x", [2])], [("e", [2])]))
    assert NameAfterOutputsPass()(model).modified
    assert [n.name for n in model.graph] == ["node_a", "node_b", "keep_me", "node_e", "n0_2"]
    assert not NameAfterOutputsPass()(model).modified


# -- the plan -------------------------------------------------------------------------------------

def two_relus(tmp_path):
    nodes = [node("Relu", ["x"], ["r1"]), node("Neg", ["r1"], ["n"]), node("Relu", ["n"], ["r2"])]
    path = tmp_path / "two.onnx"
    onnx.save(tiny_model(nodes, [("x", [4, 3, 2, 2])], [("r2", None)]), str(path))
    from mstransform.passes.sites.onnx_finder import find_sites

    return find_sites(load_model(path))


def stats_for(table, means, variances, axis=1, absmax=None, unreached=()):
    sites = {}
    for s, mean, var, extent in zip(table, means, variances, absmax or [None] * len(means)):
        mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
        sites[s.name] = SiteStats(s.name, s.feed_name, s.kind, axis, 4, "float32",
                                  Moments(100, mean, var * 100, None if extent is None else np.asarray(extent)))
    return Stats("fingerprint", Placement.ACTIVATIONS, sites, 100, unreached=tuple(unreached))


MEANS = [[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]]
VARS = [[4.0, 0.25, 1.0], [0.0, 9.0, 2.25]]


def test_plan_takes_the_papers_center_and_threshold_per_site(tmp_path):
    table = two_relus(tmp_path)
    assert [s.name for s in table] == ["r1", "r2"]
    stats = stats_for(table, MEANS, VARS, axis=1)
    plan = build_plan(table, stats, AlphaPlan(0.5, (("r2", 2.0),)), Mode.MEANSPARSE, Center.MEAN)
    assert plan.alphas == {"r1": 0.5, "r2": 2.0}
    for (site, params), mean, var, alpha in zip(plan.entries, MEANS, VARS, (0.5, 2.0)):
        np.testing.assert_array_equal(params.center, mean)
        np.testing.assert_allclose(params.threshold, alpha * np.sqrt(var), rtol=1e-15)
        assert (site.axis, site.rank) == (1, 4)
    zero = build_plan(table, stats, 0.5, Mode.MEANSPARSE, Center.ZERO).entries
    glob = build_plan(table, stats, 0.5, Mode.MEANSPARSE, Center.GLOBAL).entries
    for (_, z), (_, g), mean in zip(zero, glob, MEANS):
        np.testing.assert_array_equal(z.center, np.zeros(3))
        np.testing.assert_allclose(g.center, np.full(3, np.mean(mean)), rtol=1e-15)
    forged = build_plan(table, stats_for(table, MEANS, VARS, absmax=[[1, 4, 2], [3, 1, 1]]), 0.01, Mode.FORGED,
                        Center.MEAN).entries
    for (_, p), top in zip(forged, (4.0, 3.0)):
        np.testing.assert_array_equal(p.center, np.zeros(3))
        np.testing.assert_allclose(p.threshold, np.full(3, 0.01 * top), rtol=1e-15)


def test_plan_leaves_out_narrowed_and_unreached_sites(tmp_path):
    table = two_relus(tmp_path)
    stats = stats_for(table, MEANS, VARS)
    assert [s.name for s, _ in build_plan(table, stats, 0.2, Mode.MEANSPARSE, Center.MEAN,
                                          narrow=Selection(exclude="r2")).entries] == ["r1"]
    import dataclasses

    table.sites[1] = dataclasses.replace(table.sites[1], graph="If_0:then_branch")  # only a body site may be unreached
    partial = stats_for(list(table)[:1], MEANS[:1], VARS[:1], unreached=["r2"])
    assert [s.name for s, _ in build_plan(table, partial, 0.2, Mode.MEANSPARSE, Center.MEAN).entries] == ["r1"]


def test_plan_refuses_stats_that_do_not_fit(tmp_path):
    table = two_relus(tmp_path)
    with pytest.raises(StatsError, match="site 'r2' has no statistics"):
        build_plan(table, stats_for(list(table)[:1], MEANS[:1], VARS[:1]), 0.2, Mode.MEANSPARSE, Center.MEAN)
    wide = stats_for(table, [[0.0] * 4, [0.0] * 4], [[1.0] * 4, [1.0] * 4])
    with pytest.raises(StatsError, match="has 3 channels but its stats have 4"):
        build_plan(table, wide, 0.2, Mode.MEANSPARSE, Center.MEAN)
    huge = stats_for(table, [[7e4, 0, 0], [0, 0, 0]], VARS)
    build_plan(table, huge, 0.2, Mode.MEANSPARSE, Center.MEAN, dtype_of=lambda s: np.float32)  # fits float32
    with pytest.raises(StatsError, match="its center 7e\\+04 \\(channel 0\\) is not finite in float16"):
        build_plan(table, huge, 0.2, Mode.MEANSPARSE, Center.MEAN, dtype_of=lambda s: np.float16)
