"""torch.fx calls as elementwise ops in ONNX's vocabulary, so activations spelled in PyTorch code
(``x * torch.sigmoid(1.702 * x)``, ``0.5 * x * (1 + torch.tanh(...))``, ``x * F.relu6(x + 3) / 6``) are
found by what they compute, by the same finder as ONNX graphs (:mod:`mstransform.passes.sites.computed`).

Calls are read by name, the same for a ``symbolic_trace`` graph (``operator.mul``, ``torch.sigmoid``,
``F.gelu``, tensor methods, modules) and a ``torch.export`` graph (``aten.mul.Tensor``); a call whose
arguments this table cannot read (a ``div`` with a rounding mode, an ``add`` with ``alpha``) is not
elementwise here, so no activation is ever read into it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from mstransform.passes.sites.computed import Elementwise

MISSING = object()

# call name -> (ONNX op, the positional parameters after the operands and their defaults, operand count).
# The parameters become the op's attributes (or a Clip's bounds).
UNARY = {"neg": "Neg", "abs": "Abs", "reciprocal": "Reciprocal", "sqrt": "Sqrt", "exp": "Exp", "log": "Log",
         "log1p": "Log1p", "expm1": "Expm1", "erf": "Erf", "special_erf": "Erf", "tanh": "Tanh", "sigmoid": "Sigmoid",
         "relu": "Relu", "softsign": "Softsign", "silu": "Silu", "hardswish": "HardSwish", "mish": "Mish",
         "selu": "Selu", "dropout": "Identity", "clone": "Identity", "contiguous": "Identity", "alias": "Identity",
         "identity": "Identity"}
BINARY = {"add": "Add", "iadd": "Add", "sub": "Sub", "isub": "Sub", "mul": "Mul", "imul": "Mul", "truediv": "Div",
          "div": "Div", "itruediv": "Div", "pow": "Pow", "maximum": "Max", "minimum": "Min", "gt": "Greater",
          "lt": "Less", "ge": "GreaterOrEqual", "le": "LessOrEqual"}
# name -> (op, [(parameter, keyword, default)]) for unary calls with parameters
PARAMETRIC = {
    "leaky_relu": ("LeakyRelu", [("alpha", "negative_slope", 0.01)]),
    "elu": ("Elu", [("alpha", "alpha", 1.0)]),
    "celu": ("Celu", [("alpha", "alpha", 1.0)]),
    "gelu": ("Gelu", [("approximate", "approximate", "none")]),
    "hardsigmoid": ("HardSigmoid", []),
    "softplus": ("Softplus", [("beta", "beta", 1.0), ("threshold", "threshold", 20.0)]),
}
COPIES = ("lift_fresh_copy", "detach", "clone", "_to_copy", "to", "contiguous")  # a constant stays one through these
CLIPS = {"clamp": (None, None), "clip": (None, None), "hardtanh": (-1.0, 1.0), "relu6": (0.0, 6.0)}
MODULES = {nn.ReLU: "Relu", nn.Sigmoid: "Sigmoid", nn.Tanh: "Tanh", nn.SiLU: "Silu", nn.Hardswish: "HardSwish",
           nn.Mish: "Mish", nn.SELU: "Selu", nn.Softsign: "Softsign", nn.Dropout: "Identity", nn.Identity: "Identity"}


def call_name(node: fx.Node) -> str:
    """A call's name, the same for a builtin, a torch function, a tensor method and an ATen overload."""
    t = node.target
    if node.op == "call_method":
        return t
    packet = getattr(t, "overloadpacket", None)
    name = packet.__name__ if packet is not None else getattr(t, "__name__", str(t))
    return name.rstrip("_") if name.endswith("_") and not name.startswith("_") else name


class FxElementwise:
    """One ``GraphModule`` seen as elementwise ops (:class:`~mstransform.passes.sites.computed.ElementwiseGraph`)."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm

    def nodes(self):
        return list(self.gm.graph.nodes)

    def _operand(self, a):
        if isinstance(a, fx.Node):
            if a.op == "get_attr":
                t = self._attr(a.target)
                return t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else MISSING
            if a.op in ("call_function", "call_method") and call_name(a) in COPIES and a.args:
                inner = self._operand(a.args[0])  # torch.export lifts a constant: lift_fresh_copy, detach
                return inner if isinstance(inner, (np.ndarray, np.generic)) else a
            return a
        if isinstance(a, bool):
            return np.bool_(a)
        if isinstance(a, (int, float)):
            return np.float64(a)
        if isinstance(a, torch.Tensor) and a.numel() >= 1:
            return a.detach().cpu().double().numpy()
        return MISSING

    def _attr(self, target: str):
        obj = self.gm
        for part in target.split("."):
            obj = getattr(obj, part, None)
        return obj

    def elementwise(self, node: fx.Node) -> Elementwise | None:
        if node.op == "call_module":
            return self._module(node)
        if node.op not in ("call_function", "call_method"):
            return None
        name = call_name(node)
        args, kw = list(node.args), dict(node.kwargs)
        kw.pop("inplace", None)
        if not args:
            return None
        x = self._operand(args[0])
        if x is MISSING:
            return None
        if name in UNARY:
            if name == "dropout" and kw.get("training", args[2] if len(args) > 2 else False):
                return None
            return Elementwise(UNARY[name], (x,))
        if name in ("add", "sub", "iadd", "isub") and kw.pop("alpha", 1) != 1:
            return None
        if name == "div" and kw.get("rounding_mode") is not None:
            return None
        if name == "rsub":
            other = self._operand(args[1] if len(args) > 1 else kw.get("other", MISSING))
            return None if other is MISSING or kw.get("alpha", 1) != 1 else Elementwise("Sub", (other, x))
        if name in BINARY:
            other = self._operand(args[1] if len(args) > 1 else kw.get("other", kw.get("exponent", MISSING)))
            return None if other is MISSING else Elementwise(BINARY[name], (x, other))
        if name in CLIPS:
            lo_default, hi_default = CLIPS[name]
            keys = ("min_val", "max_val") if name == "hardtanh" else ("min", "max")
            lo = args[1] if len(args) > 1 else kw.get(keys[0], lo_default)
            hi = args[2] if len(args) > 2 else kw.get(keys[1], hi_default)
            if name == "relu6":
                lo, hi = 0.0, 6.0
            bounds = [None if b is None else self._operand(b) for b in (lo, hi)]
            return None if MISSING in bounds else Elementwise("Clip", (x, *bounds))
        if name == "where":
            ops = [self._operand(a) for a in args[:3]]
            return None if len(ops) < 3 or MISSING in ops else Elementwise("Where", tuple(ops))
        if name in PARAMETRIC:
            op, params = PARAMETRIC[name]
            attrs = {}
            for i, (attr, key, default) in enumerate(params, start=1):
                attrs[attr] = args[i] if len(args) > i else kw.get(key, default)
            if op == "Softplus":
                return Elementwise(op, (x,)) if attrs["beta"] == 1 else None
            if op == "HardSigmoid":
                attrs = {"alpha": 1 / 6, "beta": 0.5}
            return Elementwise(op, (x,), attrs)
        return None

    def _module(self, node: fx.Node) -> Elementwise | None:
        mod = self.gm.get_submodule(node.target)
        x = self._operand(node.args[0]) if node.args else MISSING
        if x is MISSING:
            return None
        if isinstance(mod, nn.ReLU6):
            return Elementwise("Clip", (x, np.float64(0.0), np.float64(6.0)))
        if isinstance(mod, nn.Hardtanh):
            return Elementwise("Clip", (x, np.float64(mod.min_val), np.float64(mod.max_val)))
        if isinstance(mod, nn.Dropout) and mod.training:
            return None
        op = MODULES.get(type(mod))
        if op is not None:
            return Elementwise(op, (x,))
        if isinstance(mod, nn.GELU):
            return Elementwise("Gelu", (x,), {"approximate": mod.approximate})
        if isinstance(mod, nn.LeakyReLU):
            return Elementwise("LeakyRelu", (x,), {"alpha": mod.negative_slope})
        if isinstance(mod, (nn.ELU, nn.CELU)):
            return Elementwise("Elu" if isinstance(mod, nn.ELU) else "Celu", (x,), {"alpha": mod.alpha})
        if isinstance(mod, nn.Hardsigmoid):
            return Elementwise("HardSigmoid", (x,), {"alpha": 1 / 6, "beta": 0.5})
        if isinstance(mod, nn.Softplus) and mod.beta == 1:
            return Elementwise("Softplus", (x,))
        return None

    def output(self, node: fx.Node) -> fx.Node:
        return node

    def producer(self, value: fx.Node) -> fx.Node | None:
        return value if value.op in ("call_function", "call_method", "call_module") else None

    def users(self, value: fx.Node) -> list[fx.Node]:
        return list(value.users)

    def is_graph_output(self, value: fx.Node) -> bool:
        return any(u.op == "output" for u in value.users)
