"""A differentiable PyTorch twin of an ONNX graph, for gradient-based attacks.

The twin interprets the ONNX graph node by node with torch operations (weights become
frozen parameters), so attacks get gradients of the exact artifact that is deployed.
No converter package could be used here (onnx2torch and its forks require torchvision,
which drags in a multi-GB CUDA build), so this covers the operator set of exported
image classifiers and transformer blocks; an unknown op fails loudly by name.

Sparsify operators are found by their structure
(:func:`~mstransform.passes.onnx.recognise.find_sparsify_ops`) and run as units, so
``straight_through = True`` can give each one an identity backward (BPDA) while its forward
values stay exactly those of the graph. :mod:`mstransform.robustness.twin_check` proves the twin
is the deployed model before any attack runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir
import torch
import torch.nn as nn
import torch.nn.functional as F

from mstransform.core.activations import ACTIVATIONS
from mstransform.core.errors import ModelError
from mstransform.passes.onnx.recognise import find_sparsify_ops
from mstransform.passes.sites.onnx_rules import composites
from mstransform.robustness.twin_fusion import FUSED, fuse, torch_call


class _PassThrough(torch.autograd.Function):
    """Forward: ``value``; backward: the gradient goes to ``x`` unchanged (straight-through)."""

    @staticmethod
    def forward(ctx, value, x):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return None, grad


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads(attrs, rank):
    pads = list(attrs.get("pads", [0] * (2 * rank)))
    return pads[:rank], pads[rank:]


def _conv(x, w, b=None, **a):
    rank = w.ndim - 2
    begin, end = _pads(a, rank)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ModelError("Conv with auto_pad is not supported by the twin; re-export with explicit pads")
    if begin != end:
        x = F.pad(x, [p for pair in zip(reversed(begin), reversed(end)) for p in pair])
        begin = [0] * rank
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
    return fn(x, w, b, stride=a.get("strides", 1), padding=begin, dilation=a.get("dilations", 1),
              groups=a.get("group", 1))


def _gemm(a_, b_, c=None, **a):
    if a.get("transA", 0):
        a_ = a_.t()
    if a.get("transB", 0):
        b_ = b_.t()
    y = a.get("alpha", 1.0) * (a_ @ b_)
    return y if c is None else y + a.get("beta", 1.0) * c


def _pool(x, kind, **a):
    k = a["kernel_shape"]
    begin, end = _pads(a, len(k))
    if begin != end or a.get("ceil_mode", 0):
        raise ModelError(f"{kind} with asymmetric pads or ceil_mode is not supported by the twin")
    if kind == "MaxPool":
        return F.max_pool2d(x, k, a.get("strides", k), begin, a.get("dilations", 1))
    return F.avg_pool2d(x, k, a.get("strides", k), begin, count_include_pad=bool(a.get("count_include_pad", 0)))


def _reduce_mean(x, axes=None, **a):
    if axes is None:
        axes = a.get("axes")
    axes = list(range(x.ndim)) if axes is None else [int(v) for v in (axes.tolist() if torch.is_tensor(axes) else axes)]
    return x.mean(dim=axes, keepdim=bool(a.get("keepdims", 1)))


def _clip(x, lo=None, hi=None, **a):
    lo = a.get("min", lo) if lo is None else lo
    hi = a.get("max", hi) if hi is None else hi
    return torch.clamp(x, min=lo if lo is None or not torch.is_tensor(lo) else lo.item(),
                       max=hi if hi is None or not torch.is_tensor(hi) else hi.item())


def _reshape(x, shape, **a):
    shape = [int(s) for s in shape.tolist()]
    shape = [x.shape[i] if s == 0 and not a.get("allowzero", 0) else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _slice(x, starts, ends, axes=None, steps=None, **a):
    axes = list(range(len(starts))) if axes is None else axes.tolist()
    steps = [1] * len(axes) if steps is None else steps.tolist()
    idx = [slice(None)] * x.ndim
    for s, e, ax, st in zip(starts.tolist(), ends.tolist(), axes, steps):
        dim = x.shape[ax]
        s, e = max(-dim, min(s, dim)), max(-dim - 1, min(e, dim))
        idx[ax] = slice(s, e, st)
    return x[tuple(idx)]


def _split(x, split=None, **a):
    axis = a.get("axis", 0)
    if split is None:
        n = a.get("num_outputs")
        return torch.chunk(x, n, dim=axis)
    return torch.split(x, split.tolist(), dim=axis)


def _gather(x, i, **a):
    """ONNX Gather. One index (a 0-d tensor, as exports split packed q/k/v) is a view, whose backward is
    a copy into one slice; an index_select's backward is a scatter-add, several times slower."""
    axis = a.get("axis", 0) % x.ndim
    if i.ndim == 0:
        return x.select(axis, int(i) % x.shape[axis])
    return torch.index_select(x, axis, i.reshape(-1) % x.shape[axis]).reshape(x.shape[:axis] + i.shape
                                                                             + x.shape[axis + 1:])


def _layer_norm(x, w, b=None, **a):
    axis = a.get("axis", -1) % x.ndim
    return F.layer_norm(x, x.shape[axis:], w, b, a.get("epsilon", 1e-5))


def _hard_sigmoid(x, **a):
    return torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0, 1)


def _softmax(x, **a):
    return F.softmax(x, dim=a.get("axis", -1))


def _unsqueeze(x, axes=None, **a):
    axes = (a["axes"] if axes is None else axes.tolist())
    for ax in sorted(int(v) % (x.ndim + len(axes)) for v in axes):
        x = x.unsqueeze(ax)
    return x


def _squeeze(x, axes=None, **a):
    axes = a.get("axes") if axes is None else axes.tolist()
    if axes is None:
        return x.squeeze()
    for ax in sorted((int(v) % x.ndim for v in axes), reverse=True):
        x = x.squeeze(ax)
    return x


def _axis_index(axis: int, ndim: int) -> int:
    """An ONNX axis attribute in [-ndim, ndim] as a non-negative index."""
    return axis + ndim if axis < 0 else axis


def _transpose(x, **a):
    return x.permute(*a.get("perm", list(reversed(range(x.ndim)))))


CAST = {1: torch.float32, 10: torch.float16, 11: torch.float64, 7: torch.int64, 6: torch.int32, 9: torch.bool,
        16: torch.bfloat16}

OPS = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": torch.matmul, "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul,
    "Div": lambda a, b: a / b if a.is_floating_point() or b.is_floating_point() else torch.div(a, b, rounding_mode="floor"),
    "Pow": torch.pow, "Sqrt": torch.sqrt, "Erf": torch.erf, "Exp": torch.exp, "Log": torch.log, "Abs": torch.abs,
    "Neg": torch.neg, "Sign": torch.sign,
    # the catalogue's activations run their table's torch call; these two have none with ONNX's semantics
    **{op: torch_call(k.twin) for k in ACTIVATIONS if k.twin is not None for op in k.onnx_ops},
    "HardSigmoid": _hard_sigmoid, "PRelu": lambda x, s: torch.where(x >= 0, x, x * s), "Clip": _clip,
    "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge, "Equal": torch.eq,
    "Not": torch.logical_not, "And": torch.logical_and, "Or": torch.logical_or, "Where": torch.where,
    "Min": torch.minimum, "Max": torch.maximum,
    "Mod": lambda a, b, **k: torch.fmod(a, b) if k.get("fmod", 0) else torch.remainder(a, b),
    "BatchNormalization": lambda x, s, b, m, v, **a: F.batch_norm(x, m, v, s, b, False, 0.0, a.get("epsilon", 1e-5)),
    "LayerNormalization": _layer_norm, "GlobalAveragePool": lambda x: x.mean(dim=tuple(range(2, x.ndim)), keepdim=True),
    "GlobalMaxPool": lambda x: x.amax(dim=tuple(range(2, x.ndim)), keepdim=True),
    "ReduceMean": _reduce_mean, "MaxPool": lambda x, **a: _pool(x, "MaxPool", **a),
    "AveragePool": lambda x, **a: _pool(x, "AveragePool", **a),
    "Flatten": lambda x, **a: x.reshape(math.prod(x.shape[:_axis_index(a.get("axis", 1), x.ndim)]), -1),
    "Reshape": _reshape, "Transpose": _transpose, "Softmax": _softmax, "Identity": lambda x: x,
    "Dropout": lambda x, *r, **a: x, "Cast": lambda x, **a: x.to(CAST[a["to"]]),
    "CastLike": lambda x, y: x.to(y.dtype),
    "Shape": lambda x, **a: torch.tensor(x.shape[a.get("start", 0):a.get("end", None)], dtype=torch.int64),
    "Gather": _gather,
    "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Concat": lambda *xs, **a: torch.cat(xs, dim=a["axis"]),
    "Slice": _slice, "Split": _split, "Expand": lambda x, s: x.expand(torch.broadcast_shapes(x.shape, tuple(s.tolist()))),
    "ConstantOfShape": lambda s, **a: torch.full(tuple(s.tolist()), float(a["value"].reshape(-1)[0])
                                                 if "value" in a else 0.0),
}

RUN = {**OPS, **FUSED}  # what the twin's program runs: ONNX ops and the fused chains (twin_fusion)

@dataclass
class Unit:
    """One sparsify operator of the graph, run by the twin as a whole."""

    x: str
    y: str
    center: torch.Tensor  # pre-shaped for broadcasting, as stored in the model
    threshold: torch.Tensor

    def __call__(self, x: torch.Tensor, straight_through: bool = False) -> torch.Tensor:
        c = self.center.to(device=x.device, dtype=x.dtype)
        t = self.threshold.to(device=x.device, dtype=x.dtype)
        y = torch.where((x - c).abs() < t, c, x)
        return _PassThrough.apply(y.detach(), x) if straight_through else y


class OnnxTwin(nn.Module):
    """Run an ONNX graph with torch ops; returns the first graph output (the logits)."""

    def __init__(self, path: str | Path):
        super().__init__()
        model = onnx.load(str(path))
        g = model.graph
        self.weights = nn.ParameterDict()
        self._consts: dict[str, torch.Tensor] = {}
        self._keys: dict[str, str] = {}
        for init in g.initializer:
            arr = onnx.numpy_helper.to_array(init)
            t = torch.from_numpy(np.array(arr))
            if t.is_floating_point():
                key = f"w{len(self._keys)}"
                self._keys[init.name] = key
                self.weights[key] = nn.Parameter(t, requires_grad=False)
            else:
                self._consts[init.name] = t
        inits = {i.name for i in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in inits]
        self.outputs = [o.name for o in g.output]
        graph = ir.load(str(path)).graph
        units, unit_nodes = self._units(graph)
        self.units = list(units.values())
        self.program: list = []
        for i, node in enumerate(g.node):
            if i in unit_nodes:
                if unit_nodes[i] is not None:
                    self.program.append(units[unit_nodes[i]])
                continue
            if node.domain not in ("", "ai.onnx"):
                raise ModelError(f"the twin cannot run custom op {node.domain}::{node.op_type} ({node.name})")
            if node.op_type == "Constant":
                self._consts[node.output[0]] = torch.from_numpy(
                    np.array(onnx.numpy_helper.to_array(_attrs(node)["value"])))
                continue
            if node.op_type not in OPS:
                raise ModelError(f"the twin does not implement ONNX op {node.op_type} (node {node.name!r})")
            self.program.append((node.op_type, node.name, list(node.input), list(node.output), _attrs(node)))
        named = {name: self.weights[key] for name, key in self._keys.items()}
        self.program = fuse(self.program, {**self._consts, **named}, named, self.outputs, composites(graph)[0])
        self.straight_through = False

    def _apply(self, fn, recurse=True):
        """``.to(device)`` and friends move the constants too (they are plain tensors, not buffers)."""
        super()._apply(fn, recurse)
        self._consts = {k: fn(v) for k, v in self._consts.items()}
        return self

    @staticmethod
    def _units(graph: ir.Graph) -> tuple[dict[str, Unit], dict[int, str | None]]:
        """The sparsify units by output name, and for each of their nodes' positions the unit to run there
        (at the operator's last node) or None (its other nodes)."""
        index = {id(n): i for i, n in enumerate(graph)}
        units, where = {}, {}
        for op in find_sparsify_ops(graph):
            units[op.y.name] = Unit(op.x.name, op.y.name, torch.from_numpy(np.array(op.center)),
                                    torch.from_numpy(np.array(op.threshold)))
            positions = sorted(index[id(n)] for n in op.nodes)
            where.update({i: None for i in positions})
            where[positions[-1]] = op.y.name
        return units, where

    def forward(self, *xs: torch.Tensor, forced: dict[str, torch.Tensor] | None = None,
                record: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """The first graph output. ``forced`` replaces units' outputs by given tensors (teacher
        forcing, for the twin check); ``record`` receives each unit's (input, output)."""
        env: dict[str, torch.Tensor] = dict(self._consts)
        env.update({name: self.weights[key] for name, key in self._keys.items()})
        env.update(zip(self.inputs, xs))
        for step in self.program:
            if isinstance(step, Unit):
                x = env[step.x]
                y = step(x, self.straight_through)
                if record is not None:
                    record[step.y] = (x, y)
                env[step.y] = forced[step.y] if forced is not None and step.y in forced else y
                continue
            op, name, ins, outs, attrs = step
            try:
                args = [env[i] if i else None for i in ins]
            except KeyError as e:
                raise ModelError(f"node {name!r} reads {e.args[0]!r}, an inner value of a sparsify operator; "
                                 "the twin runs operators as units") from None
            while args and args[-1] is None:
                args.pop()
            result = RUN[op](*args, **attrs) if attrs else RUN[op](*args)
            if isinstance(result, torch.Tensor):
                result = (result,)
            env.update(zip(outs, result))
        return env[self.outputs[0]]
