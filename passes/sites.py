"""Site finding: which tensors get a sparsify operator, and why others do not.

A *site* is one tensor edge in the graph plus the nodes that read it through the
operator. Three placements exist:

* ``activations`` -- the tensor entering every activation (the MeanSparse paper);
* ``activations+residual`` -- also the output of each residual ``Add`` that does not
  already feed an activation (what the official MeanSparse code does for WideResNet);
* ``linear-inputs`` -- the data input of every Conv/Gemm/MatMul with constant weights
  (the forged-function paper's placement).

Activations inside Squeeze-and-Excitation branches are skipped unless asked for.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

import onnx_ir as ir

from mstransform.passes._ir import is_const, other_input, static_shape
from mstransform.passes.catalogue import ActivationMatch, match_activations
from mstransform.passes.layout import infer_axis


class Placement(str, enum.Enum):
    ACTIVATIONS = "activations"
    ACTIVATIONS_RESIDUAL = "activations+residual"
    LINEAR_INPUTS = "linear-inputs"


@dataclass
class Site:
    """One guarded tensor. ``readers`` (node, input index) will read the sparsified tensor."""

    name: str
    kind: str
    form: str
    producer: str
    feed: ir.Value = field(repr=False)
    readers: list[tuple[ir.Node, int]] = field(repr=False)
    rank: int | None
    axis: int | None
    axis_rule: str
    channels: int | str | None

    @property
    def feed_name(self) -> str:
        return self.feed.name or ""


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

    def format(self) -> str:
        """The table ``mstransform sites`` prints."""
        head = ("#", "site", "activation", "form", "producer", "axis", "channels")
        rows = [(str(i), s.name, s.kind, s.form, s.producer,
                 "?" if s.axis is None else f"{s.axis} {s.axis_rule}", str(s.channels if s.channels is not None else "?"))
                for i, s in enumerate(self.sites)]
        widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
        lines = [f"placement: {self.placement.value}; {len(self.sites)} site(s)"]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [head, *rows]]
        if self.rejected:
            lines.append(f"not matched ({len(self.rejected)}):")
            lines += [f"  {r.node} ({r.op_type}): {r.reason}" for r in self.rejected]
        return "\n".join(lines)


POOLS = {"GlobalAveragePool", "ReduceMean", "GlobalMaxPool", "ReduceMax"}


def _squeeze_source(value: ir.Value, hops: int = 6) -> ir.Value | None:
    """If ``value`` descends from a global pooling within a few hops, the pooled feature map."""
    for _ in range(hops):
        node = value.producer()
        if node is None:
            return None
        if node.op_type in POOLS:
            return node.inputs[0]
        dynamic = [v for v in node.inputs if v is not None and not is_const(v)]
        if len(dynamic) != 1:
            return None
        value = dynamic[0]
    return None


def _gates(value: ir.Value, target: ir.Value, hops: int = 6) -> ir.Node | None:
    """The Mul within a few hops downstream of ``value`` that scales ``target``, if any."""
    frontier = [value]
    for _ in range(hops):
        nxt = []
        for v in frontier:
            for use in v.uses():
                node = use.node
                if node.op_type == "Mul" and other_input(node, v) is target:
                    return node
                nxt.extend(node.outputs)
        frontier = nxt
    return None


def _in_squeeze_excite(feed: ir.Value, out: ir.Value) -> str | None:
    source = _squeeze_source(feed)
    if source is None:
        return None
    gate = _gates(out, source)
    if gate is None:
        return None
    return f"inside a Squeeze-and-Excitation branch (gates '{gate.name}'); include_se/--include-se hardens it"


def _describe_producer(value: ir.Value) -> str:
    node = value.producer()
    if node is None:
        return "graph input" if value.is_graph_input() else "constant"
    if node.op_type == "Add":
        dynamic = [v for v in node.inputs if not is_const(v)]
        if len(dynamic) == 2:
            return "Add (residual)"
        prev = dynamic[0].producer() if dynamic else None
        if prev is not None and prev.op_type in ("MatMul", "Conv", "Gemm"):
            return f"{prev.op_type}+bias"
    return node.op_type


def _site(name, kind, form, feed, readers) -> Site:
    shape = static_shape(feed)
    rank = None if shape is None else len(shape)
    axis, rule = infer_axis(feed, rank)
    channels = shape[axis] if (shape is not None and axis is not None) else None
    return Site(name=name, kind=kind, form=form, producer=_describe_producer(feed), feed=feed, readers=readers,
                rank=rank, axis=axis, axis_rule=rule, channels=channels)


def _unique(name: str, taken: set[str]) -> str:
    base, k = name, 1
    while name in taken:
        name, k = f"{base}#{k}", k + 1
    taken.add(name)
    return name


def _activation_sites(graph: ir.Graph, include_se: bool, rejected: list[Rejection], taken: set[str]):
    matches, reasons = match_activations(graph)
    for node, reason in reasons.items():
        rejected.append(Rejection(node.name or "?", node.op_type, reason))
    out: list[tuple[ActivationMatch, Site]] = []
    for i, m in enumerate(matches):
        node = m.output_node
        if is_const(m.feed):
            rejected.append(Rejection(node.name or "?", m.kind, "input is a constant"))
            continue
        se = _in_squeeze_excite(m.feed, node.outputs[0])
        if se and not include_se:
            rejected.append(Rejection(node.name or "?", m.kind, se))
            continue
        name = _unique(node.name or f"{m.kind}_{i}", taken)
        out.append((m, _site(name, m.kind, m.form, m.feed, m.readers)))
    return out


def _residual_sites(graph: ir.Graph, claimed: set[int], fed: set[int], rejected, taken) -> list[Site]:
    sites = []
    for node in graph:
        if node.op_type != "Add" or id(node) in claimed or len(node.inputs) != 2:
            continue
        a, b = node.inputs
        if is_const(a) or is_const(b):
            continue
        sa, sb = static_shape(a), static_shape(b)
        if sa is None or sb is None or sa != sb or len(sa) < 2:
            continue
        out = node.outputs[0]
        if id(out) in fed:
            continue  # already guarded as the input of an activation
        if out.is_graph_output():
            rejected.append(Rejection(node.name or "?", "Add", "residual output is a graph output"))
            continue
        if _in_squeeze_excite(a, out):
            continue
        name = _unique(node.name or f"residual_{len(sites)}", taken)
        site = _site(name, "residual", "Add", out, [(u.node, u.idx) for u in out.uses()])
        site.producer = "Add (residual)"
        sites.append(site)
    return sites


LINEAR_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def _linear_input_sites(graph: ir.Graph, include_se: bool, rejected, taken) -> list[Site]:
    sites = []
    for node in graph:
        if node.op_type not in LINEAR_OPS or len(node.inputs) < 2 or not is_const(node.inputs[1]):
            continue
        x = node.inputs[0]
        if x.is_graph_input() or is_const(x):
            rejected.append(Rejection(node.name or "?", node.op_type, "input is a graph input (raw data), not a feature"))
            continue
        if not include_se and _in_squeeze_excite(x, node.outputs[0]):
            rejected.append(Rejection(node.name or "?", node.op_type, "inside a Squeeze-and-Excitation branch"))
            continue
        name = _unique(f"{node.name or node.op_type}:input", taken)
        sites.append(_site(name, node.op_type, "input", x, [(node, 0)]))
    return sites


def selection_rejects(site: Site, include: str | None, exclude: str | None) -> str | None:
    """Why ``--include``/``--exclude`` drop ``site`` (patterns searched in its name and tensor), or None."""
    keys = (site.name, site.feed_name)
    if include and not any(re.search(include, k) for k in keys):
        return f"not selected by include pattern {include!r}"
    if exclude and any(re.search(exclude, k) for k in keys):
        return f"excluded by pattern {exclude!r}"
    return None


def find_sites(
    model: ir.Model,
    placement: Placement | str = Placement.ACTIVATIONS,
    *,
    include: str | None = None,
    exclude: str | None = None,
    include_se: bool = False,
    axes: dict[str, int] | None = None,
) -> SiteTable:
    """Find the sites of ``placement`` in ``model``'s main graph.

    ``include``/``exclude`` are regular expressions searched in the site name and the
    guarded tensor's name; ``axes`` overrides the inferred channel axis per site name.
    """
    placement = Placement(placement)
    graph = model.graph
    rejected: list[Rejection] = []
    taken: set[str] = set()
    if placement is Placement.LINEAR_INPUTS:
        sites = _linear_input_sites(graph, include_se, rejected, taken)
    else:
        acts = _activation_sites(graph, include_se, rejected, taken)
        sites = [s for _, s in acts]
        if placement is Placement.ACTIVATIONS_RESIDUAL:
            claimed = {id(n) for m, _ in acts for n in m.nodes}
            fed = {id(s.feed) for s in sites}
            sites += _residual_sites(graph, claimed, fed, rejected, taken)
            order = {id(n): i for i, n in enumerate(graph)}
            sites.sort(key=lambda s: min(order[id(n)] for n, _ in s.readers))
    kept = []
    for s in sites:
        why = selection_rejects(s, include, exclude)
        if why:
            rejected.append(Rejection(s.name, s.kind, why))
        else:
            kept.append(s)
    for name, axis in (axes or {}).items():
        match = [s for s in kept if s.name == name]
        if not match:
            raise KeyError(f"axis override names unknown site {name!r}")
        s = match[0]
        if s.rank is not None and not -s.rank <= axis < s.rank:
            raise ValueError(f"axis {axis} is out of range for site {name!r} of rank {s.rank}")
        s.axis = axis % s.rank if s.rank is not None else axis
        s.axis_rule = "override"
        shape = static_shape(s.feed)
        s.channels = shape[s.axis] if shape is not None else None
    return SiteTable(placement, kept, rejected)
