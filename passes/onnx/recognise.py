"""Recognise sparsify operators in any ONNX graph by their structure, not their names.

``Where(Less(Abs(Sub(x, c)), t), c, x)`` with constant ``c`` and ``t`` (what the pass inserts
and what ``torch.onnx.export`` of a :class:`~mstransform.passes.fx.module.MeanSparse` module
emits), the bool-free ``Add(Mul(c, m), Mul(x, Sub(1, m)))`` with
``m = Relu(Sign(Sub(t, Abs(Sub(x, c)))))``, and ``Where(And(Greater(x, low), Less(x, high)), c, x)``
whose bounds are exactly those of some threshold around ``c`` (that threshold is what it reports).
The verifier, the differentiable twin and the TensorRT checker all find operators through this,
so a renamed node cannot hide one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from mstransform.passes.graph.values import const_array, operand_orders
from mstransform.passes.onnx.bounds import bounds_threshold, exclusive_bounds


@dataclass(frozen=True)
class SparsifyOp:
    x: ir.Value  # the guarded tensor
    y: ir.Value  # the operator's output
    center: np.ndarray  # as stored (pre-shaped for broadcasting)
    threshold: np.ndarray
    nodes: tuple[ir.Node, ...]
    constants: tuple[ir.Value, ...]  # the center and threshold values (bounds form: center, low, high)


def _producer(value, op: str):
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op else None


def _abs_of_sub(value) -> tuple[ir.Value, ir.Value, list[ir.Node]] | None:
    """``Abs(Sub(x, c))`` with a constant ``c`` -> (x, c value, nodes)."""
    ab = _producer(value, "Abs")
    sub = _producer(ab.inputs[0], "Sub") if ab is not None else None
    if sub is None or const_array(sub.inputs[1]) is None or const_array(sub.inputs[0]) is not None:
        return None
    return sub.inputs[0], sub.inputs[1], [sub, ab]


def _where_form(where: ir.Node) -> SparsifyOp | None:
    cond, c_out, x = where.inputs
    less = _producer(cond, "Less")
    if less is None or const_array(less.inputs[1]) is None:
        return None
    found = _abs_of_sub(less.inputs[0])
    if found is None or found[0] is not x:
        return None
    _, c, nodes = found
    center = const_array(c)
    if const_array(c_out) is None or not np.array_equal(const_array(c_out), center):
        return None
    t = less.inputs[1]
    return SparsifyOp(x, where.outputs[0], center, const_array(t), (*nodes, less, where), (c, t))


def _bounds_form(where: ir.Node) -> SparsifyOp | None:
    """``Where(And(Greater(x, low), Less(x, high)), c, x)`` with bounds that some threshold around ``c`` makes."""
    cond, c, x = where.inputs
    both = _producer(cond, "And")
    if both is None or const_array(c) is None or const_array(x) is not None:
        return None
    for a, b in operand_orders(both):
        above, below = _producer(a, "Greater"), _producer(b, "Less")
        if above is None or below is None or above.inputs[0] is not x or below.inputs[0] is not x:
            continue
        center, low, high = const_array(c), const_array(above.inputs[1]), const_array(below.inputs[1])
        if low is None or high is None or not (center.shape == low.shape == high.shape):
            continue
        if not (center.dtype == low.dtype == high.dtype) or center.dtype.kind not in "fV":
            continue
        t = bounds_threshold(center, low, high)
        again = exclusive_bounds(center, t, center.dtype)
        if not (np.array_equal(again[0], low) and np.array_equal(again[1], high)):
            continue  # bounds no threshold makes: not this operator
        return SparsifyOp(x, where.outputs[0], center, t, (above, below, both, where),
                          (c, above.inputs[1], below.inputs[1]))
    return None


def _float_form(add: ir.Node) -> SparsifyOp | None:
    for left, right in operand_orders(add):
        cm, xk = _producer(left, "Mul"), _producer(right, "Mul")
        if cm is None or xk is None:
            continue
        for c, m in operand_orders(cm):
            mask = _producer(m, "Relu")
            sign = _producer(mask.inputs[0], "Sign") if mask is not None else None
            gap = _producer(sign.inputs[0], "Sub") if sign is not None else None
            if gap is None or const_array(c) is None or const_array(gap.inputs[0]) is None:
                continue
            found = _abs_of_sub(gap.inputs[1])
            for x, keep_v in operand_orders(xk):
                keep = _producer(keep_v, "Sub")
                if (found is None or found[0] is not x or keep is None or keep.inputs[1] is not m
                        or not np.all(const_array(keep.inputs[0]) == 1)):
                    continue
                t = gap.inputs[0]
                nodes = (*found[2], gap, sign, mask, keep, cm, xk, add)
                return SparsifyOp(x, add.outputs[0], const_array(found[1]), const_array(t), nodes, (found[1], t))
    return None


def _operator_ending_at(node: ir.Node) -> SparsifyOp | None:
    if node.op_type == "Where" and len(node.inputs) == 3:
        return _where_form(node) or _bounds_form(node)
    if node.op_type == "Add" and len(node.inputs) == 2:
        return _float_form(node)
    return None


def find_sparsify_op(value: ir.Value) -> SparsifyOp | None:
    """The sparsify operator whose output ``value`` is, if it is one."""
    node = value.producer()
    return None if node is None else _operator_ending_at(node)


def guarded(value: ir.Value) -> bool:
    """Whether ``value`` is already guarded: it is a sparsify operator's output (an activation's site), or
    every reader of it outside one operator is gone (a residual site, whose operator reads it itself)."""
    if find_sparsify_op(value) is not None:
        return True
    for use in value.uses():
        ends = [use.node] + [u.node for out in use.node.outputs for u in out.uses()]
        for node in ends:
            op = _operator_ending_at(node)
            if op is not None and op.x is value:
                outside = [u for u in value.uses() if u.node not in op.nodes]
                return not outside
    return False


def find_sparsify_ops(graph: ir.Graph) -> list[SparsifyOp]:
    """Every sparsify operator of ``graph``, in graph order."""
    return [op for op in map(_operator_ending_at, graph) if op is not None]
