"""Small read-only helpers over ``onnx_ir`` values used by the pattern rules."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir


VALUE_KEEPING = {"Identity", "Cast", "CastLike"}  # the number survives these
SHAPE_ONLY = VALUE_KEEPING | {"Transpose", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand"}


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The constant behind ``value`` (initializer, Constant node, or Identity/Cast of one), else None."""
    for _ in range(4):
        if value is None:
            return None
        try:
            tensor = ir.convenience.get_const_tensor(value)
        except ValueError:
            return None
        if tensor is not None:
            return tensor.numpy()
        producer = value.producer()
        if producer is None or producer.op_type not in VALUE_KEEPING:
            return None
        value = producer.inputs[0]
    return None


def is_const(value: ir.Value | None, depth: int = 4) -> bool:
    """True when ``value`` is computed from constants only (through layout ops like Transpose)."""
    if value is None:
        return False
    if value.is_initializer() or const_array(value) is not None:
        return True
    producer = value.producer()
    if depth == 0 or producer is None or producer.op_type not in SHAPE_ONLY:
        return False
    return all(is_const(v, depth - 1) for v in producer.inputs if v is not None)


def scalar(value: ir.Value | None) -> float | None:
    """The single number held by a constant ``value`` (any shape with one element), else None."""
    arr = const_array(value)
    if arr is None or arr.size != 1:
        return None
    return float(arr.reshape(()))


def close(a: float | None, b: float, tol: float = 1e-3) -> bool:
    return a is not None and abs(a - b) <= tol * max(1.0, abs(b))


def other_input(node: ir.Node, value: ir.Value) -> ir.Value | None:
    """For a binary node reading ``value``, the other operand."""
    return next((b for a, b in operand_orders(node) if a is value), None)


COMMUTATIVE = {"Add", "Mul", "Max", "Min", "And", "Or", "Equal"}


def operand_orders(node: ir.Node) -> list[tuple[ir.Value, ir.Value]]:
    """The (first, second) operand pairs a pattern may bind: both orders for a commutative op.

    Rules write one operand order and match the other through this, as onnxscript's rewriter
    commutes patterns instead of spelling out both.
    """
    if len(node.inputs) != 2:
        return []
    a, b = node.inputs
    return [(a, b), (b, a)] if node.op_type in COMMUTATIVE else [(a, b)]


def static_shape(value: ir.Value) -> tuple[int | str | None, ...] | None:
    """The value's shape as ints (static dims) and strings (symbolic dims), or None when unknown."""
    if value.shape is None:
        return None
    dims = []
    for d in value.shape:
        if isinstance(d, int):
            dims.append(d)
        elif d is not None and getattr(d, "value", None) is not None:
            dims.append(str(d.value))
        else:
            dims.append(None)
    return tuple(dims)
