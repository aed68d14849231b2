"""ONNX activation rules: spelled activations by what they compute, single ops by their op.

:class:`CompositeRule` accepts any spelling of a catalogue activation by its values
(:mod:`mstransform.passes.sites.computed`, over :class:`OnnxElementwise`); it runs first and
claims its nodes, so a ``Tanh`` inside a GELU is never reported again as a plain Tanh. The
single-op rules are pattern + check + match, in the spirit of onnxscript's rewrite rules:
``pattern`` binds the wiring from an anchor node, ``check`` tests constants and attributes, and
both return a reason when the rule does not hold. A rule's ``kind`` is authoritative: it names an entry of the
activation catalogue (:data:`mstransform.core.activations.ACTIVATIONS`), read off it or, where the rule names its
kinds itself (:class:`ClipRule`), checked against it at import (:func:`mstransform.passes.sites.placement.kind`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from mstransform.core.activations import ANCHORS, OPS
from mstransform.passes.graph.values import close, const_array, is_const, scalar
from mstransform.passes.sites.placement import catalogue, kind as catalogue_kind
from mstransform.passes.sites.computed import Composite, Elementwise, Unresolved, find_composites


@dataclass
class ActivationMatch:
    """An activation found in the graph.

    ``feed`` is the tensor entering the activation (where the operator goes); ``readers`` are
    the (node, input index) pairs of the pattern that read it and must see the sparsified
    tensor; ``output_node`` produces the activation's result and names the site.
    """

    kind: str
    form: str
    feed: ir.Value
    nodes: list[ir.Node]
    output_node: ir.Node
    readers: list[tuple[ir.Node, int]] = field(default_factory=list)

    def __post_init__(self):
        if not self.readers:
            self.readers = [(n, i) for n in self.nodes for i, v in enumerate(n.inputs) if v is self.feed]


@dataclass(frozen=True)
class NoMatch:
    """Why a rule did not match at a node: the rule, the offending node and the reason in words."""

    rule: type  # the Rule subclass that tried
    node: ir.Node
    reason: str

    def __str__(self) -> str:
        return self.reason


Result = ActivationMatch | NoMatch

Bindings = dict[str, Any]


class Rule:
    """One activation form. ``anchors`` are the op types a match starts from; ``kinds`` are the
    catalogue kinds the rule can produce (one for most rules; a rule reading them off the catalogue
    at match time has them as properties)."""

    kinds: tuple[str, ...] = ()
    anchors: frozenset[str] = frozenset()
    form = "op"

    def __init_subclass__(cls):
        super().__init_subclass__()
        for k in cls.kinds if isinstance(cls.kinds, tuple) else ():
            catalogue_kind(k)  # an unknown kind fails at import, not at match time

    def pattern(self, node: ir.Node) -> Bindings | str:
        """The wiring from ``node``: bindings, or why the wiring does not fit."""
        raise NotImplementedError

    def check(self, b: Bindings) -> str | None:
        """Constants and attributes of a bound pattern: None when they fit, else why not."""
        return None

    def build(self, b: Bindings) -> ActivationMatch:
        return ActivationMatch(self.kinds[0], self.form, b["x"], b["nodes"], b["nodes"][-1])

    def match(self, node: ir.Node) -> Result:
        """The activation anchored at ``node``, or a :class:`NoMatch` naming this rule, the node and why."""
        b = self.pattern(node)
        if isinstance(b, str):
            return NoMatch(type(self), node, b)
        why = self.check(b)
        if why:
            return NoMatch(type(self), node, why)
        m = self.build(b)
        assert m.kind in self.kinds, f"{type(self).__name__} produced {m.kind!r}, not one of its kinds {self.kinds}"
        return m


FLOAT_TYPES = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
# ONNX attributes an elementwise op reads, with their defaults (the spec's).
ATTRIBUTES = {"LeakyRelu": {"alpha": 0.01}, "Elu": {"alpha": 1.0}, "Celu": {"alpha": 1.0},
              "Selu": {"alpha": 1.6732632423543772, "gamma": 1.0507009873554805}, "ThresholdedRelu": {"alpha": 1.0},
              "HardSigmoid": {"alpha": 0.2, "beta": 0.5}, "Gelu": {"approximate": "none"}}
SAME_OPS = frozenset(OPS) - {"Identity", "Silu", "Log1p", "Expm1", "Clip"}


class OnnxElementwise:
    """One ``onnx_ir`` graph seen as elementwise ops (:class:`~mstransform.passes.sites.computed.ElementwiseGraph`):
    ONNX's own op names, constants as numpy arrays, ``Cast`` to a float type and ``Dropout`` as ``Identity``."""

    def __init__(self, graph: ir.Graph):
        self.graph = graph

    def nodes(self):
        return list(self.graph)

    def elementwise(self, node: ir.Node) -> Elementwise | None:
        if node.domain not in ("", "ai.onnx") or not node.outputs:
            return None
        op = node.op_type
        if op not in SAME_OPS and op not in ("Identity", "Dropout", "Cast", "Clip"):
            return None
        operands = []
        for v in node.inputs:
            if v is not None and is_const(v):
                v = const_array(v)
                if v is None:
                    return None  # a constant this view cannot read (computed through a Transpose, say)
            operands.append(v)
        operands = tuple(operands)
        if not operands or operands[0] is None:
            return None
        if op in ("Identity", "Dropout"):
            return Elementwise("Identity", operands[:1])
        if op == "Cast":
            to = node.attributes.get("to")
            return Elementwise("Identity", operands[:1]) if to is not None and to.as_int() in FLOAT_TYPES else None
        if op == "Clip":
            if len(node.inputs) > 1:
                return Elementwise("Clip", (operands + (None, None))[:3])
            lo, hi = node.attributes.get("min"), node.attributes.get("max")
            return Elementwise("Clip", (operands[0], None if lo is None else np.float64(lo.as_float()),
                                        None if hi is None else np.float64(hi.as_float())))
        if op not in SAME_OPS:
            return None
        attrs = {}
        for key, default in ATTRIBUTES.get(op, {}).items():
            a = node.attributes.get(key)
            attrs[key] = default if a is None else (a.as_string() if key == "approximate" else a.as_float())
        return Elementwise(op, operands, attrs)

    def output(self, node: ir.Node) -> ir.Value:
        return node.outputs[0]

    def producer(self, value: ir.Value) -> ir.Node | None:
        node = value.producer()
        return node if node is not None and node.graph is self.graph else None

    def users(self, value: ir.Value) -> list[ir.Node]:
        """The nodes reading ``value``'s numbers (a ``CastLike`` reads only the type of its second input, a
        ``Shape`` or ``Size`` only the shape: the operator changes neither)."""
        return [u.node for u in value.uses() if u.node.graph is self.graph
                and not (u.node.op_type == "CastLike" and u.idx == 1) and u.node.op_type not in ("Shape", "Size")]

    def is_graph_output(self, value: ir.Value) -> bool:
        return value.is_graph_output()


def _composite_match(c: Composite) -> ActivationMatch:
    form = f"{c.identified.describe()}: {'/'.join(c.ops)}"
    return ActivationMatch(c.identified.kind, form, c.x, list(c.nodes), c.y.producer(), list(c.readers))


class CompositeRule(Rule):
    """Any spelling of a catalogue activation, accepted by what it computes
    (:mod:`mstransform.passes.sites.computed`): ``x * Sigmoid(1.702 * x)``, ``x / (1 + Exp(-x))``, a tanh GELU with
    its constants folded or reassociated, ``x * Min(Relu(x + 3), 6) / 6``. Anchored at any op of :data:`~mstransform.core.activations.ANCHORS`."""

    anchors = frozenset(ANCHORS)
    form = "computed"

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(catalogue().kinds)

    def match(self, node: ir.Node) -> Result:
        found, unresolved = composites(node.graph)  # the whole graph's, at each call: for one node's question
        for c in found:
            if any(n is node for n in c.nodes):
                return _composite_match(c)
        for u in unresolved:
            if u.node is node:
                return NoMatch(CompositeRule, node, u.reason)
        return NoMatch(CompositeRule, node, f"{node.op_type} computes no catalogue activation beyond its own op")


def composites(graph: ir.Graph) -> tuple[list[Composite], list[Unresolved]]:
    """The spelled activations of ``graph`` and its unresolved anchors (:func:`find_composites` over its elementwise
    view); the graph is only read."""
    return find_composites(OnnxElementwise(graph), _single, describe=_name)


def _single(node: ir.Node) -> bool:
    return node.op_type in ClipRule.anchors or node.op_type in catalogue().single_ops


def _name(item: ir.Node | ir.Value) -> str:
    return item.name or (item.op_type if isinstance(item, ir.Node) else "?")


class ClipRule(Rule):
    """``Clip`` counts as an activation only as ReLU6 (min 0, max 6) or ReLU (min 0, no max)."""

    kinds, anchors = ("Clip(ReLU6)", "Clip(ReLU)"), frozenset({"Clip"})

    def pattern(self, node):
        return {"x": node.inputs[0], "nodes": [node]}

    def check(self, b):
        node = b["nodes"][0]
        if len(node.inputs) > 1:  # opset >= 11: bounds are inputs
            bounds = [node.inputs[i] if len(node.inputs) > i else None for i in (1, 2)]
            lo, hi = (scalar(v) if v is not None else None for v in bounds)
            if any(v is not None and s is None for v, s in zip(bounds, (lo, hi))):
                return "Clip bounds are not constants"
        else:
            lo_attr, hi_attr = node.attributes.get("min"), node.attributes.get("max")
            lo = lo_attr.as_float() if lo_attr is not None else None
            hi = hi_attr.as_float() if hi_attr is not None else None
        if not close(lo, 0.0) or not (hi is None or close(hi, 6.0)):
            return f"Clip(min={lo}, max={hi}) is a clamp, not ReLU6"
        b["kind"] = "Clip(ReLU6)" if hi is not None else "Clip(ReLU)"
        return None

    def build(self, b):
        return ActivationMatch(b["kind"], "op", b["x"], b["nodes"], b["nodes"][0])


class SingleOpRule(Rule):
    """Activations exported as one ONNX op: the catalogue's ``onnx_ops``."""

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(set(catalogue().single_ops.values()))

    @property
    def anchors(self):
        return catalogue().single_ops.keys()

    def pattern(self, node):
        if node.inputs[0] is None or is_const(node.inputs[0]):
            return f"{node.op_type} input is a constant"
        return {"x": node.inputs[0], "nodes": [node]}

    def build(self, b):
        node = b["nodes"][0]
        form = "op"
        if node.op_type == "Gelu":
            approx = node.attributes.get("approximate")
            form = f"op (approximate={approx.as_string() if approx is not None else 'none'})"
        return ActivationMatch(catalogue().single_ops[node.op_type], form, b["x"], [node], node)


SINGLE_RULES: tuple[Rule, ...] = (ClipRule(), SingleOpRule())  # after CompositeRule, in this order


def match_activations(graph: ir.Graph) -> tuple[list[ActivationMatch], dict[ir.Node, NoMatch]]:
    """All activations in ``graph`` and, for each catalogue op left unmatched, why (:class:`NoMatch`).

    Spelled activations first, found by what they compute (:class:`CompositeRule`); they claim their nodes,
    so the Tanh inside a GELU is never a site of its own. Then the catalogue's single ops that no
    composite claimed, unless they sit inside an expression of their own input that computes no
    catalogue function (reported with the closest one, never guessed)."""
    found, unresolved = composites(graph)
    matches = [_composite_match(c) for c in found]
    claimed = {id(n) for c in found for n in c.nodes}
    reasons: dict[ir.Node, NoMatch] = {u.node: NoMatch(CompositeRule, u.node, u.reason) for u in unresolved
                                       if id(u.node) not in claimed}
    nodes = list(graph)
    for node in nodes:
        if id(node) in claimed or node in reasons or node.domain not in ("", "ai.onnx"):
            continue
        for rule in SINGLE_RULES:
            if node.op_type in rule.anchors:
                result = rule.match(node)
                if isinstance(result, ActivationMatch):
                    matches.append(result)
                    claimed.add(id(node))
                else:
                    reasons[node] = result
                break
    order = {id(n): i for i, n in enumerate(nodes)}
    matches.sort(key=lambda m: order[id(m.output_node)])
    leftover = {n: r for n, r in reasons.items() if id(n) not in claimed and (_single(n) or r.rule is CompositeRule)}
    return matches, leftover
