"""The preparation passes (passes/graph/load.py), one by one on tiny hand-built models: dynamic dims,
the default domain, the opset upgrade and node naming."""
from __future__ import annotations

import numpy as np
import onnx.helper as oh
import onnx_ir as ir
import pytest
from helpers import tiny_model
from onnx_ir.passes import PreconditionError
from tiny_graphs import model_of, node, session

from mstransform.passes.graph.load import (OPERATOR_OPSET, DefaultDomainPass, DynamicDimsPass, NameAfterOutputsPass,
                                          UpgradeOpsetPass)
from mstransform.passes.onnx.precision import precision_opset_pass


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
