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

A shift may instead be fixed, a constant in the graph, for a tensor whose channel axis is 1
(NCHW). Such a site is reduced *per sample* with ops that ONNX Runtime's CPU provider runs in its
blocked NCHWc layout, next to the convolutions, with no reorder back to NCHW::

    d  = BatchNormalization(x; scale 1, bias 0, mean shift, var 1, epsilon 0)    # x - shift, exactly
    S1 = sum over N of GlobalAveragePool(d), S2 = the same of d*d               # times H*W on the host

The sums are two-staged as above (``H*W`` terms, then ``N``). The sum over the batch stays in the
graph: a ``ReduceSum`` is not blocked, so it keeps the reductions' order as appended (the blocked
pooling nodes ONNX Runtime creates would otherwise run last, keeping every site tensor alive: 3.4 GB
on ResNet-50 at batch 32 and a first run 2.3x slower). ONNX Runtime runs a per-channel shift in the
blocked layout only as a ``BatchNormalization`` or ``Conv`` with constant parameters (a ``Sub`` reads
NCHW), hence the fixed shift; moving it means a new session, which
:class:`mstransform.runtime.calibrate.ReducedRun` makes only when a batch lies far from it. On
ResNet-50 at batch 32 (2 threads, two interleaved runs in one process) this form cost 1.21-1.27x
plain inference where the fed-shift form cost 1.26-1.30x.

The pass changes the model in place; :func:`reducing` adds the subgraph for the lifetime of
one session and removes it again, like :func:`mstransform.passes.graph.expose.exposed`.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult, PostconditionError, PreconditionError

from mstransform.passes.graph.subgraphs import lifting

OUTPUTS = ("sum", "sum_squares", "shape", "max", "min")  # what each reduction returns, in this order
# opset from which an op takes its axes as an input rather than an attribute
_AXES_AS_INPUT = {"ReduceSum": 13, "ReduceSumSquare": 18, "ReduceMax": 18, "ReduceMin": 18}


@dataclass(frozen=True)
class Reduction:
    """What one (tensor, axis) contributes: the shift input to feed and the outputs to fetch."""

    feed: ir.Value
    axis: int
    rank: int
    shift: ir.Value | None  # the graph input to feed the shift to; None where the shift is fixed in the graph
    shift_shape: tuple[int, ...]  # (C, 1, ...): the shape the host gives the shift (where fed)
    sum: ir.Value
    sum_squares: ir.Value
    shape: ir.Value
    max: ir.Value | None = None
    min: ir.Value | None = None
    mean_of: int | None = None  # H*W where sum and sum_squares are sums of per-sample means (times H*W: sums)
    fetch: tuple[str, ...] | None = None  # the names to fetch, where the outputs were lifted out of a body
    levels: int = 0  # loop iterations stacked in front of each fetched array (bodies of Loop/Scan)

    @property
    def outputs(self) -> tuple[ir.Value, ...]:
        """The values the reduction computes, in the order of ``OUTPUTS`` (max and min only where measured)."""
        return tuple(v for v in (self.sum, self.sum_squares, self.shape, self.max, self.min) if v is not None)

    @property
    def fetch_names(self) -> tuple[str, ...]:
        return self.fetch if self.fetch is not None else tuple(v.name for v in self.outputs)

    def host_sums(self, outs: list[np.ndarray]) -> tuple[int, np.ndarray, np.ndarray, list[np.ndarray]]:
        """(count per channel, shifted sum, shifted sum of squares, [max, min]) of fetched ``outs``, float64.

        Sums of per-sample means are scaled to sums here. Inside a body, each run of the body (a loop
        iteration, a branch taken) is one row, all with the same shift, so rows add up; a branch that
        did not run returns zeros and a zero shape: count 0, and a count of 0 overall."""
        s1, s2, shape, *extent = outs
        s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
        if self.mean_of is not None:  # shape: the pooled tensor's, (N, C, 1, ...)
            return int(shape[0]) * self.mean_of, self.mean_of * s1, self.mean_of * s2, extent
        shapes = np.asarray(shape, np.int64).reshape(-1, self.rank)
        counts = np.array([int(np.prod(r)) // int(r[self.axis]) if r[self.axis] > 0 else 0 for r in shapes])
        width = s1.shape[-1] if s1.ndim else 1
        rows = counts > 0
        s1, s2 = (a.reshape(-1, width)[rows].sum(axis=0) for a in (s1, s2))
        extent = [np.asarray(e).reshape(-1, width)[rows] for e in extent]
        if extent and rows.any():
            extent = [extent[0].max(axis=0), extent[1].min(axis=0)]
        return int(counts.sum()), s1, s2, extent


REDUCTIONS = "mstransform.reductions"  # model.meta: (list[Reduction], list[ir.Node]) the pass added last


class AddSiteReductionsPass(InPlacePass):
    """Append the reductions for each ``(value, axis, rank)``; the value's rank must be known.

    ``fixed`` gives, per target, a shift to fix in the graph (channel axis 1 only) or None for a
    shift fed at run time. ``extent`` adds max and min: two more full reads of every site tensor,
    which only forged mode needs (measured on ResNet-50 in ONNX Runtime: about a tenth of plain inference)."""

    def __init__(self, targets: list[tuple[ir.Value, int, int]], extent: bool = True,
                 fixed: list[np.ndarray | None] | None = None):
        super().__init__()
        self.targets, self.extent = targets, extent
        self.fixed = list(fixed) if fixed is not None else [None] * len(targets)

    def requires(self, model: ir.Model) -> None:
        if len(self.fixed) != len(self.targets):
            raise PreconditionError(f"{len(self.fixed)} fixed shifts for {len(self.targets)} targets")
        for (value, axis, rank), fixed in zip(self.targets, self.fixed):
            if not 1 <= axis < rank:  # axis 0 is the batch: statistics are per channel over samples
                raise PreconditionError(f"channel axis {axis} is not in 1..{rank - 1} for {value.name!r}")
            if fixed is not None and (not fixable(value, axis, rank) or np.ndim(fixed) != 1):
                raise PreconditionError(f"a fixed shift needs channel axis 1 of a rank >= 3 tensor with static sizes "
                                 f"after it, and one value per channel ({value.name!r}: axis {axis}, rank {rank})")

    def call(self, model: ir.Model) -> PassResult:
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        groups: list[list[ir.Node]] = []
        reductions = []
        for i, ((x, axis, rank), fixed) in enumerate(zip(self.targets, self.fixed)):
            nodes: list[ir.Node] = []
            groups.append(nodes)
            b = _Builder(nodes, opset, f"mst_reduce_{i}")
            xf = x if x.dtype == ir.DataType.FLOAT else b.op("Cast", [x], to=ir.DataType.FLOAT)
            # the NCHW view only where read: a node reading x in NCHW makes ORT reorder x out of its blocked layout
            view = _channel_view(b, xf, axis, rank) if fixed is None or self.extent else None
            if fixed is None:
                shift = ir.Value(name=f"mst_shift/{i}", type=ir.TensorType(ir.DataType.FLOAT),
                                 shape=ir.Shape([None, *[1] * (len(view.shift_shape) - 1)]))
                d = b.op("Sub", [view.value, shift])
                outs = [b.two_stage("ReduceSum", d, view.inner), b.sum_squares(d, view.inner, view.rank),
                        b.op("Shape", [x])]
                mean_of = None
            else:
                shift, outs = None, b.fixed_shift_sums(xf, np.asarray(fixed, np.float32), rank)
                mean_of = int(np.prod(list(x.shape)[2:], dtype=np.int64))
            if self.extent:
                outs += [b.two_stage(op, view.value, view.inner) for op in ("ReduceMax", "ReduceMin")]
            for v, name in zip(outs, OUTPUTS):
                v.name = f"mst_{name}/{i}"
            shift_shape = view.shift_shape if shift is not None else ()
            reductions.append(Reduction(x, axis, rank, shift, shift_shape, *outs, mean_of=mean_of))
        nodes = []
        for group, r in reversed(list(zip(groups, reductions))):  # reverse site order: see the module's docstring
            r.feed.graph.extend(group)  # a body's site is reduced inside its body (see ``reducing``)
            nodes += group
        for r in reductions:
            if r.shift is not None:
                model.graph.inputs.append(r.shift)  # read from inside a body as an outer-scope value
            if r.feed.graph is model.graph:
                model.graph.outputs.extend(r.outputs)
        model.meta[REDUCTIONS] = (reductions, nodes)  # the side record ``reducing`` reads and undoes
        return PassResult(model, bool(reductions))

    def ensures(self, model: ir.Model) -> None:
        reductions, _ = model.meta[REDUCTIONS]
        outputs = {id(v) for v in model.graph.outputs}
        for r in reductions:
            if r.feed.graph is model.graph and not all(id(v) in outputs for v in r.outputs):
                raise PostconditionError(f"the reduction of {r.feed.name!r} is not a graph output")


def fixable(value: ir.Value, axis: int, rank: int) -> bool:
    """Whether a shift can be fixed for ``value``: channel axis 1 and static sizes after it (H*W is the count)."""
    shape = value.shape
    return axis == 1 and rank >= 3 and shape is not None and len(shape) == rank and all(
        isinstance(d, int) for d in list(shape)[2:])


@dataclass(frozen=True)
class _View:
    """A view of a site tensor in which the reduction axes are few, and how to reduce it."""

    value: ir.Value
    rank: int
    inner: list[int]  # the axes to reduce within one sample
    shift_shape: tuple[int, ...]


def _channel_view(b: "_Builder", x: ir.Value, axis: int, rank: int) -> _View:
    """(N, C, H*W) for NCHW tensors; the tensor itself otherwise."""
    if axis == 1 and rank > 3:
        return _View(b.op("Reshape", [x, b.const(np.array([0, 0, -1], np.int64))]), 3, [2], (-1, 1))
    return _View(x, rank, [a for a in range(1, rank) if a != axis], (-1, *[1] * (rank - 1 - axis)))


class _Builder:
    """Appends nodes with unique names to one list, in the model's opset."""

    def __init__(self, nodes: list[ir.Node], opset: int, prefix: str):
        self.nodes, self.opset, self.prefix = nodes, opset, prefix

    def op(self, op_type: str, inputs, **attributes) -> ir.Value:
        name = f"{self.prefix}/{len(self.nodes)}"
        node = ir.node(op_type, inputs, attributes=attributes, name=name)
        node.outputs[0].name = f"{name}_out"  # named here: a body's own name counter would repeat the main graph's
        self.nodes.append(node)
        return node.outputs[0]

    def const(self, array: np.ndarray) -> ir.Value:
        return self.op("Constant", [], value=ir.tensor(array))

    def subtract_fixed(self, x: ir.Value, shift: np.ndarray) -> ir.Value:
        """``x - shift`` along axis 1, as an inference BatchNormalization: ``(x - mean) / sqrt(1 + 0) * 1 + 0``
        rounds once, like the subtraction, and ONNX Runtime's CPU provider runs it in the blocked layout."""
        one, zero = np.ones_like(shift), np.zeros_like(shift)
        return self.op("BatchNormalization", [x, *(self.const(a) for a in (one, zero, shift, one))], epsilon=0.0)

    def fixed_shift_sums(self, x: ir.Value, shift: np.ndarray, rank: int) -> list[ir.Value]:
        """[sum of d, sum of d*d, shape (N, C, 1, ...)] for ``d = x - shift``, the sums taken over each
        sample's per-channel means (the count is N, the pooled shape's first size, times the static H*W)."""
        d = self.subtract_fixed(x, shift)
        pooled = self.op("GlobalAveragePool", [d])
        pooled_squares = self.op("GlobalAveragePool", [self.op("Mul", [d, d])])
        over_batch = [0, *range(2, rank)]
        return [self.reduce("ReduceSum", pooled, over_batch), self.reduce("ReduceSum", pooled_squares, over_batch),
                self.op("Shape", [pooled])]

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
def reducing(model: ir.Model, targets: list[tuple[ir.Value, int, int]], extent: bool = True,
             fixed: list[np.ndarray | None] | None = None, channels: list[int] | None = None):
    """Within the block, ``model`` carries the reductions of ``targets``; afterwards it is as before.

    The reductions of a site inside an ``If``/``Loop``/``Scan`` body are lifted out of it
    (:mod:`mstransform.passes.graph.subgraphs`): an ``If``'s other branch returns zeros (``channels``
    per target sizes them) and a zero shape, so a branch that did not run counts no samples."""
    AddSiteReductionsPass(targets, extent, fixed)(model)
    added, added_nodes = model.meta.pop(REDUCTIONS)
    inner = [i for i, r in enumerate(added) if r.feed.graph is not model.graph]
    values, fills = [], []
    for i in inner:
        r, width = added[i], (channels[i] if channels is not None else 1)
        for v in r.outputs:
            values.append(v)
            fills.append(np.zeros(r.rank, np.int64) if v is r.shape else np.zeros(width, np.float32))
    reductions = list(added)
    try:
        with lifting(model, values, fills) as lifted:
            k = 0
            for i in inner:
                width = len(reductions[i].outputs)
                mine = lifted[k:k + width]
                k += width
                model.graph.outputs.extend(lv.value for lv in mine)
                reductions[i] = dataclasses.replace(reductions[i], fetch=tuple(lv.value.name for lv in mine),
                                                    levels=mine[0].levels)
            try:
                yield reductions
            finally:
                for lv in lifted:
                    model.graph.outputs.remove(lv.value)
    finally:
        for r in added:
            if r.feed.graph is model.graph:
                for v in r.outputs:
                    model.graph.outputs.remove(v)
            if r.shift is not None:
                model.graph.inputs.remove(r.shift)
        for r, group in _groups(added, added_nodes):
            r.feed.graph.remove(group, safe=True)


def _groups(reductions: list[Reduction], nodes: list[ir.Node]):
    """Each reduction's own nodes (they live in the site's graph)."""
    by_graph: dict[int, list[ir.Node]] = {}
    for n in nodes:
        by_graph.setdefault(id(n.graph), []).append(n)
    seen = set()
    for r in reductions:
        g = r.feed.graph
        if id(g) not in seen:
            seen.add(id(g))
            yield r, by_graph.get(id(g), [])
