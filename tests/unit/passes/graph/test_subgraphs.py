"""Lifting values out of control-flow bodies (passes/graph/subgraphs.py): a ``Loop`` body's value comes out
stacked over the iterations, a custom operator's body is refused in one line, and the model is restored
exactly."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from helpers import tiny_model
from tiny_graphs import X, model_of, node, serialized, session, value

from mstransform.core.errors import ModelError
from mstransform.passes.graph.subgraphs import lifting


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
