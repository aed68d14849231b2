"""The placement rules over a :class:`GraphView` (SE branches, residuals, statistics, the channel axis), written once
for every graph kind, and an index of the activation table for the finders.

The table itself is :data:`mstransform.core.activations.ACTIVATIONS`. :func:`catalogue` indexes it as it is
at each call (an :class:`Index`: each activation by name, the activation each single ONNX op is, the ONNX ops
that keep their input's layout) and :func:`kind` looks one up. The ONNX rules (``passes/sites/onnx_rules.py``)
and the ONNX layout (``passes/sites/onnx_finder.py``) read the table through them, the FX matcher
(``passes/fx/finder.py``) through :func:`kind` and its own index of the torch references, so an entry added to
the table is found everywhere. Most rules read their kinds off the table; a rule that names its kinds itself
(:class:`~mstransform.passes.sites.onnx_rules.ClipRule`) has them checked against it at import.

The rules that decide placement are written once over :class:`GraphView`, a small protocol
the ONNX and FX adapters implement:

* :func:`squeeze_excite_gate` -- an activation whose input descends from a global pooling and
  whose output scales the pooled feature map sits in a Squeeze-and-Excitation branch;
* :func:`is_residual` -- an ``Add`` of two computed tensors of one static shape;
* :func:`is_statistic` -- a tensor computed elementwise from reductions alone (a statistic, not a feature);
* :func:`channel_axis` -- the channel axis from the rank and the layout of the producers (or the readers).
"""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Generic, Iterable, Protocol, TypeVar

from mstransform.core import activations
from mstransform.core.activations import ActivationKind


@dataclass(frozen=True)
class Index:
    """What the finders look up in one catalogue: its kinds by name, the activation each single ONNX op is,
    and the ONNX ops that keep their input's layout."""

    kinds: dict[str, ActivationKind]
    single_ops: dict[str, str]
    layout_keeping: frozenset[str]


@functools.lru_cache(maxsize=4)
def _index(table: tuple[ActivationKind, ...]) -> Index:
    return Index({k.name: k for k in table}, {op: k.name for k in table for op in k.onnx_ops},
                 frozenset(op for k in table if k.keeps_layout for op in k.onnx_ops))


def catalogue() -> Index:
    """The catalogue (:data:`mstransform.core.activations.ACTIVATIONS`) as it is now, indexed once."""
    return _index(activations.ACTIVATIONS)


# The kinds that are not activations but placements of their own.
RESIDUAL, LINEAR_INPUT = "residual", "linear-input"

# Ops (by kind of graph) that end a Squeeze-and-Excitation squeeze: global poolings.
ONNX_POOLS = frozenset({"GlobalAveragePool", "ReduceMean", "GlobalMaxPool", "ReduceMax"})
FX_POOLS = ("aten:adaptive_avg_pool2d.default", "aten:_adaptive_avg_pool2d.default", "aten:mean.dim",
            "function:torch.nn.functional.adaptive_avg_pool2d", "function:torch.mean", "method:mean",
            "module:torch.nn.AdaptiveAvgPool2d")
SE_HOPS = 6  # how far a squeeze or an excitation may reach: an SE branch is a few ops long


def kind(name: str) -> ActivationKind:
    """The catalogue entry for ``name``; KeyError names a rule that produced an unknown kind."""
    return catalogue().kinds[name]


N = TypeVar("N")  # a node handle of the adapter's graph
V = TypeVar("V")  # a value (tensor) handle of the adapter's graph


class GraphView(Protocol, Generic[N, V]):
    """What the placement rules need to ask a graph; ONNX and FX adapters implement it."""

    def producer(self, value: V) -> N | None: ...

    def is_pool(self, node: N) -> bool: ...

    def pooled(self, node: N) -> V: ...

    def computed_inputs(self, node: N) -> list[V]: ...

    def users(self, value: V) -> Iterable[N]: ...

    def outputs(self, node: N) -> list[V]: ...

    def scales(self, node: N, value: V, target: V) -> bool:
        """True when ``node`` multiplies ``value`` by ``target``."""

    def layout(self, node: N) -> "Layout": ...

    def node_name(self, node: N) -> str: ...

    def constant_shapes(self, node: N) -> list[tuple[int, ...]]:
        """The shapes of the node's constant operands (a bias, a scale)."""

    def is_reduction(self, node: N) -> bool:
        """A reduction over a tensor's elements (a mean, a sum, a max), whose output is a statistic."""


def squeeze_source(view: GraphView, value, hops: int = SE_HOPS):
    """If ``value`` descends from a global pooling within a few single-input hops, the pooled map."""
    for _ in range(hops):
        node = view.producer(value)
        if node is None:
            return None
        if view.is_pool(node):
            return view.pooled(node)
        computed = view.computed_inputs(node)
        if len(computed) != 1:
            return None
        value = computed[0]
    return None


def squeeze_excite_gate(view: GraphView, feed, out, hops: int = SE_HOPS) -> str | None:
    """The name of the Mul that ``out`` gates when the activation sits in an SE branch, else None."""
    source = squeeze_source(view, feed, hops)
    if source is None:
        return None
    frontier = [out]
    for _ in range(hops):
        nxt = []
        for v in frontier:
            for node in view.users(v):
                if view.scales(node, v, source):
                    return view.node_name(node)
                nxt.extend(view.outputs(node))
        frontier = nxt
    return None


def is_residual(shape_a, shape_b) -> bool:
    """An Add of two computed tensors is a residual join when both have one known shape of rank >= 2."""
    return shape_a is not None and shape_b is not None and tuple(shape_a) == tuple(shape_b) and len(shape_a) >= 2


class Layout(enum.Enum):
    """What a producer says about the channel axis of its output."""

    CONV = "conv"  # (N, C, spatial...) -> axis 1
    TOKENS = "tokens"  # (N, L, C) or (..., C) -> last axis
    CHANNELS_LAST = "channels-last"  # a Transpose/permute moved C last
    TOKENS_TRANSPOSED = "tokens-transposed"  # (N, C, L) after a Transpose of tokens
    KEEP = "keep"  # elementwise: look further up
    UNKNOWN = "unknown"  # stop looking


def axis_by_rank(rank: int) -> tuple[int, str]:
    """The fallback rule: features (N,C) and tokens (N,L,C) -> last axis, conv maps -> axis 1."""
    if rank <= 2:
        return rank - 1, "features (N,C)"
    if rank == 3:
        return 2, "tokens (N,L,C) by rank"
    return 1, "conv (N,C,...) by rank"


def channel_axis(view: GraphView, value, rank: int | None, limit: int = 16) -> tuple[int | None, str]:
    """The channel axis of ``value`` (non-negative) and the rule that chose it."""
    if rank is None:
        return None, "rank unknown"
    if rank <= 2:
        return axis_by_rank(rank)
    frontier, seen, biased = [value], 0, None
    while frontier and seen < limit:
        node = view.producer(frontier.pop(0))
        seen += 1
        if node is None:
            continue
        layout = view.layout(node)
        if layout is Layout.CHANNELS_LAST and rank >= 4:
            return rank - 1, "channels-last (after Transpose)"
        if layout is Layout.TOKENS_TRANSPOSED:
            return 2, "tokens (N,L,C) after Transpose"
        if layout is Layout.CONV:
            return 1, f"conv (N,C,{','.join('HWD'[:rank - 2])})" if rank <= 5 else "conv (N,C,...)"
        if layout is Layout.TOKENS:
            return rank - 1, "tokens (N,L,C)" if rank == 3 else "last axis (after MatMul/LayerNorm)"
        if layout is Layout.KEEP:
            if biased is None:
                biased = bias_axis(view.constant_shapes(node), rank)
            frontier.extend(view.computed_inputs(node))
            continue
        break
    if biased is not None:  # no layer said; a per-channel constant on the way did
        return biased, "per-channel constant (bias, scale) along it"
    return _axis_of_readers(view, value, rank, limit) or axis_by_rank(rank)


def bias_axis(shapes: list[tuple[int, ...]], rank: int) -> int | None:
    """The axis a per-channel constant runs along: one broadcast shape of ``rank`` with exactly one dim > 1 (a
    bias ``(1, C, 1)`` after a convolution an exporter split off, a ``(C,)`` bias after a MatMul); None when no
    constant says (a positional table ``(1, L, C)`` runs along two)."""
    for shape in shapes:
        if len(shape) > rank or not all(isinstance(d, int) for d in shape):
            continue
        dims = [1] * (rank - len(shape)) + list(shape)
        big = [i for i, d in enumerate(dims) if d > 1]
        if len(big) == 1:
            return big[0]
    return None


REDUCTION_HOPS = 8


def is_statistic(view: GraphView, value, limit: int = REDUCTION_HOPS) -> str | None:
    """Where ``value`` is computed elementwise from reductions alone (a LayerNorm's ``E[x^2] - E[x]^2`` guarded by
    ``Max(., 0)``), the name of one: a statistic of a tensor, not a feature an activation reads. Else None."""
    frontier, sources, seen = [value], [], 0
    while frontier and seen < limit:
        node = view.producer(frontier.pop(0))
        seen += 1
        if node is None:
            continue
        if view.layout(node) is Layout.KEEP:
            frontier.extend(view.computed_inputs(node))
        else:
            sources.append(node)
    if sources and not frontier and all(view.is_reduction(n) for n in sources):
        return view.node_name(sources[0])
    return None


def _axis_of_readers(view: GraphView, value, rank: int, limit: int) -> tuple[int, str] | None:
    """Where no producer says, the readers may: a tensor that reaches a convolution through elementwise
    ops (its activation among them) is laid out (N, C, ...) -- a recurrent layer's output unsqueezed
    into a Conv1d, say. Only a convolution-like reader (conv, pool, norm, resize) is taken as evidence."""
    frontier, seen = [value], 0
    while frontier and seen < limit:
        for node in view.users(frontier.pop(0)):
            seen += 1
            layout = view.layout(node)
            if layout is Layout.CONV:
                return 1, (f"conv (N,C,{','.join('HWD'[:rank - 2])}), from its readers" if rank <= 5 else
                           "conv (N,C,...), from its readers")
            if layout is Layout.KEEP:
                frontier.extend(view.outputs(node))
    return None
