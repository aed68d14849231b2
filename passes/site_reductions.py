"""Per-channel reductions of site tensors, computed inside the graph (in-graph calibration).

For each (tensor, channel axis) the pass appends a small subgraph that leaves the model
with only channel-sized vectors::

    d  = Cast(x, float) - shift                   # shift: a graph input, one value per channel
    S1 = sum(d), S2 = sum(d*d)                    over every axis but the channel's
    hi = max(x), lo = min(x)                      only with ``extent`` (forged mode's max |x|)
    shape = Shape(x)                              # the element count per channel, on the host

Each sum runs in two stages -- first over the axes inside one sample (``H*W`` or the
tokens), then over the batch -- so a float32 sum never spans more than ``max(H*W, N)``
terms (see ``docs/method.md``, *Numerical guarantee*). For an NCHW tensor the spatial
axes are first flattened, ``(N, C, H*W)``, which keeps every reduction a contiguous one
on the CPU and CUDA providers alike. The site tensor itself never leaves the session.

Two choices are made for ONNX Runtime's CPU provider, whose behaviour they were measured on
(ResNet-50 and ViT-B/16, ``benchmarks/perf.py``):

* the subgraphs are appended in *reverse* site order. ONNX Runtime's default execution order
  is a depth-first walk back from the graph's leaf nodes that starts at the leaf with the
  highest index (``GraphViewer``, ``Graph::ReverseDFSFrom``); in site order every site tensor
  stayed alive until the end of the network (peak memory 3.9 GB against 1.0 GB for plain
  inference, ResNet-50 at batch 32, and a first batch 2.8x slower than the rest). In reverse
  order each reduction runs right after its site (1.4 GB, no slow batch).
* the sum of squares is ``ReduceSumSquare`` where the reduced axes are the trailing ones and
  ``ReduceSum(d*d)`` elsewhere: ONNX Runtime's ``ReduceSumSquare`` has no fast path for
  reducing leading or middle axes (the tokens of a ``(N, T, C)`` tensor), where it cost ViT-B/16
  more than the shift, the product and the sum together.

The pass changes the model in place; :func:`reducing` adds the subgraph for the lifetime of
one session and removes it again, like :func:`mstransform.passes.expose.exposed`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult

OUTPUTS = ("sum", "sum_squares", "shape", "max", "min")  # what each reduction returns, in this order
# opset from which an op takes its axes as an input rather than an attribute
_AXES_AS_INPUT = {"ReduceSum": 13, "ReduceSumSquare": 18, "ReduceMax": 18, "ReduceMin": 18}


@dataclass(frozen=True)
class Reduction:
    """What one (tensor, axis) contributes: the shift input to feed and the outputs to fetch."""

    feed: ir.Value
    axis: int
    rank: int
    shift: ir.Value
    shift_shape: tuple[int, ...]  # (C, 1, ...): the shape the host gives the shift
    sum: ir.Value
    sum_squares: ir.Value
    shape: ir.Value
    max: ir.Value | None = None
    min: ir.Value | None = None

    @property
    def outputs(self) -> tuple[ir.Value, ...]:
        """The values to fetch, in the order of ``OUTPUTS`` (max and min only where measured)."""
        return tuple(v for v in (self.sum, self.sum_squares, self.shape, self.max, self.min) if v is not None)


@dataclass
class ReductionResult(PassResult):
    reductions: list[Reduction] = field(default_factory=list)
    nodes: list[ir.Node] = field(default_factory=list)


class AddSiteReductionsPass(InPlacePass):
    """Append the reductions for each ``(value, axis, rank)``; the value's rank must be known.

    ``extent`` adds max and min: two more full reads of every site tensor, which only forged
    mode needs (measured on ResNet-50 in ONNX Runtime: about a tenth of plain inference)."""

    def __init__(self, targets: list[tuple[ir.Value, int, int]], extent: bool = True):
        super().__init__()
        self.targets, self.extent = targets, extent

    def requires(self, model: ir.Model) -> None:
        for value, axis, rank in self.targets:
            if not 1 <= axis < rank:  # axis 0 is the batch: statistics are per channel over samples
                raise ValueError(f"channel axis {axis} is not in 1..{rank - 1} for {value.name!r}")

    def call(self, model: ir.Model) -> ReductionResult:
        opset = model.opset_imports.get("", 1)
        groups: list[list[ir.Node]] = []
        reductions = []
        for i, (x, axis, rank) in enumerate(self.targets):
            nodes: list[ir.Node] = []
            groups.append(nodes)
            b = _Builder(nodes, opset, f"mst_reduce_{i}")
            xf = x if x.dtype == ir.DataType.FLOAT else b.op("Cast", [x], to=ir.DataType.FLOAT)
            view, view_rank, inner, shift_shape = _channel_view(b, xf, axis, rank)
            shift = ir.Value(name=f"mst_shift/{i}", type=ir.TensorType(ir.DataType.FLOAT),
                             shape=ir.Shape([None, *[1] * (len(shift_shape) - 1)]))
            d = b.op("Sub", [view, shift])
            outs = [b.two_stage("ReduceSum", d, inner), b.sum_squares(d, inner, view_rank), b.op("Shape", [x])]
            if self.extent:
                outs += [b.two_stage("ReduceMax", view, inner), b.two_stage("ReduceMin", view, inner)]
            for v, name in zip(outs, OUTPUTS):
                v.name = f"mst_{name}/{i}"
            reductions.append(Reduction(x, axis, rank, shift, shift_shape, *outs))
        nodes = [n for group in reversed(groups) for n in group]  # reverse site order: see the module's docstring
        model.graph.extend(nodes)
        for r in reductions:
            model.graph.inputs.append(r.shift)
            model.graph.outputs.extend(r.outputs)
        return ReductionResult(model, bool(reductions), reductions, nodes)


def _channel_view(b: "_Builder", x: ir.Value, axis: int, rank: int):
    """A view of ``x`` in which the reduction axes are few: (N, C, H*W) for NCHW tensors.

    Returns the view, its rank, the axes to reduce within one sample, and the shape the shift takes.
    """
    if axis == 1 and rank > 3:
        flat = b.op("Reshape", [x, b.const(np.array([0, 0, -1], np.int64))])
        return flat, 3, [2], (-1, 1)
    inner = [a for a in range(1, rank) if a != axis]
    return x, rank, inner, (-1, *[1] * (rank - 1 - axis))


class _Builder:
    """Appends nodes with unique names to one list, in the model's opset."""

    def __init__(self, nodes: list[ir.Node], opset: int, prefix: str):
        self.nodes, self.opset, self.prefix = nodes, opset, prefix

    def op(self, op_type: str, inputs, **attributes) -> ir.Value:
        node = ir.node(op_type, inputs, attributes=attributes, name=f"{self.prefix}/{len(self.nodes)}")
        self.nodes.append(node)
        return node.outputs[0]

    def const(self, array: np.ndarray) -> ir.Value:
        return self.op("Constant", [], value=ir.tensor(array))

    def reduce(self, op_type: str, x: ir.Value, axes: list[int]) -> ir.Value:
        if self.opset >= _AXES_AS_INPUT[op_type]:
            return self.op(op_type, [x, self.const(np.array(axes, np.int64))], keepdims=0)
        return self.op(op_type, [x], axes=axes, keepdims=0)

    def sum_squares(self, d: ir.Value, inner: list[int], rank: int) -> ir.Value:
        """Two-stage sum of ``d*d`` (``rank``: d's): ReduceSumSquare over trailing axes, else the product summed."""
        if inner and inner == list(range(rank - len(inner), rank)):
            return self.two_stage("ReduceSumSquare", d, inner)
        return self.two_stage("ReduceSum", self.op("Mul", [d, d]), inner)

    def two_stage(self, op_type: str, x: ir.Value, inner: list[int]) -> ir.Value:
        """Reduce within each sample first, then over the batch (ReduceSumSquare squares once)."""
        if not inner:
            return self.reduce(op_type, x, [0])
        partial = self.reduce(op_type, x, inner)
        return self.reduce("ReduceSum" if op_type == "ReduceSumSquare" else op_type, partial, [0])


@contextlib.contextmanager
def reducing(model: ir.Model, targets: list[tuple[ir.Value, int, int]], extent: bool = True):
    """Within the block, ``model`` carries the reductions of ``targets``; afterwards it is as before."""
    result = AddSiteReductionsPass(targets, extent)(model)
    try:
        yield result.reductions
    finally:
        for r in result.reductions:
            for v in r.outputs:
                model.graph.outputs.remove(v)
            model.graph.inputs.remove(r.shift)
        model.graph.remove(result.nodes, safe=True)
