"""Site finding: which tensors get a sparsify operator, and why others do not.

A *site* is one tensor edge in the graph plus the nodes that read it through the operator.
Three placements exist (:class:`~mstransform.core.options.Placement`):

* ``activations`` -- the tensor entering every activation (the MeanSparse paper);
* ``activations+residual`` -- also the output of each residual ``Add`` that does not already
  feed an activation (what the official MeanSparse code does for WideResNet);
* ``linear-inputs`` -- the data input of every Conv/Gemm/MatMul with constant weights (the
  forged-function paper's placement).

Activations inside Squeeze-and-Excitation branches are skipped unless asked for.

:func:`build_site_table` is the one finder; it asks a :class:`SiteSource` adapter
(``passes/sites/onnx_finder.py`` for ONNX, ``passes/fx/finder.py`` for torch.fx) about the graph and
applies the placement rules (:mod:`mstransform.passes.sites.placement`), so both graph kinds get
the same sites, names aside.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

from mstransform.passes.sites.placement import (RESIDUAL, GraphView, channel_axis, is_residual, is_statistic,
                                         squeeze_excite_gate)
from mstransform.core.errors import UsageError
from mstransform.core.options import Placement, Selection


@dataclass(frozen=True)
class Site:
    """One guarded tensor. ``readers`` will read the sparsified tensor; ``all_uses`` says the
    operator replaces the tensor for every reader (residual sites)."""

    name: str
    kind: str
    form: str
    producer: str
    feed: Any = field(repr=False, compare=False)
    readers: tuple = field(repr=False, compare=False)
    rank: int | None
    axis: int | None
    axis_rule: str
    channels: int | str | None
    feed_name: str = ""
    all_uses: bool = False
    graph: str = "main"  # where the tensor lives: the main graph or a body (``/If_0:then_branch``)
    no_axis: str = ""  # why no channel axis of fixed size was found (the site is rejected unless --axis names one)


@dataclass(frozen=True)
class Rejection:
    """A catalogue node that did not become a site, and why."""

    node: str
    op_type: str
    reason: str


@dataclass
class SiteTable:
    placement: Placement
    sites: list[Site]
    rejected: list[Rejection]

    def __len__(self) -> int:
        return len(self.sites)

    def __iter__(self):
        return iter(self.sites)

    def by_name(self) -> dict[str, Site]:
        return {s.name: s for s in self.sites}

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.sites:
            out[s.kind] = out.get(s.kind, 0) + 1
        return out

    def to_dict(self) -> dict:
        """The table for machines (``mstransform sites --json``): every site and every rejection."""
        return {"placement": self.placement.value,
                "sites": [{"name": s.name, "kind": s.kind, "form": s.form, "producer": s.producer,
                           "tensor": s.feed_name, "axis": s.axis, "axis_rule": s.axis_rule,
                           "channels": s.channels, "rank": s.rank, "graph": s.graph} for s in self.sites],
                "rejected": [{"node": r.node, "op_type": r.op_type, "reason": r.reason} for r in self.rejected]}

    def format(self) -> str:
        """The table ``mstransform sites`` prints."""
        head = ("#", "site", "activation", "form", "producer", "axis", "channels", "graph")
        rows = [(str(i), s.name, s.kind, s.form, s.producer,
                 "?" if s.axis is None else f"{s.axis} {s.axis_rule}", str(s.channels if s.channels is not None else "?"),
                 s.graph)
                for i, s in enumerate(self.sites)]
        if all(s.graph == "main" for s in self.sites):  # the column only where control flow holds sites
            head, rows = head[:-1], [r[:-1] for r in rows]
        widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
        lines = [f"placement: {self.placement.value}; {len(self.sites)} site(s)"]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [head, *rows]]
        if self.rejected:
            lines.append(f"not matched ({len(self.rejected)}):")
            lines += [f"  {r.node} ({r.op_type}): {r.reason}" for r in self.rejected]
        return "\n".join(lines)


@dataclass
class Candidate:
    """An activation an adapter found: ``nodes`` are claimed by it (not residual joins)."""

    kind: str
    form: str
    feed: Any
    out: Any
    nodes: list
    readers: list
    name: str


class SiteSource(GraphView, Protocol):
    """What :func:`build_site_table` asks of a graph, beyond the catalogue rules' view."""

    def activations(self) -> tuple[list[Candidate], list[Rejection]]: ...

    def is_const(self, value) -> bool: ...

    def residual_adds(self) -> list[tuple[Any, Any, Any, Any]]:
        """``(node, a, b, out)`` for every two-input Add."""

    def linear_inputs(self) -> list[tuple[Any, Any, str]] | None:
        """``(node, x, name)`` for every Conv/Gemm/MatMul with constant weights; None if unsupported."""

    def shape(self, value) -> tuple | None: ...

    def describe_producer(self, value) -> str: ...

    def is_graph_output(self, value) -> bool: ...

    def is_graph_input(self, value) -> bool: ...

    def all_readers(self, value) -> list: ...

    def order(self) -> dict: ...

    def reader_node(self, reader) -> Any: ...

    def describe_linear(self, node) -> str: ...

    def reader(self, node, index: int) -> Any:
        """The handle insertion uses for input ``index`` of ``node``."""

    def value_name(self, value) -> str: ...


def _unique(name: str, taken: set[str]) -> str:
    base, k = name, 1
    while name in taken:
        name, k = f"{base}#{k}", k + 1
    taken.add(name)
    return name


def _site(src: SiteSource, name, kind, form, feed, readers, *, producer=None, all_uses=False) -> Site:
    shape = src.shape(feed)
    rank = None if shape is None else len(shape)
    axis, rule = channel_axis(src, feed, rank)
    axis, rule, no_axis = fixed_axis(shape, axis, rule, name)
    channels = shape[axis] if (shape is not None and axis is not None) else None
    return Site(name, kind, form, producer or src.describe_producer(feed), feed, tuple(readers), rank, axis, rule,
                channels, src.value_name(feed), all_uses, no_axis=no_axis)


def fixed_axis(shape, axis: int | None, rule: str, name: str) -> tuple[int | None, str, str]:
    """Channels are a fixed number: a rule's axis whose dim is declared dynamic (a named dim, ``seq_len``) is no
    channel axis. The one other axis of fixed size > 1 (batch aside) takes its place; with none or several, no
    axis and the reason (statistics per sequence position would tie the model to one length).
    Returns ``(axis, rule, why not)``; an unknown dim (no shape inferred) is read off a run instead."""
    if shape is None or axis is None or not isinstance(shape[axis], str):
        return axis, rule, ""
    fixed = [i for i, d in enumerate(shape) if i > 0 and isinstance(d, int) and d > 1]
    if len(fixed) == 1:
        return fixed[0], f"the one fixed-size axis ({rule}: axis {axis} is '{shape[axis]}')", ""
    dims = "[" + ",".join(str(d) if d is not None else "?" for d in shape) + "]"
    return None, rule, (f"no channel axis of fixed size: {rule} gives axis {axis}, dynamic ('{shape[axis]}') in "
                        f"{dims}; --axis {name}=AXIS names one")


def _activation_sites(src: SiteSource, include_se: bool, rejected: list, taken: set):
    found, reasons = src.activations()
    rejected.extend(reasons)
    out = []
    for m in found:
        if src.is_const(m.feed):
            rejected.append(Rejection(m.name, m.kind, "input is a constant"))
            continue
        stat = is_statistic(src, m.feed)
        if stat is not None:
            rejected.append(Rejection(m.name, m.kind, f"input is a statistic reduced by '{stat}' (a normalization's "
                                                      "variance, say), not a feature"))
            continue
        gate = squeeze_excite_gate(src, m.feed, m.out)
        if gate and not include_se:
            rejected.append(Rejection(m.name, m.kind, f"inside a Squeeze-and-Excitation branch (gates '{gate}'); "
                                                      "include_se hardens it"))
            continue
        gate = _gate(src, m)
        if gate and not include_se:
            rejected.append(Rejection(m.name, m.kind, f"a gate: its output scales another tensor at '{gate}' "
                                                      "(a recurrent cell's or GLU's gate); include_se hardens it"))
            continue
        out.append((m, _site(src, _unique(m.name, taken), m.kind, m.form, m.feed, m.readers)))
    return out


GATES = ("Sigmoid", "Tanh", "HardSigmoid")


def _gate(src: SiteSource, m: Candidate) -> str | None:
    """The Mul where a squashing activation's output scales another computed tensor (LSTM/GRU gates
    decomposed into plain ops, GLU), else None. A single-op LSTM or GRU hides the same gates."""
    if m.kind not in GATES:
        return None
    for node in src.users(m.out):
        others = [v for v in src.computed_inputs(node) if v is not m.out]
        if len(others) == 1 and src.scales(node, m.out, others[0]):
            return src.node_name(node)
    return None


def _residual_sites(src: SiteSource, claimed: set, fed: set, rejected: list, taken: set) -> list[Site]:
    sites = []
    for node, a, b, out in src.residual_adds():
        if id(node) in claimed or src.is_const(a) or src.is_const(b) or not is_residual(src.shape(a), src.shape(b)):
            continue
        if id(out) in fed:
            continue  # already guarded as the input of an activation
        name = src.node_name(node)
        if src.is_graph_output(out):
            rejected.append(Rejection(name, "Add", "residual output is a graph output"))
            continue
        if squeeze_excite_gate(src, a, out):
            continue
        sites.append(_site(src, _unique(name, taken), RESIDUAL, "Add", out, src.all_readers(out),
                           producer="Add (residual)", all_uses=True))
    return sites


def _linear_input_sites(src: SiteSource, include_se: bool, rejected: list, taken: set) -> list[Site]:
    found = src.linear_inputs()
    if found is None:
        raise UsageError("is not supported on this graph kind (use activations or activations+residual)",
                         param="placement")
    sites = []
    for node, x, name in found:
        node_name, op = src.node_name(node), src.describe_linear(node)
        if src.is_graph_input(x) or src.is_const(x):
            rejected.append(Rejection(node_name, op, "input is a graph input (raw data), not a feature"))
            continue
        if not include_se and squeeze_excite_gate(src, x, src.outputs(node)[0]):
            rejected.append(Rejection(node_name, op, "inside a Squeeze-and-Excitation branch"))
            continue
        sites.append(_site(src, _unique(name, taken), op, "input", x, [src.reader(node, 0)]))
    return sites


def build_site_table(src: SiteSource, placement: Placement | str, selection: Selection = Selection()) -> SiteTable:
    """The sites of ``placement`` in the graph behind ``src``, filtered and re-axed by ``selection``."""
    return select(found_sites(src, placement, selection.include_se), selection, src.shape)


def found_sites(src: SiteSource, placement: Placement | str, include_se: bool = False) -> SiteTable:
    """Every site of ``placement`` the rules find in the graph behind ``src``, before the user's selection."""
    placement = Placement(placement)
    rejected: list[Rejection] = []
    taken: set[str] = set()
    if placement is Placement.LINEAR_INPUTS:
        sites = _linear_input_sites(src, include_se, rejected, taken)
    else:
        acts = _activation_sites(src, include_se, rejected, taken)
        sites = [s for _, s in acts]
        if placement is Placement.ACTIVATIONS_RESIDUAL:
            claimed = {id(n) for m, _ in acts for n in m.nodes}
            fed = {id(s.feed) for s in sites}
            sites += _residual_sites(src, claimed, fed, rejected, taken)
            order = src.order()
            sites.sort(key=lambda s: min(order[id(src.reader_node(r))] for r in s.readers))
    return SiteTable(placement, sites, rejected)


def select(table: SiteTable, selection: Selection, shape_of) -> SiteTable:
    """The user's include/exclude patterns and channel-axis overrides over ``table`` (the found sites stay
    untouched: new Site objects); a site still without a channel axis of fixed size is rejected with its
    reason. ``shape_of(feed)`` is the graph's static shape of a site's tensor."""
    kept, rejected = [], list(table.rejected)
    for s in table.sites:
        why = selection.rejects((s.name, s.feed_name))
        if why:
            rejected.append(Rejection(s.name, s.kind, why))
        else:
            kept.append(s)
    by_name = {s.name: i for i, s in enumerate(kept)}
    for name, axis in selection.axes:
        if name not in by_name:
            raise UsageError(f"names unknown site {name!r}; `mstransform sites` lists them", param="axes")
        s = kept[by_name[name]]
        if s.rank is not None and not -s.rank <= axis < s.rank:
            raise UsageError(f"{axis} is out of range for site {name!r} of rank {s.rank}", param="axes")
        ax = axis % s.rank if s.rank is not None else axis
        shape = shape_of(s.feed)
        kept[by_name[name]] = dataclasses.replace(s, axis=ax, axis_rule="override", no_axis="",
                                                  channels=shape[ax] if shape is not None else None)
    rejected += [Rejection(s.name, s.kind, s.no_axis) for s in kept if s.no_axis]
    return SiteTable(table.placement, [s for s in kept if not s.no_axis], rejected)
