"""Graphs inside graphs: the bodies of ``If``, ``Loop`` and ``Scan``, and values lifted out of them.

Exports of detectors, recurrent and streaming models keep whole networks inside control flow
(a voice-activity detector with one branch per sample rate). A tensor inside a body can only be
read from outside by making it an output of that body, level by level up to the main graph:

* ``If`` -- the value becomes an output of its branch, and the other branch outputs a placeholder
  of the same element type (empty, or what the caller gives: zeros for sums, so a branch that did
  not run adds nothing);
* ``Loop`` and ``Scan`` -- the value becomes a new *scan output* of the body, so the node returns
  it stacked over iterations: one more leading axis (``levels`` counts them).

:func:`lifting` does this for the lifetime of one session and undoes it exactly afterwards, like
:func:`mstransform.passes.graph.expose.exposed`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from mstransform.core.errors import ModelError

CONTROL_FLOW = ("If", "Loop", "Scan")


def owners(model: ir.Model) -> dict[int, tuple[ir.Node, str]]:
    """``id(subgraph) -> (node, attribute name)`` for every body in the model, at any depth."""
    out: dict[int, tuple[ir.Node, str]] = {}
    for node in model.graph.all_nodes():
        for name, attr in node.attributes.items():
            if attr.type == ir.AttributeType.GRAPH:
                out[id(attr.as_graph())] = (node, name)
            elif attr.type == ir.AttributeType.GRAPHS:
                for g in attr.as_graphs():
                    out[id(g)] = (node, name)
    return out


def graphs(model: ir.Model) -> list[ir.Graph]:
    """The main graph first, then every body, depth first."""
    return [model.graph, *model.graph.subgraphs()]


def where(graph: ir.Graph, model: ir.Model, owned: dict[int, tuple[ir.Node, str]] | None = None) -> str:
    """Where a graph lives: ``main``, or the path of owning nodes and attributes (``/If_0:then_branch``)."""
    owned = owners(model) if owned is None else owned
    parts = []
    while graph is not model.graph and id(graph) in owned:
        node, attr = owned[id(graph)]
        parts.append(f"{node.name or node.op_type}:{attr}")
        graph = node.graph
    return "main" if not parts else " > ".join(reversed(parts))


@dataclass(frozen=True)
class Lifted:
    """A value of a body as the main graph sees it: ``value``, with ``levels`` leading loop axes."""

    value: ir.Value
    levels: int


class _Undo:
    """What lifting changed, to put back in reverse order."""

    def __init__(self):
        self.steps: list = []

    def run(self) -> None:
        for step in reversed(self.steps):
            step()
        self.steps.clear()


def _placeholder(value: ir.Value, fill: np.ndarray | None) -> np.ndarray:
    if fill is not None:
        return fill
    dtype = value.dtype.numpy() if value.dtype is not None else np.float32
    rank = len(value.shape) if value.shape is not None else 1
    return np.zeros([0] * max(rank, 1), dtype=dtype)


def _lift_once(value: ir.Value, node: ir.Node, attr: str, fill: np.ndarray | None, undo: _Undo,
               tag: str) -> tuple[ir.Value, int]:
    """Make ``value`` (in body ``attr`` of ``node``) an output of ``node``; returns it and the axes added."""
    body = value.graph
    body.outputs.append(value)
    undo.steps.append(lambda: body.outputs.pop())
    added = 0
    if node.op_type == "If":
        other_attr = "else_branch" if attr == "then_branch" else "then_branch"
        other = node.attributes[other_attr].as_graph()
        const = ir.node("Constant", [], attributes={"value": ir.tensor(_placeholder(value, fill))},
                        name=f"mst_placeholder/{tag}")
        const.outputs[0].name = f"mst_placeholder/{tag}"
        other.append(const)
        other.outputs.append(const.outputs[0])

        def drop_other(other=other, const=const):
            other.outputs.pop()
            other.remove(const, safe=True)
        undo.steps.append(drop_other)
    elif node.op_type in ("Loop", "Scan"):
        added = 1  # a new scan output: stacked over iterations
        if node.op_type == "Scan":
            for key in ("scan_output_axes", "scan_output_directions"):
                if key in node.attributes:
                    old = node.attributes[key]
                    node.attributes[key] = ir.AttrInt64s(key, [*old.as_ints(), 0])
                    undo.steps.append(lambda key=key, old=old: node.attributes.__setitem__(key, old))
    else:
        raise ModelError(f"cannot read a value inside the {attr} body of {node.domain or 'ai.onnx'}::{node.op_type} "
                         f"node {node.name!r}: only If, Loop and Scan bodies can hand a value out")
    before = len(node.outputs)
    node.resize_outputs(before + 1)
    out = node.outputs[-1]
    out.name = f"mst_lifted/{tag}"
    if value.dtype is not None:
        out.type = ir.TensorType(value.dtype)

    def shrink(node=node, before=before):
        node.resize_outputs(before)
    undo.steps.append(shrink)
    return out, added


@contextlib.contextmanager
def lifting(model: ir.Model, values: list[ir.Value], fills: list[np.ndarray | None] | None = None):
    """Within the block, each of ``values`` has a :class:`Lifted` twin in the main graph (the value
    itself where it is in the main graph already); afterwards the model is as before.

    ``fills`` gives, per value, the placeholder an ``If``'s other branch returns (default: empty)."""
    owned = owners(model)
    fills = list(fills) if fills is not None else [None] * len(values)
    undo = _Undo()
    lifted: list[Lifted] = []
    try:
        for k, (value, fill) in enumerate(zip(values, fills)):
            v, levels, depth = value, 0, 0
            while v.graph is not model.graph:
                if id(v.graph) not in owned:
                    raise ModelError(f"value {value.name!r} is in a graph that no node of the model owns")
                node, attr = owned[id(v.graph)]
                fill_here = None if fill is None else (fill if levels == 0 else None)
                v, added = _lift_once(v, node, attr, fill_here, undo, f"{k}/{depth}")
                levels += added
                depth += 1
            lifted.append(Lifted(v, levels))
        yield lifted
    finally:
        undo.run()
