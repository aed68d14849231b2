"""ONNX pattern rules: one rule per activation form, as exported by torch and others.

Each rule is pattern + check + match, in the spirit of onnxscript's rewrite rules: ``pattern``
binds the wiring from an anchor node (op types and edges, commutative operands in either
order), ``check`` tests constants and attributes, and both return a reason when the rule does
not hold. A rule's ``kind`` is authoritative: it must name an entry of the activation
catalogue (:mod:`mstransform.passes.catalogue`), and the match carries exactly that kind.
Composite rules (GELU decompositions, Mish, SiLU, HardSwish) run first and claim their nodes,
so a ``Tanh`` inside a GELU is not reported again as a plain Tanh.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from mstransform.passes.catalogue import KINDS, kind as catalogue_kind
from mstransform.passes._ir import close, is_const, only_consumer, operand_orders, other_input, scalar


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

SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _walk_gelu_tail(start: ir.Value, x: ir.Value, nodes: list[ir.Node]) -> ir.Node | str:
    """Follow ``Add(1)``, ``Mul(0.5)`` and ``Mul(x)`` after the Erf/Tanh, in any order and with
    commuted operands.

    Returns the last node of the GELU or the reason the tail does not fit.
    """
    cur, seen = start, set()
    last = None
    while seen != {"add1", "half", "mulx"}:
        node = only_consumer(cur)
        if node is None:
            return f"'{cur.name}' has several readers before the GELU tail completed (found {sorted(seen)})"
        other = other_input(node, cur)
        if node.op_type == "Add" and close(scalar(other), 1.0) and "add1" not in seen:
            seen.add("add1")
        elif node.op_type == "Mul" and other is x and "mulx" not in seen:
            seen.add("mulx")
        elif node.op_type == "Mul" and close(scalar(other), 0.5) and "half" not in seen:
            seen.add("half")
        elif node.op_type == "Mul" and other is not None and _is_half_of(other, x) and not seen & {"half", "mulx"}:
            nodes.append(other.producer())
            seen |= {"half", "mulx"}
        else:
            return f"'{node.name}' ({node.op_type}) does not continue a GELU (found {sorted(seen)})"
        nodes.append(node)
        cur, last = node.outputs[0], node
    return last


def _is_half_of(value: ir.Value, x: ir.Value) -> bool:
    node = value.producer()
    if node is None or node.op_type != "Mul":
        return False
    other = other_input(node, x)
    return other is not None and close(scalar(other), 0.5)


Bindings = dict[str, Any]


class Rule:
    """One activation form. ``anchors`` are the op types a match starts from; ``kinds`` are the
    catalogue kinds the rule can produce (one for most rules)."""

    kinds: tuple[str, ...] = ()
    anchors: frozenset[str] = frozenset()
    form = "op"

    def __init_subclass__(cls):
        super().__init_subclass__()
        for k in cls.kinds:
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


class GeluErfRule(Rule):
    """Exact GELU as exported at opset <= 19: ``x * 0.5 * (1 + Erf(x / sqrt(2)))``."""

    kinds, anchors, form = ("Gelu",), frozenset({"Erf"}), "erf decomposition"

    def pattern(self, node):
        pre = node.inputs[0].producer()
        if pre is None or pre.op_type not in ("Div", "Mul"):
            return f"Erf input is not x/sqrt(2) (comes from {pre.op_type if pre else 'a graph input'})"
        orders = [(pre.inputs[0], pre.inputs[1])] if pre.op_type == "Div" else operand_orders(pre)
        for x, scale in orders:
            want = SQRT2 if pre.op_type == "Div" else 1 / SQRT2
            if close(scalar(scale), want):
                nodes = [pre, node]
                last = _walk_gelu_tail(node.outputs[0], x, nodes)
                if isinstance(last, str):
                    return "Erf is not part of an exact GELU: " + last
                return {"x": x, "nodes": nodes}
        return f"Erf input is {pre.op_type} by a constant other than sqrt(2)"


class GeluTanhRule(Rule):
    """Tanh-approximated GELU: ``0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))``."""

    kinds, anchors, form = ("Gelu",), frozenset({"Tanh"}), "tanh decomposition"

    def pattern(self, node):
        scale = node.inputs[0].producer()
        if scale is None or scale.op_type != "Mul":
            return "Tanh input is not scaled by sqrt(2/pi)"
        for inner, k in operand_orders(scale):
            add = inner.producer()
            if not close(scalar(k), SQRT_2_OVER_PI) or add is None or add.op_type != "Add":
                continue
            for x, cubic in operand_orders(add):
                cubic_nodes = _cubic_term(cubic, x)
                if cubic_nodes is not None:
                    nodes = [*cubic_nodes, add, scale, node]
                    last = _walk_gelu_tail(node.outputs[0], x, nodes)
                    if isinstance(last, str):
                        return "Tanh is not part of a tanh GELU: " + last
                    return {"x": x, "nodes": nodes}
            return "no 0.044715*x^3 term beside x inside the Tanh"
        return "Tanh input is not sqrt(2/pi)*(x + 0.044715x^3)"


def _cubic_term(value: ir.Value, x: ir.Value) -> list[ir.Node] | None:
    """Nodes computing ``0.044715 * x^3`` from ``x`` (Pow or Mul chains), or None."""
    node = value.producer()
    if node is None or node.op_type != "Mul":
        return None
    cube = next((c for c, k in operand_orders(node) if close(scalar(k), 0.044715)), None)
    if cube is None:
        return None
    nodes = [node]
    stack, seen_x = [cube], 0
    while stack:
        v = stack.pop()
        if v is x:
            seen_x += 1
            continue
        p = v.producer()
        if p is None or p.op_type not in ("Pow", "Mul") or len(nodes) > 4:
            return None
        nodes.append(p)
        if p.op_type == "Pow":
            if p.inputs[0] is not x or not close(scalar(p.inputs[1]), 3.0):
                return None
            seen_x += 3
        else:
            stack.extend(p.inputs)
    return nodes if seen_x == 3 else None


def _softplus_tail(node: ir.Node) -> list[ir.Node]:
    """Softplus and, in the dynamo form, the ``Where(x > threshold, x, Softplus(x))`` around it."""
    x, out = node.inputs[0], node.outputs[0]
    where = only_consumer(out)
    if where is not None and where.op_type == "Where" and where.inputs[2] is out and where.inputs[1] is x:
        cond = where.inputs[0].producer()
        if cond is not None and cond.op_type == "Greater" and cond.inputs[0] is x:
            return [node, cond, where]
    return [node]


class MishRule(Rule):
    """Mish as exported: ``x * Tanh(Softplus(x))`` (Softplus possibly in its dynamo Where form)."""

    kinds, anchors, form = ("Mish",), frozenset({"Softplus"}), "Softplus/Tanh/Mul"

    def pattern(self, node):
        x, nodes = node.inputs[0], _softplus_tail(node)
        tanh = only_consumer(nodes[-1].outputs[0])
        if tanh is None or tanh.op_type != "Tanh":
            return "Softplus is not followed by Tanh"
        mul = only_consumer(tanh.outputs[0])
        if mul is None or mul.op_type != "Mul" or other_input(mul, tanh.outputs[0]) is not x:
            return "Tanh(Softplus(x)) does not multiply x"
        return {"x": x, "nodes": [*nodes, tanh, mul]}


class SoftplusRule(Rule):
    """Softplus, as one op or in the dynamo exporter's ``Where(x > t, x, Softplus(x))`` form."""

    kinds, anchors = ("Softplus",), frozenset({"Softplus"})

    def pattern(self, node):
        return {"x": node.inputs[0], "nodes": _softplus_tail(node)}

    def build(self, b):
        form = "op" if len(b["nodes"]) == 1 else "Softplus/Greater/Where"
        return ActivationMatch("Softplus", form, b["x"], b["nodes"], b["nodes"][-1])


def _scaled_input(value: ir.Value, x: ir.Value | None) -> ir.Node | None:
    """The ``Mul(x, beta)`` (a scalar constant ``beta``) that produces ``value`` and nothing else reads, if any."""
    node = value.producer()
    if x is None or node is None or node.op_type != "Mul" or only_consumer(value) is None:
        return None
    other = other_input(node, x)
    return node if other is not None and x in node.inputs and scalar(other) is not None else None


class SelfGateRule(Rule):
    """``x * Sigmoid(x)`` (SiLU/Swish), ``x * Sigmoid(beta * x)`` (Swish with a scale, as Paddle exports it)
    and ``x * HardSigmoid(x)`` (HardSwish).

    A gate whose output scales a *different* tensor is not matched here; it stays a plain
    Sigmoid/HardSigmoid and the site finder decides whether it sits in a
    Squeeze-and-Excitation branch.
    """

    kinds, anchors = ("SiLU", "HardSwish"), frozenset({"Sigmoid", "HardSigmoid"})

    def pattern(self, node):
        x, out = node.inputs[0], node.outputs[0]
        mul = only_consumer(out)
        if mul is None or mul.op_type != "Mul":
            return f"{node.op_type} output is not multiplied by its own input"
        if other_input(mul, out) is x:
            return {"x": x, "nodes": [node, mul], "gate": node}
        x0 = other_input(mul, out)
        scaled = _scaled_input(x, x0)
        if node.op_type == "Sigmoid" and scaled is not None:  # Swish with beta: x0 * Sigmoid(beta * x0) (Paddle)
            return {"x": x0, "nodes": [scaled, node, mul], "gate": node}
        return f"{node.op_type} output gates another tensor in '{mul.name}'"

    def check(self, b):
        gate = b["gate"]
        if gate.op_type == "Sigmoid":
            return None
        a, beta = gate.attributes.get("alpha"), gate.attributes.get("beta")
        a = a.as_float() if a is not None else 0.2
        beta = beta.as_float() if beta is not None else 0.5
        if not (close(a, 1 / 6) and close(beta, 0.5)):
            return f"HardSigmoid(alpha={a:g}, beta={beta:g}) * x is not HardSwish"
        return None

    def build(self, b):
        sigmoid = b["gate"].op_type == "Sigmoid"
        form = ("Mul*Sigmoid*Mul (beta)" if len(b["nodes"]) == 3 else "Sigmoid*Mul") if sigmoid else "HardSigmoid*Mul"
        return ActivationMatch("SiLU" if sigmoid else "HardSwish", form, b["x"], b["nodes"], b["nodes"][-1])


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

    kinds = tuple(k.name for k in KINDS.values() if k.onnx_ops)
    anchors = frozenset(op for k in KINDS.values() for op in k.onnx_ops)
    _kind_of = {op: k.name for k in KINDS.values() for op in k.onnx_ops}

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
        return ActivationMatch(self._kind_of[node.op_type], form, b["x"], [node], node)


COMPOSITE_RULES: tuple[Rule, ...] = (GeluErfRule(), GeluTanhRule(), MishRule(), SoftplusRule(), SelfGateRule())
SINGLE_RULES: tuple[Rule, ...] = (ClipRule(), SingleOpRule())
# Op types that, left unmatched, deserve a line saying why (Erf only appears in GELU).
REPORTED_OPS = SingleOpRule.anchors | ClipRule.anchors | {"Erf"}


def match_activations(graph: ir.Graph) -> tuple[list[ActivationMatch], dict[ir.Node, NoMatch]]:
    """All activations in ``graph`` and, for each catalogue op left unmatched, why (:class:`NoMatch`)."""
    matches: list[ActivationMatch] = []
    claimed: set[int] = set()
    reasons: dict[ir.Node, NoMatch] = {}
    nodes = list(graph)
    for rule in COMPOSITE_RULES:
        for node in nodes:
            if node.op_type not in rule.anchors or id(node) in claimed or node.domain not in ("", "ai.onnx"):
                continue
            result = rule.match(node)
            if isinstance(result, ActivationMatch) and not any(id(n) in claimed for n in result.nodes):
                matches.append(result)
                claimed.update(id(n) for n in result.nodes)
            elif isinstance(result, NoMatch):
                reasons.setdefault(node, result)
    for node in nodes:
        if id(node) in claimed or node.domain not in ("", "ai.onnx"):
            continue
        for rule in SINGLE_RULES:
            if node.op_type in rule.anchors:
                result = rule.match(node)
                if isinstance(result, ActivationMatch):
                    matches.append(result)
                    claimed.add(id(node))
                    reasons.pop(node, None)
                else:
                    reasons[node] = result
                break
    order = {id(n): i for i, n in enumerate(nodes)}
    matches.sort(key=lambda m: order[id(m.output_node)])
    leftover = {n: r for n, r in reasons.items() if id(n) not in claimed and n.op_type in REPORTED_OPS}
    return matches, leftover
