"""The insertion pass in onnx-ir's contract: configured by site names and parameters, reusable on any model,
a no-op the second time, composable in a PassManager, with post-conditions that catch a broken graph."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx_ir.passes import PassManager, PostconditionError, PreconditionError

from mstransform.core.params import SiteParams
from mstransform.passes.graph.load import load_model
from mstransform.passes.onnx.sparsify import InsertSparsifyPass, Operator, inserted

C = np.array([0.1, -0.2, 0.3], np.float64)
T_ = np.array([0.5, 0.0, 0.25], np.float64)


def _model(tmp_path, name="m.onnx", scale=1.0):
    """x -> Conv(1x1) -> Relu (node 'act') -> y, with 3 channels."""
    w = (np.eye(3, dtype=np.float32) * np.float32(scale)).reshape(3, 3, 1, 1)
    graph = h.make_graph([h.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                          h.make_node("Relu", ["c"], ["y"], name="act")], "g",
                         [h.make_tensor_value_info("x", T.FLOAT, ["N", 3, 4, 4])],
                         [h.make_tensor_value_info("y", T.FLOAT, ["N", 3, 4, 4])], [nh.from_array(w, "w")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / name))
    return tmp_path / name


def _pass():
    return InsertSparsifyPass({"act": Operator(SiteParams(C, T_), axis=1, rank=4)})


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    data = ir.serde.serialize_model(model).SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_pass_inserts_by_name_and_a_second_run_changes_nothing(tmp_path):
    model = load_model(_model(tmp_path))
    p = _pass()
    first = p(model)
    assert first.modified and [r.site for r in inserted(model)] == ["act"]
    assert model.metadata_props["mstransform.sites"] == "1"
    nodes = len(list(model.graph))
    second = p(model)
    assert not second.modified and len(list(model.graph)) == nodes and len(inserted(model)) == 1
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    c, t = C.astype(np.float32).reshape(1, 3, 1, 1), T_.astype(np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_array_equal(_run(model, x), np.maximum(np.where(np.abs(x - c) < t, c, x), 0))


def test_one_instance_runs_on_many_models_and_in_a_pass_manager(tmp_path):
    p = _pass()
    a, b = load_model(_model(tmp_path, "a.onnx")), load_model(_model(tmp_path, "b.onnx", scale=2.0))
    for m in (a, b):
        result = PassManager([p])(m)
        assert result.modified and [r.site for r in inserted(result.model)] == ["act"]
    assert inserted(a)[0].y != "" and inserted(a) is not inserted(b)


def test_preconditions_name_the_problem(tmp_path):
    model = load_model(_model(tmp_path))
    with pytest.raises(PreconditionError, match="not in this model"):
        InsertSparsifyPass({"nope": Operator(SiteParams(C, T_), 1, 4)})(model)
    with pytest.raises(PreconditionError, match="2 channels|has 3 channels"):
        InsertSparsifyPass({"act": Operator(SiteParams(C[:2], T_[:2]), 1, 4)})(model)
    with pytest.raises(PreconditionError, match="outside its rank"):
        InsertSparsifyPass({"act": Operator(SiteParams(C, T_), 4, 4)})(model)


def test_postcondition_catches_a_reader_left_on_the_unguarded_tensor(tmp_path):
    """A planted bug: the pass builds the operator but does not rewire the readers."""
    model = load_model(_model(tmp_path))

    class Unwired(InsertSparsifyPass):
        def call(self, model):
            result = super().call(model)
            act = next(n for n in model.graph if n.name == "act")
            where = act.inputs[0]
            act.replace_input_with(0, where.producer().inputs[2])  # back to x, the Where's kept input
            return result

    with pytest.raises(PostconditionError, match="not rewired"):
        Unwired({"act": Operator(SiteParams(C, T_), 1, 4)})(model)


def test_identity_sites_are_skipped_and_recorded(tmp_path):
    model = load_model(_model(tmp_path))
    zero = InsertSparsifyPass({"act": Operator(SiteParams(C, np.zeros(3)), 1, 4)})
    result = zero(model)
    assert not result.modified and model.meta["mstransform.skipped"] == ["act"] and inserted(model) == []
