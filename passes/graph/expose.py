"""Expose inner tensors as graph outputs, for runs that need to read them (verification, plots).

The pass adds each requested value that is not already a graph output and reports which it
added; :func:`exposed` undoes that afterwards, so an in-memory model can be exposed for one
session and handed back unchanged. A value inside an ``If``/``Loop``/``Scan`` body is first
lifted to the main graph (:mod:`mstransform.passes.graph.subgraphs`): it is then read under another
name, stacked over loop iterations, or empty where its branch did not run.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult, PostconditionError

from mstransform.passes.graph.subgraphs import lifting


ADDED = "mstransform.exposed"  # model.meta: the values the pass appended to the graph's outputs last


class ExposeValuesPass(InPlacePass):
    """Append ``values`` (deduplicated, graph outputs skipped) to the graph's outputs."""

    def __init__(self, values: list[ir.Value]):
        super().__init__()
        self.values = list(values)

    def call(self, model: ir.Model) -> PassResult:
        added, seen = [], set()
        for v in self.values:
            if id(v) in seen or v.is_graph_output():
                seen.add(id(v))
                continue
            seen.add(id(v))
            model.graph.outputs.append(v)
            added.append(v)
        model.meta[ADDED] = added  # the side record ``exposed`` reads and undoes
        return PassResult(model, bool(added))

    def ensures(self, model: ir.Model) -> None:
        outputs = {id(v) for v in model.graph.outputs}
        missing = [v.name for v in self.values if id(v) not in outputs]
        if missing:
            raise PostconditionError(f"value {missing[0]!r} is not a graph output")


@dataclass(frozen=True)
class Exposure:
    """Where to read each exposed value: ``names[v.name]`` is the output to fetch; :meth:`levels_of` gives
    the loop axes stacked in front of it (0 in the main graph or under ``If`` only). Two bodies may hold
    values of one name: :meth:`name_of` and :meth:`levels_of` look a value up by identity."""

    names: dict[str, str]
    by_value: dict[int, tuple[str, int]]  # id(value) -> (output name, levels)

    def name_of(self, value: ir.Value) -> str:
        return self.by_value[id(value)][0]

    def levels_of(self, value: ir.Value) -> int:
        return self.by_value[id(value)][1]


@contextlib.contextmanager
def exposed(model: ir.Model, values: list[ir.Value], fills: list | None = None):
    """Within the block, ``values`` (or their lifted twins) are graph outputs of ``model``; afterwards
    the model is as before. Yields an :class:`Exposure`. ``fills``: see :func:`subgraphs.lifting`."""
    with lifting(model, list(values), fills) as lifted:
        ExposeValuesPass([lv.value for lv in lifted])(model)
        added = model.meta.pop(ADDED)
        try:
            yield Exposure({v.name: lv.value.name for v, lv in zip(values, lifted)},
                           {id(v): (lv.value.name, lv.levels) for v, lv in zip(values, lifted)})
        finally:
            for v in added:
                model.graph.outputs.remove(v)
