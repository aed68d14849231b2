"""Exposing values as graph outputs (passes/graph/expose.py): a value read out of an ``If`` branch is the
branch's own (the fill where the branch did not run), each value is added once, and the model is restored
exactly."""
from __future__ import annotations

import numpy as np
from tiny_graphs import X, if_model, relu_model, serialized, session, value

from mstransform.passes.graph.expose import ExposeValuesPass, exposed


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


def test_expose_pass_adds_each_value_once_and_skips_graph_outputs():
    model = relu_model([2, 3])
    site, out = value(model, "site"), model.graph.outputs[0]
    assert ExposeValuesPass([site, out, site])(model).modified
    assert [v.name for v in model.graph.outputs] == ["out", "site"]
    assert not ExposeValuesPass([site, out])(model).modified and len(model.graph.outputs) == 2
