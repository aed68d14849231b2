"""The activation catalogue: one rule per activation form, as exported by torch and others.

Each rule is a pattern + check (in the spirit of onnxscript's rewrite rules): ``match``
starts from an anchor node and returns an :class:`ActivationMatch` or, when the
pattern does not hold, a string that says why. Composite rules (GELU decompositions,
SiLU, decomposed Mish and HardSwish) run first and claim their nodes, so a ``Tanh``
inside a GELU is not reported again as a plain Tanh.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx_ir as ir

from mstransform.passes._ir import close, const_array, is_const, only_consumer, other_input, scalar


@dataclass
class ActivationMatch:
    """An activation found in the graph.

    ``feed`` is the tensor entering the activation (where the operator goes);
    ``readers`` are the (node, input index) pairs of the pattern that read it and must
    see the sparsified tensor; ``output_node`` produces the activation's result and
    names the site.
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


Result = ActivationMatch | str

SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _walk_gelu_tail(start: ir.Value, x: ir.Value, nodes: list[ir.Node]) -> ir.Node | str:
    """Follow ``Add(1)``, ``Mul(0.5)`` and ``Mul(x)`` after the Erf/Tanh, in any order.

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


class Rule:
    """One activation form: ``anchors`` are the op types a match starts from."""

    kind: str = ""
    anchors: frozenset[str] = frozenset()

    def match(self, node: ir.Node) -> Result:  # pragma: no cover - interface
        raise NotImplementedError


class GeluErfRule(Rule):
    """Exact GELU as exported at opset <= 19: ``x * 0.5 * (1 + Erf(x / sqrt(2)))``."""

    kind, anchors = "Gelu", frozenset({"Erf"})

    def match(self, node):
        pre = node.inputs[0].producer()
        if pre is None:
            return "Erf input is a graph input, not x/sqrt(2)"
        if pre.op_type == "Div" and close(scalar(pre.inputs[1]), SQRT2):
            x = pre.inputs[0]
        elif pre.op_type == "Mul" and any(close(scalar(v), 1 / SQRT2) for v in pre.inputs):
            x = next(v for v in pre.inputs if not close(scalar(v), 1 / SQRT2))
        else:
            return f"Erf input comes from {pre.op_type} '{pre.name}', not x/sqrt(2)"
        nodes = [pre, node]
        last = _walk_gelu_tail(node.outputs[0], x, nodes)
        if isinstance(last, str):
            return "Erf is not part of an exact GELU: " + last
        return ActivationMatch(self.kind, "erf decomposition", x, nodes, last)


class GeluTanhRule(Rule):
    """Tanh-approximated GELU: ``0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))``."""

    kind, anchors = "Gelu", frozenset({"Tanh"})

    def match(self, node):
        scale = node.inputs[0].producer()
        if scale is None or scale.op_type != "Mul":
            return "Tanh input is not scaled by sqrt(2/pi)"
        inner = next((v for v in scale.inputs if not close(scalar(v), SQRT_2_OVER_PI)), None)
        if inner is None or len([v for v in scale.inputs if close(scalar(v), SQRT_2_OVER_PI)]) != 1:
            return "Tanh input is not scaled by sqrt(2/pi)"
        add = inner.producer()
        if add is None or add.op_type != "Add":
            return "Tanh input is not sqrt(2/pi)*(x + 0.044715x^3)"
        for x, cubic in (add.inputs, reversed(add.inputs)):
            cubic_nodes = _cubic_term(cubic, x)
            if cubic_nodes is not None:
                break
        else:
            return "no 0.044715*x^3 term beside x inside the Tanh"
        nodes = [*cubic_nodes, add, scale, node]
        last = _walk_gelu_tail(node.outputs[0], x, nodes)
        if isinstance(last, str):
            return "Tanh is not part of a tanh GELU: " + last
        return ActivationMatch(self.kind, "tanh decomposition", x, nodes, last)


def _cubic_term(value: ir.Value, x: ir.Value) -> list[ir.Node] | None:
    """Nodes computing ``0.044715 * x^3`` from ``x`` (Pow or Mul chains), or None."""
    node = value.producer()
    if node is None or node.op_type != "Mul":
        return None
    coeff = [v for v in node.inputs if close(scalar(v), 0.044715)]
    if len(coeff) != 1:
        return None
    cube = next(v for v in node.inputs if v is not coeff[0])
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


class SoftplusRule(Rule):
    """Softplus, its dynamo form ``Where(x > t, x, Softplus(x))``, and Mish as ``x*Tanh(Softplus(x))``."""

    kind, anchors = "Softplus", frozenset({"Softplus"})

    def match(self, node):
        x = node.inputs[0]
        nodes, out = [node], node.outputs[0]
        where = only_consumer(out)
        if where is not None and where.op_type == "Where" and where.inputs[2] is out and where.inputs[1] is x:
            cond = where.inputs[0].producer()
            if cond is not None and cond.op_type == "Greater" and cond.inputs[0] is x:
                nodes += [cond, where]
                out = where.outputs[0]
        tanh = only_consumer(out)
        if tanh is not None and tanh.op_type == "Tanh":
            mul = only_consumer(tanh.outputs[0])
            if mul is not None and mul.op_type == "Mul" and other_input(mul, tanh.outputs[0]) is x:
                return ActivationMatch("Mish", "Softplus/Tanh/Mul", x, [*nodes, tanh, mul], mul)
        return ActivationMatch(self.kind, "op" if len(nodes) == 1 else "Softplus/Greater/Where", x, nodes, nodes[-1])


class SelfGateRule(Rule):
    """``x * Sigmoid(x)`` (SiLU/Swish) and ``x * HardSigmoid(x)`` (HardSwish).

    A gate whose output scales a *different* tensor is not matched here; it stays a
    plain Sigmoid/HardSigmoid and the site finder decides whether it sits in a
    Squeeze-and-Excitation branch.
    """

    anchors = frozenset({"Sigmoid", "HardSigmoid"})

    def match(self, node):
        x, out = node.inputs[0], node.outputs[0]
        mul = only_consumer(out)
        if mul is None or mul.op_type != "Mul":
            return f"{node.op_type} output is not multiplied by its own input"
        if other_input(mul, out) is not x:
            return f"{node.op_type} output gates another tensor in '{mul.name}'"
        if node.op_type == "Sigmoid":
            return ActivationMatch("SiLU", "Sigmoid*Mul", x, [node, mul], mul)
        alpha = node.attributes.get("alpha")
        beta = node.attributes.get("beta")
        a = alpha.as_float() if alpha is not None else 0.2
        b = beta.as_float() if beta is not None else 0.5
        if not (close(a, 1 / 6) and close(b, 0.5)):
            return f"HardSigmoid(alpha={a:g}, beta={b:g}) * x is not HardSwish"
        return ActivationMatch("HardSwish", "HardSigmoid*Mul", x, [node, mul], mul)


class ClipRule(Rule):
    """``Clip`` counts as an activation only as ReLU6 (min 0, max 6) or ReLU (min 0, no max)."""

    kind, anchors = "Clip(ReLU6)", frozenset({"Clip"})

    def match(self, node):
        if len(node.inputs) > 1:  # opset >= 11: bounds are inputs
            lo = scalar(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
            hi = scalar(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
            if (node.inputs[1] is not None and lo is None) or (len(node.inputs) > 2 and node.inputs[2] is not None and hi is None):
                return "Clip bounds are not constants"
        else:
            lo_attr, hi_attr = node.attributes.get("min"), node.attributes.get("max")
            lo = lo_attr.as_float() if lo_attr is not None else None
            hi = hi_attr.as_float() if hi_attr is not None else None
        if close(lo, 0.0) and close(hi, 6.0):
            return ActivationMatch("Clip(ReLU6)", "op", node.inputs[0], [node], node)
        if close(lo, 0.0) and hi is None:
            return ActivationMatch("Clip(ReLU)", "op", node.inputs[0], [node], node)
        return f"Clip(min={lo}, max={hi}) is a clamp, not ReLU6"


class SingleOpRule(Rule):
    """Activations exported as one ONNX op."""

    anchors = frozenset({
        "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "HardSigmoid", "HardSwish",
        "Softplus", "Mish", "Tanh", "Sigmoid", "ThresholdedRelu", "Softsign",
    })

    def match(self, node):
        form = "op"
        if node.op_type == "Gelu":
            approx = node.attributes.get("approximate")
            form = f"op (approximate={approx.as_string() if approx is not None else 'none'})"
        if node.inputs[0] is None or is_const(node.inputs[0]):
            return f"{node.op_type} input is a constant"
        return ActivationMatch(node.op_type, form, node.inputs[0], [node], node)


COMPOSITE_RULES: tuple[Rule, ...] = (GeluErfRule(), GeluTanhRule(), SoftplusRule(), SelfGateRule())
SINGLE_RULES: tuple[Rule, ...] = (ClipRule(), SingleOpRule())
# Op types that, left unmatched, deserve a line saying why (Erf only appears in GELU).
REPORTED_OPS = SingleOpRule.anchors | ClipRule.anchors | {"Erf"}


def match_activations(graph: ir.Graph) -> tuple[list[ActivationMatch], dict[ir.Node, str]]:
    """All activations in ``graph`` and, for each catalogue op left unmatched, the reason."""
    matches: list[ActivationMatch] = []
    claimed: set[int] = set()
    reasons: dict[ir.Node, str] = {}
    nodes = list(graph)
    for rule in COMPOSITE_RULES:
        for node in nodes:
            if node.op_type not in rule.anchors or id(node) in claimed or node.domain not in ("", "ai.onnx"):
                continue
            result = rule.match(node)
            if isinstance(result, ActivationMatch) and not any(id(n) in claimed for n in result.nodes):
                matches.append(result)
                claimed.update(id(n) for n in result.nodes)
            elif isinstance(result, str):
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
