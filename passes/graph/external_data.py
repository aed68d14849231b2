"""The files an ONNX model references: its external-data files.

The floor's output guard (:func:`mstransform.core.guards.check_outputs`) cannot read ONNX, so the
callers that check outputs against an input model add what this module lists to the inputs:
an output that is (or whose ``OUT.data`` is) an input model's weights file would otherwise
overwrite the input through it.
"""
from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir

__all__ = ["model_references", "with_references"]


def model_references(model) -> list[Path]:
    """Every external-data file ``model`` reads: a path to an ONNX file (its proto is read without
    the data) or an :class:`onnx_ir.Model`. Tensors anywhere count: initializers, sparse
    initializers, tensors in node attributes (``Constant``), subgraphs (``If``/``Loop``/``Scan``
    bodies) and functions. A file that is not a readable ONNX model references nothing here
    (loading it reports the problem); locations are joined to the model's folder, unresolved."""
    if isinstance(model, ir.Model):
        return _ir_references(model)
    if model is None:
        return []
    path = Path(model)
    try:
        if not path.is_file():
            return []
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX, unreadable: load_model says so in its own words
        return []
    folder = path.parent
    seen: dict[str, Path] = {}
    for tensor in _proto_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if loc:
            seen.setdefault(loc, folder / loc)
    return list(seen.values())


def with_references(*models) -> list:
    """Each of ``models`` (paths or None) followed by the files it references: the inputs to give
    :func:`~mstransform.core.guards.check_outputs` for the model inputs of a command."""
    out = []
    for m in models:
        if m is None:
            continue
        out.append(m)
        out.extend(model_references(m))
    return out


def _proto_tensors(proto: onnx.ModelProto):
    yield from _graph_tensors(proto.graph)
    for function in proto.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto):
    for a in node.attribute:
        if a.HasField("t"):
            yield a.t
        yield from a.tensors
        for sparse in ([a.sparse_tensor] if a.HasField("sparse_tensor") else []) + list(a.sparse_tensors):
            yield sparse.values
            yield sparse.indices
        if a.HasField("g"):
            yield from _graph_tensors(a.g)
        for g in a.graphs:
            yield from _graph_tensors(g)


def _ir_references(model: ir.Model) -> list[Path]:
    seen: dict[str, Path] = {}

    def add(value) -> None:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, ir.ExternalTensor):
                seen.setdefault(str(v.path), Path(v.path))
            elif isinstance(v, ir.Graph):  # a subgraph's own initializers
                for init in v.initializers.values():
                    add(init.const_value)

    for init in model.graph.initializers.values():
        add(init.const_value)
    for g in [model.graph, *model.functions.values()]:
        for node in ir.traversal.RecursiveGraphIterator(g):
            for attr in node.attributes.values():
                add(getattr(attr, "value", None))
    return list(seen.values())
