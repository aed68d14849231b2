"""Converting a float32 ONNX model to float16 or bfloat16 (for TensorRT 11's strongly typed networks).

TensorRT 11 has no precision flags: a network runs in the types its ONNX model carries. This
pass gives a model those types, the way the common converters do (onnxconverter-common's
``float16`` converter, ModelOpt AutoCast), in a few rules:

* every float32 weight and ``Constant`` is rounded to the target type (a value that would
  overflow it is an error, never a silent ``inf``);
* every ``Cast(to=FLOAT)`` casts to the target instead, and every float32 value takes the
  target type;
* the graph's float32 inputs and outputs stay float32, with one ``Cast`` after each input and
  before each output, so callers feed and read the same arrays as before;
* inputs that ONNX requires in float32 whatever the model's type (``Resize`` scales) keep it.

Run it *before* :class:`~mstransform.passes.onnx.sparsify.InsertSparsifyPass` and the sparsify
constants are made in the target type straight from the float64 statistics, so ``|x - mu|``
and its comparison run in the model's own precision, one rounding from the statistics.
A second run changes nothing.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult, PostconditionError, PreconditionError

from mstransform.core.errors import ModelError
from mstransform.core.options import Precision
from mstransform.passes.graph.load import OPERATOR_OPSET, UpgradeOpsetPass

FLOAT = ir.DataType.FLOAT
_TYPES = {Precision.FP16: ir.DataType.FLOAT16, Precision.BF16: ir.DataType.BFLOAT16}
PRECISION_TYPES = {p: t.numpy() for p, t in _TYPES.items()}  # numpy dtypes of the reduced precisions
# (op type, input index) that ONNX types as float32 whatever the data's type
_FLOAT32_ONLY = {("Resize", 2), ("Upsample", 1)}


class ConvertFloatPass(InPlacePass):
    """float32 -> ``precision`` everywhere inside the graph; graph inputs and outputs stay float32."""

    def __init__(self, precision: Precision):
        super().__init__()
        self.precision = Precision(precision)

    @property
    def target(self) -> ir.DataType:
        return _TYPES[self.precision]

    def requires(self, model: ir.Model) -> None:
        if self.precision is Precision.FP32:
            raise PreconditionError("ConvertFloatPass converts to fp16 or bf16; fp32 needs no pass")
        refused = unsupported_ops(model, self.precision)
        if refused:
            op, opset = refused[0]
            raise PreconditionError(f"{op} at opset {opset} does not take {self.precision.value} tensors in ONNX; "
                                    "re-export at a newer opset (or run precision_opset_pass(precision) first)")

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        keep = _float32_only(graph)
        changed = False
        for value in list(graph.initializers.values()):
            if value.dtype == FLOAT and value not in keep:
                self._round_initializer(value)
                changed = True
        for node in list(graph):
            changed |= self._convert_node(node, keep)
        changed |= self._cast_inputs(graph) | self._cast_outputs(graph)
        return PassResult(model, changed)

    def ensures(self, model: ir.Model) -> None:
        boundary = {id(v) for v in model.graph.inputs} | {id(v) for v in model.graph.outputs}
        keep = set().union(*(_float32_only(g) for g in model.graphs()))
        for node in ir.traversal.RecursiveGraphIterator(model.graph):  # branch and loop bodies included
            for v in node.outputs:
                if v.dtype == FLOAT and id(v) not in boundary and v not in keep and not _is_boundary(node):
                    raise PostconditionError(f"value {v.name!r} (from {node.op_type}) is still float32 after conversion")
        for graph in model.graphs():
            for v in graph.initializers.values():
                if v.dtype == FLOAT and v not in keep:
                    raise PostconditionError(f"weight {v.name!r} is still float32 after conversion")

    def _rounded(self, array: np.ndarray, name: str) -> np.ndarray:
        with np.errstate(over="ignore"):  # an overflow is reported below, in one line
            out = np.asarray(array, np.float32).astype(self.target.numpy())
        bad = np.isfinite(array) & ~np.isfinite(out.astype(np.float32))
        if bad.any():
            big = float(np.abs(np.asarray(array, np.float32)[bad]).max())
            raise ModelError(f"tensor {name!r} holds {big:.4g}, beyond the range of {self.precision.value}")
        return out

    def _round_initializer(self, value: ir.Value) -> None:
        tensor = value.const_value
        value.const_value = ir.tensor(self._rounded(tensor.numpy(), value.name), name=tensor.name)
        value.type = ir.TensorType(self.target)

    def _convert_node(self, node: ir.Node, keep: set) -> bool:
        changed = False
        if _is_boundary(node):
            return False
        if node.op_type == "Cast" and node.attributes.get("to") is not None and node.attributes["to"].value == FLOAT:
            node.attributes["to"] = ir.AttrInt64("to", self.target)
            changed = True
        if node.op_type == "Constant":
            changed |= self._convert_constant(node)
        for attr in node.attributes.values():  # subgraphs (If/Loop/Scan) follow the same rules
            for g in (attr.value if attr.type == ir.AttributeType.GRAPHS else
                      [attr.value] if attr.type == ir.AttributeType.GRAPH else []):
                changed |= self._convert_subgraph(g, keep | _float32_only(g))
        for v in node.outputs:
            if v.dtype == FLOAT and v not in keep:
                v.type = ir.TensorType(self.target)
                changed = True
        return changed

    def _convert_subgraph(self, graph: ir.Graph, keep: set) -> bool:
        """A branch or loop body: its own weights are rounded and its values converted like the main graph's.

        Its inputs and outputs convert too: they are values of the enclosing node, not the model's boundary."""
        changed = False
        for value in graph.initializers.values():
            if value.dtype == FLOAT and value not in keep:
                self._round_initializer(value)
                changed = True
        for value in graph.inputs:
            if value.dtype == FLOAT and value not in keep:
                value.type = ir.TensorType(self.target)
                changed = True
        for inner in list(graph):
            changed |= self._convert_node(inner, keep)
        return changed

    def _convert_constant(self, node: ir.Node) -> bool:
        name = node.outputs[0].name
        if "value" in node.attributes and node.attributes["value"].value.dtype == FLOAT:
            array = self._rounded(node.attributes["value"].value.numpy(), name)
        elif "value_float" in node.attributes:
            array = self._rounded(np.array(node.attributes["value_float"].value, np.float32), name)
        elif "value_floats" in node.attributes:
            array = self._rounded(np.array(node.attributes["value_floats"].value, np.float32), name)
        else:
            return False
        node.attributes.clear()
        node.attributes["value"] = ir.AttrTensor("value", ir.tensor(array))
        return True

    def _cast_inputs(self, graph: ir.Graph) -> bool:
        changed = False
        for value in graph.inputs:
            if value.dtype != FLOAT or not value.uses() or _is_boundary_cast_input(value):
                continue
            cast = ir.node("Cast", [value], attributes={"to": self.target}, name=f"{_PREFIX}{value.name}")
            cast.outputs[0].name = f"{value.name}/{self.precision.value}"
            cast.outputs[0].type = ir.TensorType(self.target)
            cast.outputs[0].shape = value.shape
            value.replace_all_uses_with(cast.outputs[0])
            graph.insert_before(graph.node(0), cast)
            cast.replace_input_with(0, value)
            changed = True
        return changed

    def _cast_outputs(self, graph: ir.Graph) -> bool:
        changed = False
        for i, value in enumerate(list(graph.outputs)):
            if value.dtype != self.target or (value.producer() is not None and _is_boundary(value.producer())):
                continue
            name = value.name
            value.name = f"{name}/{self.precision.value}"
            cast = ir.node("Cast", [value], attributes={"to": FLOAT}, name=f"{_PREFIX}{name}")
            out = cast.outputs[0]
            out.name, out.type, out.shape = name, ir.TensorType(FLOAT), value.shape
            graph.append(cast)
            graph.outputs[i] = out
            changed = True
        return changed


def unsupported_ops(model: ir.Model, precision: Precision) -> list[tuple[str, int]]:
    """The (op type, opset) of standard ops whose float inputs ONNX does not type as ``precision``."""
    type_str = f"tensor({_TYPES[Precision(precision)].name.lower()})"
    opset = model.opset_imports.get("", 1)
    refused = []
    for op_type in sorted({n.op_type for n in model.graph if n.domain in ("", "ai.onnx")}):
        try:
            schema = onnx.defs.get_schema(op_type, opset)
        except onnx.defs.SchemaError:
            continue  # an unknown op: load_model's checks speak for it
        constraints = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
        floats = [constraints[i.type_str] for i in schema.inputs if i.type_str in constraints
                  and "tensor(float)" in constraints[i.type_str]]
        if floats and not any(type_str in allowed for allowed in floats):
            refused.append((op_type, opset))
    return refused


def precision_opset_pass(precision: Precision) -> UpgradeOpsetPass:
    """The opset upgrade to the lowest standard opset, at least the operator's own, where all ops take
    ``precision`` (bf16 Conv: opset 22)."""
    precision = Precision(precision)

    def lacking(model: ir.Model) -> str | None:
        refused = unsupported_ops(model, precision)
        return f"{refused[0][0]} takes no {precision.value} tensors" if refused else None

    return UpgradeOpsetPass(OPERATOR_OPSET, f"the first with the operator's ops where every op takes {precision.value}",
                            lacking)


_PREFIX = "mstransform/precision/"  # the name of every boundary Cast, so a second run finds them


def _is_boundary(node: ir.Node) -> bool:
    return node.op_type == "Cast" and (node.name or "").startswith(_PREFIX)


def _is_boundary_cast_input(value: ir.Value) -> bool:
    return all(_is_boundary(n) for n, _ in value.uses())


def _float32_only(graph: ir.Graph) -> set:
    return {node.inputs[i] for node in graph for (op, i) in _FLOAT32_ONLY
            if node.op_type == op and len(node.inputs) > i and node.inputs[i] is not None}
