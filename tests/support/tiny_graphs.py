"""Tiny hand-built ONNX models as onnx-ir models, and the helpers that run and inspect them: shared by the
graph-pass unit tests (``tests/unit/passes/graph/``, ``passes/onnx/test_reductions.py``)."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
from helpers import tiny_model


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


def relu_model(shape):
    """``out = -Relu(x)``; the site ``Relu(x)`` with its shape inferred (a fixed shift needs static sizes)."""
    proto = tiny_model([node("Relu", ["x"], ["site"]), node("Neg", ["site"], ["out"])], [("x", shape)],
                       [("out", shape)])
    return model_of(onnx.shape_inference.infer_shapes(proto))


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


X = np.array([[1.0, -2.0, 0.5], [3.0, -0.25, 0.0]], np.float32)  # small: every product and sum below is exact
