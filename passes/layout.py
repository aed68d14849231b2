"""Channel-axis inference for a site tensor, from its rank and the ops that produced it.

Conv features are (N, C, H, W) -> axis 1; token features (N, L, C) and plain features
(N, C) -> last axis; a tensor that went through ``Transpose(perm=[0,2,3,1])`` is
channels-last -> last axis. The answer carries the rule that decided it, so the site
table can show it and a user can override it per site.
"""
from __future__ import annotations

import onnx_ir as ir

from mstransform.passes._ir import is_const

CONV_LIKE = {"Conv", "ConvTranspose", "BatchNormalization", "MaxPool", "AveragePool", "InstanceNormalization",
             "GlobalAveragePool", "LpPool", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth"}
TOKEN_LIKE = {"MatMul", "Gemm", "LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization"}
# Ops that keep the layout of their (first non-constant) input.
LAYOUT_KEEPING = {"Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu",
                  "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Mish", "Clip", "Erf", "Where",
                  "Identity", "Cast", "Dropout", "Pow", "Abs", "Neg", "Sqrt", "Less", "Greater", "Min", "Max"}


def infer_axis(value: ir.Value, rank: int | None) -> tuple[int | None, str]:
    """The channel axis of ``value`` (non-negative) and the rule that chose it."""
    if rank is None:
        return None, "rank unknown"
    if rank <= 2:
        return rank - 1, "features (N,C)"
    seen = 0
    frontier = [value]
    while frontier and seen < 16:
        v = frontier.pop(0)
        node = v.producer()
        seen += 1
        if node is None:
            continue
        op = node.op_type
        if op == "Transpose":
            perm = node.attributes.get("perm")
            perm = list(perm.as_ints()) if perm is not None else None
            if perm is not None and len(perm) == rank and perm[0] == 0 and perm[-1] == 1 and rank >= 4:
                return rank - 1, "channels-last (after Transpose)"
            if perm == [0, 2, 1]:
                return 2, "tokens (N,L,C) after Transpose"
            break
        if op in CONV_LIKE:
            return 1, f"conv (N,C,{','.join('HWD'[:rank - 2])})" if rank <= 5 else "conv (N,C,...)"
        if op in TOKEN_LIKE:
            return rank - 1, "tokens (N,L,C)" if rank == 3 else "last axis (after MatMul/LayerNorm)"
        if op in LAYOUT_KEEPING:
            frontier.extend(i for i in node.inputs if i is not None and not is_const(i))
            continue
        break
    if rank == 3:
        return 2, "tokens (N,L,C) by rank"
    return 1, "conv (N,C,...) by rank"
