"""Expose inner tensors as graph outputs, for runs that need to read them (verification, plots).

The pass adds each requested value that is not already a graph output and reports which it
added; :func:`exposed` undoes that afterwards, so an in-memory model can be exposed for one
session and handed back unchanged.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult


@dataclass
class ExposeResult(PassResult):
    added: list[ir.Value] = field(default_factory=list)


class ExposeValuesPass(InPlacePass):
    """Append ``values`` (deduplicated, graph outputs skipped) to the graph's outputs."""

    def __init__(self, values: list[ir.Value]):
        super().__init__()
        self.values = list(values)

    def call(self, model: ir.Model) -> ExposeResult:
        added, seen = [], set()
        for v in self.values:
            if id(v) in seen or v.is_graph_output():
                seen.add(id(v))
                continue
            seen.add(id(v))
            model.graph.outputs.append(v)
            added.append(v)
        return ExposeResult(model, bool(added), added)


@contextlib.contextmanager
def exposed(model: ir.Model, values: list[ir.Value]):
    """Within the block, ``values`` are graph outputs of ``model``; afterwards the outputs are as before."""
    result = ExposeValuesPass(values)(model)
    try:
        yield result.added
    finally:
        for v in result.added:
            model.graph.outputs.remove(v)
