"""Activations found by what they compute: one mechanism for ONNX and torch.fx graphs.

An adapter describes its graph's elementwise nodes in ONNX's op names (:class:`Elementwise`,
through the :class:`ElementwiseGraph` protocol). From every nonlinear node (an *anchor*: a
Tanh, Erf, Sigmoid, Exp, Relu, Min, Clip ...) the finder looks back for the tensor ``x`` the
activation reads (the anchor's input and its elementwise ancestors) and forward for the value
``y`` it produces: the *region* of ``x`` is every elementwise node computed from ``x`` and
scalar constants alone, and each value of it is evaluated in float64 on a grid of inputs. A
``(x, y)`` pair whose values agree with a catalogue function
(:func:`mstransform.core.activations.identify`) is a candidate; the one spanning most ops
wins (a HardSwish over the Relu inside it), ties going to the ``x`` nearest the anchor.

The structure must be plausible too: no value inside the activation may be read outside it.
An anchor that merges back with its own input's ancestors (``x * f(g(x))``) but computes no
catalogue function is *unresolved*: it is reported with the closest function and never guessed
to be a plain activation of its own input (a Tanh inside a GELU spelled some new way would
otherwise be hardened on the Tanh's argument). So is an op the catalogue names as a part only
(``ActivationKind.parts``: an Erf) that no activation around it claims.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from mstransform.core.activations import (ANCHORS, GRID, SQUASHING, VALUE_KEEPING, Identified, closest, evaluate,
                                          identify, parts)

N = TypeVar("N")
V = TypeVar("V")

MAX_BACK = 6  # elementwise ancestors of an anchor's input tried as the activation's input
MAX_REGION = 24  # nodes in one region: the longest spelling seen is a dozen ops
MAX_HOPS = 8  # how far forward an anchor's output may merge back with its input's ancestors
NEAR_MISS = 20.0  # an unresolved expression names its closest function when it is this near (in tolerances)


@dataclass(frozen=True)
class Elementwise(Generic[V]):
    """An elementwise node in ONNX's vocabulary: ``operands`` are graph values or numpy constants (None for an
    omitted optional input), ``attributes`` the op's keyword parameters (``alpha``, ``approximate``)."""

    op: str
    operands: tuple
    attributes: dict = field(default_factory=dict)


class ElementwiseGraph(Protocol[N, V]):
    def nodes(self) -> list[N]:
        """Every node, in topological order."""

    def elementwise(self, node: N) -> Elementwise | None:
        """The node as an elementwise op, or None (not elementwise, or not in the vocabulary)."""

    def output(self, node: N) -> V: ...

    def producer(self, value: V) -> N | None: ...

    def users(self, value: V) -> list[N]: ...

    def is_graph_output(self, value: V) -> bool: ...


@dataclass
class Composite(Generic[N, V]):
    """An activation found by its values: ``x`` enters it, ``y`` leaves it, ``nodes`` compute it (graph order)."""

    identified: Identified
    x: Any
    y: Any
    nodes: list
    readers: list  # (node, operand index) pairs that read x
    ops: list = field(default_factory=list)  # the op of each node, in order: the spelling, for people


@dataclass(frozen=True)
class Unresolved:
    """An anchor inside an expression of its own input that computes no catalogue function."""

    node: Any
    reason: str


def _is_const(operand) -> bool:
    return isinstance(operand, (np.ndarray, np.generic))


def _scalar(c) -> np.ndarray | None:
    """A constant as a float64 scalar when all its elements are equal (a per-channel constant is not one)."""
    if c is None:
        return None
    arr = np.asarray(c)
    if arr.size == 0:
        return None
    flat = arr.reshape(-1)
    if arr.dtype == bool:
        return np.bool_(flat[0]) if np.all(flat == flat[0]) else None
    if arr.dtype.kind not in "fiu" and arr.dtype.name != "bfloat16":
        return None
    flat = flat.astype(np.float64)
    return np.float64(flat[0]) if np.all(flat == flat[0]) else None


class _Finder:
    def __init__(self, graph: ElementwiseGraph):
        self.g = graph
        self.order = {id(n): i for i, n in enumerate(graph.nodes())}
        self._ew: dict[int, Elementwise | None] = {}
        self._ancestors: dict[int, list] = {}
        self._regions: dict[int, tuple[dict[int, np.ndarray], list]] = {}

    def ew(self, node) -> Elementwise | None:
        key = id(node)
        if key not in self._ew:
            self._ew[key] = self.g.elementwise(node) if node is not None else None
        return self._ew[key]

    def values(self, e: Elementwise) -> list:
        return [v for v in e.operands if v is not None and not _is_const(v)]

    def ancestors(self, anchor) -> list:
        """The anchor's computed operands, then their elementwise ancestors, nearest first (computed once)."""
        if id(anchor) not in self._ancestors:
            self._ancestors[id(anchor)] = self._walk_back(anchor)
        return self._ancestors[id(anchor)]

    def _walk_back(self, anchor) -> list:
        start = self.values(self.ew(anchor))
        out, seen, frontier = [], set(), list(start)
        while frontier and len(out) < MAX_BACK:
            v = frontier.pop(0)
            if id(v) in seen:
                continue
            seen.add(id(v))
            out.append(v)
            e = self.ew(self.g.producer(v))
            if e is not None:
                frontier.extend(self.values(e))
        return out

    def region(self, x) -> tuple[dict[int, np.ndarray], list]:
        """Values computed from ``x`` and scalar constants alone (float64 on GRID), and their nodes in graph order
        (computed once per ``x``: neighbouring anchors share their ancestors)."""
        if id(x) not in self._regions:
            self._regions[id(x)] = self._grow(x)
        return self._regions[id(x)]

    def _grow(self, x) -> tuple[dict[int, np.ndarray], list]:
        vals: dict[int, np.ndarray] = {id(x): GRID}
        nodes: list = []
        pending = list(self.g.users(x))
        tried: set[int] = set()
        progress = True
        while progress and len(nodes) < MAX_REGION:
            progress = False
            for node in sorted({id(n): n for n in pending}.values(), key=lambda n: self.order.get(id(n), 0)):
                if id(node) in tried:
                    continue
                e = self.ew(node)
                if e is None:
                    tried.add(id(node))
                    continue
                args, ready, pure = [], True, True
                for v in e.operands:
                    if v is None or _is_const(v):
                        s = _scalar(v)
                        if v is not None and s is None:
                            pure = False
                        args.append(s)
                    elif id(v) in vals:
                        args.append(vals[id(v)])
                    else:
                        ready = False
                if not pure:
                    tried.add(id(node))
                    continue
                if not ready:
                    continue
                tried.add(id(node))
                try:
                    out = evaluate(e.op, args, e.attributes)
                except (TypeError, ValueError):
                    continue
                out = np.broadcast_to(np.asarray(out), GRID.shape) if np.ndim(out) == 0 else np.asarray(out)
                if out.shape != GRID.shape:
                    continue
                y = self.g.output(node)
                vals[id(y)] = out.astype(np.float64) if out.dtype != bool else out
                nodes.append(node)
                pending.extend(self.g.users(y))
                progress = True
                if len(nodes) >= MAX_REGION:
                    break
        return vals, nodes

    def cone(self, x, y, region_nodes: list) -> list:
        """The nodes of the region that ``y`` needs, stopping at ``x``, in graph order."""
        members = {id(n) for n in region_nodes}
        need, stack, seen = [], [y], set()
        while stack:
            v = stack.pop()
            if v is x or id(v) in seen:
                continue
            seen.add(id(v))
            node = self.g.producer(v)
            if node is None or id(node) not in members:
                continue
            need.append(node)
            stack.extend(self.values(self.ew(node)))
        return sorted({id(n): n for n in need}.values(), key=lambda n: self.order.get(id(n), 0))

    def leaking(self, nodes: list, y):
        """A value inside the activation that is read outside it or leaves the graph, else None."""
        inside = {id(n) for n in nodes}
        for n in nodes:
            out = self.g.output(n)
            if out is y:
                continue
            if self.g.is_graph_output(out) or any(id(u) not in inside for u in self.g.users(out)):
                return out
        return None

    def readers(self, x, nodes: list) -> list:
        return [(n, i) for n in nodes for i, v in enumerate(self.ew(n).operands) if v is x]

    def best(self, anchor):
        """The widest self-contained activation through ``anchor`` (or None); the closest function of any
        expression through it that merges back with the anchor's input, and that expression's nodes; and the
        first activation refused because an inner value leaks out of it ``(identified, y, inner value)``."""
        candidates, near, merged_nodes = [], None, []
        anchor_out = self.g.output(anchor)
        for dist, x in enumerate(self.ancestors(anchor)):
            vals, region = self.region(x)
            if not any(n is anchor for n in region):
                continue
            for node in region:
                y = self.g.output(node)
                nodes = self.cone(x, y, region)
                if not any(n is anchor for n in nodes):
                    continue
                g = vals[id(y)]
                if g.dtype == bool:
                    continue
                ident = identify(g)
                width = sum(1 for n in nodes if self.ew(n).op not in VALUE_KEEPING)
                if ident is not None:
                    candidates.append((-width, dist, len(nodes), ident, x, y, nodes))
                elif y is not anchor_out and any(len(self.values(self.ew(n))) > 1 for n in nodes):  # x twice
                    c = closest(g)
                    if c is not None and (near is None or c.error < near.error):
                        near, merged_nodes = c, nodes
        leak = None
        for _, _, _, ident, x, y, nodes in sorted(_fewest_extra(candidates), key=lambda c: c[:3]):
            inner = self.leaking(nodes, y)
            if inner is None:
                return Composite(ident, x, y, nodes, self.readers(x, nodes)), near, merged_nodes, leak
            leak = leak or (ident, y, inner)
        return None, near, merged_nodes, leak

    def merges_back(self, anchor) -> Any:
        """A node within a few elementwise hops after ``anchor`` that also reads an elementwise ancestor of the
        anchor's input (``x * tanh(g(x))``), whatever its constants; else None."""
        ancestors = {id(v) for v in self.ancestors(anchor)}
        frontier, seen = [self.g.output(anchor)], set()
        for _ in range(MAX_HOPS):
            nxt = []
            for v in frontier:
                for user in self.g.users(v):
                    if id(user) in seen:
                        continue
                    seen.add(id(user))
                    e = self.ew(user)
                    if e is None:
                        continue
                    if any(id(o) in ancestors for o in self.values(e) if o is not v):
                        return user
                    nxt.append(self.g.output(user))
            frontier = nxt
        return None


def _fewest_extra(candidates: list) -> list:
    """Drop a candidate that only extends a narrower one of the same kind from the same input and agrees no better
    (``Max(v, 0) + 1e-6`` is within tolerance of a Relu, but the Relu is the ``Max``)."""
    kept = []
    for c in candidates:
        nodes = {id(n) for n in c[6]}
        if not any(o is not c and o[3].kind == c[3].kind and o[4] is c[4] and o[3].error <= c[3].error
                   and {id(n) for n in o[6]} < nodes for o in candidates):
            kept.append(c)
    return kept


def find_composites(graph: ElementwiseGraph, single=lambda node: False,
                    describe=str) -> tuple[list[Composite], list[Unresolved]]:
    """Every activation of ``graph`` found by its values, and the anchors left unresolved.

    An activation of one node for which ``single(node)`` holds (the catalogue's own ops: a ``Relu``, a
    ``Celu``, an ``nn.SiLU``) is left to the caller, which knows its kind from the op; such an anchor is
    still reported unresolved when it sits inside an expression of its own input. ``describe`` names a
    node or a value for the reasons."""
    finder = _Finder(graph)
    inside = parts()
    found: list[Composite] = []
    unresolved: list[Unresolved] = []
    claimed: set[int] = set()
    for node in graph.nodes():
        e = finder.ew(node)
        if e is None or e.op not in ANCHORS or id(node) in claimed:
            continue
        comp, near, merged, leak = finder.best(node)
        if comp is not None and any(id(n) in claimed for n in comp.nodes):
            comp = None
        ops = [finder.ew(n).op for n in comp.nodes] if comp is not None else []
        bending = [n for n in (comp.nodes if comp is not None else []) if finder.ew(n).op not in VALUE_KEEPING]
        if comp is not None and not (len(bending) == 1 and single(bending[0])):
            comp.ops = ops
            found.append(comp)
            claimed.update(id(n) for n in comp.nodes)
            continue
        merge = finder.merges_back(node) if e.op in SQUASHING else None
        if merge is None and not (merged and e.op in SQUASHING):
            if e.op in inside:  # an op found only inside one activation's spellings (an Erf), alone
                unresolved.append(Unresolved(node, f"{e.op} computes no catalogue activation beyond its own op (it "
                                                   f"appears only inside a {inside[e.op]}): not hardened"))
            continue  # a plain activation of its input (the caller's single op), or no activation at all
        if merge is None:
            merge = merged[-1]
        if leak is not None:
            ident, y, inner = leak
            unresolved.append(Unresolved(node, f"{e.op} is part of a {ident.kind} ({ident.describe()}) ending at "
                                               f"'{describe(y)}', but its inner value '{describe(inner)}' is read "
                                               "outside it: not hardened"))
            continue
        hint = (f" (closest: {near.kind} {near.describe()}, {near.error:.2g}x the tolerance off)"
                if near is not None and near.error <= NEAR_MISS else "")
        unresolved.append(Unresolved(node, f"{e.op} sits inside an expression of its own input that merges back at "
                                           f"'{describe(merge)}' and computes no catalogue activation{hint}: "
                                           "not hardened"))
    return found, unresolved
