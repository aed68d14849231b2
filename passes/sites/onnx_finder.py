"""The ONNX adapter of the site finder: an ``onnx_ir`` graph seen through
:class:`~mstransform.passes.sites.finder.SiteSource`, and :func:`find_sites`, the ONNX entry point."""
from __future__ import annotations

import dataclasses

import onnx_ir as ir

from mstransform.core.activations import OPS
from mstransform.core.options import Placement, Selection, choice
from mstransform.core.typed import typed
from mstransform.passes.graph.subgraphs import graphs, owners, where
from mstransform.passes.graph.values import const_array, is_const, other_input, static_shape
from mstransform.passes.sites.placement import ONNX_POOLS, Layout, catalogue
from mstransform.passes.sites.finder import Candidate, Rejection, SiteTable, found_sites, select
from mstransform.passes.sites.onnx_rules import match_activations

CONV_LIKE = {"Conv", "ConvTranspose", "BatchNormalization", "MaxPool", "AveragePool", "InstanceNormalization",
             "GlobalAveragePool", "LpPool", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth"}
TOKEN_LIKE = {"MatMul", "Gemm", "LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization"}
# Elementwise ops keep the layout: every op of the activations' vocabulary, and the value-keeping ones.
LAYOUT_KEEPING = frozenset(OPS) | {"Cast", "CastLike", "Dropout"}  # and the catalogue's activations that keep it
LINEAR_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


class OnnxView:
    """Read-only questions about one ``onnx_ir`` graph, as the placement rules ask them."""

    def __init__(self, graph: ir.Graph):
        self.graph = graph

    # -- GraphView (catalogue rules) --------------------------------------------------------
    def producer(self, value):
        return value.producer()

    def is_pool(self, node) -> bool:
        return node.op_type in ONNX_POOLS

    def pooled(self, node):
        return node.inputs[0]

    def computed_inputs(self, node):
        return [v for v in node.inputs if v is not None and not is_const(v)]

    def users(self, value):
        return [use.node for use in value.uses()]

    def outputs(self, node):
        return list(node.outputs)

    def scales(self, node, value, target) -> bool:
        return node.op_type == "Mul" and other_input(node, value) is target

    def layout(self, node) -> Layout:
        op = node.op_type
        if op == "Transpose":
            perm = node.attributes.get("perm")
            perm = list(perm.as_ints()) if perm is not None else None
            rank = len(perm) if perm else 0
            if perm is not None and rank >= 4 and perm[0] == 0 and perm[-1] == 1:
                return Layout.CHANNELS_LAST
            return Layout.TOKENS_TRANSPOSED if perm == [0, 2, 1] else Layout.UNKNOWN
        if op in CONV_LIKE:
            return Layout.CONV
        if op in TOKEN_LIKE:
            return Layout.TOKENS
        return Layout.KEEP if op in LAYOUT_KEEPING or op in catalogue().layout_keeping else Layout.UNKNOWN

    def node_name(self, node) -> str:
        return node.name or "?"

    def constant_shapes(self, node) -> list[tuple[int, ...]]:
        if node.op_type not in ("Add", "Sub", "Mul", "Div"):
            return []
        return [a.shape for v in node.inputs if v is not None and (a := const_array(v)) is not None]

    def is_reduction(self, node) -> bool:
        return node.op_type.startswith("Reduce")

    # -- SiteSource ---------------------------------------------------------------------------
    def activations(self):
        matches, reasons = match_activations(self.graph)
        rejected = [Rejection(n.name or "?", n.op_type, r.reason) for n, r in reasons.items()]
        found = [Candidate(m.kind, m.form, m.feed, m.output_node.outputs[0], m.nodes, m.readers,
                           m.output_node.name or f"{m.kind}_{i}") for i, m in enumerate(matches)]
        return found, rejected

    def is_const(self, value) -> bool:
        return is_const(value)

    def residual_adds(self):
        return [(n, n.inputs[0], n.inputs[1], n.outputs[0]) for n in self.graph
                if n.op_type == "Add" and len(n.inputs) == 2]

    def linear_inputs(self):
        return [(n, n.inputs[0], f"{n.name or n.op_type}:input") for n in self.graph
                if n.op_type in LINEAR_OPS and len(n.inputs) >= 2 and is_const(n.inputs[1])]

    def describe_linear(self, node) -> str:
        return node.op_type

    def shape(self, value):
        return static_shape(value)

    def describe_producer(self, value) -> str:
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

    def is_graph_output(self, value) -> bool:
        return value.is_graph_output()

    def is_graph_input(self, value) -> bool:
        return value.is_graph_input()

    def all_readers(self, value):
        return [(use.node, use.idx) for use in value.uses()]

    def order(self):
        return {id(n): i for i, n in enumerate(self.graph)}

    def reader_node(self, reader):
        return reader[0]

    def reader(self, node, index: int):
        return (node, index)

    def value_name(self, value) -> str:
        return value.name or ""


@typed
def find_sites(model: ir.Model, placement: Placement | str = Placement.ACTIVATIONS,
               selection: Selection = Selection()) -> SiteTable:
    """The sites of ``placement`` in ``model``: its main graph, then every ``If``/``Loop``/``Scan`` body
    (see :func:`build_site_table`). A site inside a body is named after its body
    (``/If_0:then_branch/...``), so sites of two branches never share a name."""
    owned = owners(model)
    whole = SiteTable(choice(Placement, placement, "placement"), [], [])
    taken: set[str] = set()
    for graph in graphs(model):  # names first, so the selection and axis overrides see the names users see
        table = found_sites(OnnxView(graph), placement, selection.include_se)
        place = where(graph, model, owned)
        for site in table.sites:
            if place != "main":
                site = dataclasses.replace(site, name=f"{place.replace(' > ', '/')}/{site.name}", graph=place)
            name, k = site.name, 1
            while name in taken:
                name, k = f"{site.name}#{k}", k + 1
            taken.add(name)
            whole.sites.append(site if name == site.name else dataclasses.replace(site, name=name))
        whole.rejected.extend(table.rejected if place == "main" else
                              [dataclasses.replace(r, node=f"{place}/{r.node}") for r in table.rejected])
    return select(whole, selection, static_shape)
