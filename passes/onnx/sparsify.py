"""The pass that inserts the sparsify operator at each site.

Per site, with per-channel constants pre-shaped for broadcasting (``[1,C,1,1]``, ``[1,1,C]``,
...) in the site's own float type::

    d = Sub(x, center); a = Abs(d); m = Less(a, threshold); y = Where(m, center, x)

Strict ``Less`` keeps TensorRT's parser on a single comparison (``LessOrEqual`` is decomposed
into two). The ``float`` formulation computes the same values without any bool tensor, for
runtimes or precisions that reject bool ``Where``::

    m = Relu(Sign(threshold - Abs(x - center)))   # 1 where |x-c| < t else 0
    y = center * m + x * (1 - m)                  # exact: one term is always zero

The ``bounds`` formulation makes the same decisions with two comparisons of ``x`` itself::

    m = And(Greater(x, low), Less(x, high)); y = Where(m, center, x)

``fl(x - c)`` is monotone in ``x``, so ``{x : |fl(x - c)| < t}`` is an interval of floats;
``low`` and ``high`` are the nearest floats outside it (searched at harden time in the site's
own float type, :func:`exclusive_bounds`), so ``m`` equals ``Less(Abs(Sub(x, c)), t)`` on every
input, NaN included, and ``y`` equals the ``where`` form bit for bit. No float intermediate is
written (three bool tensors instead of two float and one bool); see docs/cpu-layout.md for the
runtimes it suits.

A site whose threshold is zero in every channel is the identity and is not inserted, so
``alpha = 0`` returns the model unchanged. The pass keeps no state between calls: what it
inserted goes into the model's side record (:func:`inserted`), so one instance can run on many models.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult, PostconditionError, PreconditionError

from mstransform.core.options import Formulation, Placement, Selection
from mstransform.core.params import SiteParams
from mstransform.core.typed import typed
from mstransform.passes.onnx.bounds import exclusive_bounds
from mstransform.passes.onnx.recognise import guarded
from mstransform.passes.sites.finder import Site

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)


INSERTED = "mstransform.inserted"  # model.meta: list[Inserted], what the pass inserted (in memory only)
SKIPPED = "mstransform.skipped"  # model.meta: list[str], sites left as the identity (threshold 0)
COUNT = "mstransform.sites"  # metadata_props: how many operators the model holds (written with the model)


@dataclass(frozen=True)
class Inserted:
    """What the pass added for one site: names a verifier can expose and check."""

    site: str
    x: str
    y: str
    center: str
    threshold: str


@dataclass(frozen=True)
class Operator:
    """The operator for one site, by the site's name: its constants and the axis and rank they follow."""

    params: SiteParams
    axis: int
    rank: int


@typed
def inserted(model: ir.Model) -> list[Inserted]:
    """The side record of what :class:`InsertSparsifyPass` inserted into ``model`` (empty if nothing)."""
    return list(model.meta.get(INSERTED, []))


class InsertSparsifyPass(InPlacePass):
    """Insert the sparsify operator before the readers of each named site's tensor.

    Configured by names and parameters only (``operators``: site name -> :class:`Operator`), it finds
    its targets in each model it runs on with the site finder (``placement``, ``selection``), so one
    instance runs on any model with those sites. A site whose tensor is already guarded by a sparsify
    operator is left alone, so a second run changes nothing. What was inserted goes into the model's
    side record (:func:`inserted`) and its count into ``metadata_props`` (``mstransform.sites``)."""

    def __init__(self, operators: Mapping[str, Operator], formulation: Formulation | str = Formulation.WHERE, *,
                 placement: Placement | str = Placement.ACTIVATIONS, selection: Selection = Selection()):
        super().__init__()
        self.operators = dict(operators)
        self.formulation = Formulation(formulation)
        self.placement, self.selection = Placement(placement), selection

    def _targets(self, model: ir.Model) -> list[tuple[Site, Operator]]:
        from mstransform.passes.sites.onnx_finder import find_sites

        found = find_sites(model, self.placement, self.selection).by_name()
        return [(found[name], op) for name, op in self.operators.items() if name in found]

    def requires(self, model: ir.Model) -> None:
        found = {site.name: site for site, _ in self._targets(model)}
        for name, op in self.operators.items():
            p = op.params
            if p.center.shape != p.threshold.shape or p.center.ndim != 1:
                raise PreconditionError(f"site {name!r}: center and threshold must be 1-D and equal in shape")
            if not 0 <= op.axis < op.rank:
                raise PreconditionError(f"site {name!r}: channel axis {op.axis} is outside its rank {op.rank}")
            site = found.get(name)
            if site is None:
                raise PreconditionError(f"site {name!r} is not in this model (`mstransform sites` lists its sites)")
            if site.feed.dtype is not None and site.feed.dtype not in FLOAT_TYPES:
                raise PreconditionError(f"site {name!r} is of type {site.feed.dtype}, not a float type")
            shape = site.feed.shape
            if shape is not None and len(shape) != op.rank:
                raise PreconditionError(f"site {name!r} has rank {len(shape)}; its operator was made for {op.rank}")
            if shape is not None and isinstance(shape[op.axis], int) and shape[op.axis] != p.center.shape[0]:
                raise PreconditionError(f"site {name!r} has {shape[op.axis]} channels on axis {op.axis}; its "
                                        f"operator has {p.center.shape[0]}")

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph  # holds the constants; a body reads them as outer-scope values
        order = {id(n): i for g in [graph, *graph.subgraphs()] for i, n in enumerate(g)}
        added, skipped = [], []
        for site, op in self._targets(model):
            if op.params.is_identity:
                skipped.append(site.name)
                continue
            if guarded(site.feed):
                continue  # guarded already (a second run)
            site = dataclasses.replace(site, axis=op.axis, rank=op.rank)
            first_reader = min((n for n, _ in site.readers), key=lambda n: order[id(n)])
            nodes, y, names = self._build(graph, site, op.params)
            first_reader.graph.insert_before(first_reader, nodes)  # in the site's own graph
            for node, idx in site.readers:
                node.replace_input_with(idx, y)
            added.append(Inserted(site.name, site.feed.name, y.name, *names))
        if added:
            model.meta[INSERTED] = [*inserted(model), *added]
            model.metadata_props[COUNT] = str(len(model.meta[INSERTED]))
        model.meta[SKIPPED] = skipped
        return PassResult(model, bool(added))

    def ensures(self, model: ir.Model) -> None:
        records = {r.site: r for r in inserted(model) if r.site in self.operators}
        for site, _ in self._targets(model):
            record = records.get(site.name)
            if record is None:
                continue
            if record.center not in model.graph.initializers:
                raise PostconditionError(f"site {site.name!r}: constants were not registered")
            if not guarded(site.feed):  # every reader must now read the operator's output
                raise PostconditionError(f"site {site.name!r}: its readers were not rewired to the operator")
        dangling = _dangling(model)
        if dangling:
            raise PostconditionError(f"value {dangling!r} is read but nothing produces it")

    def _build(self, graph: ir.Graph, site: Site, params: SiteParams):
        dtype = site.feed.dtype or ir.DataType.FLOAT
        np_dtype = dtype.numpy()
        shape = [1] * site.rank
        shape[site.axis] = params.center.shape[0]
        prefix = f"mstransform/{site.name}"

        def const(tag: str, arr: np.ndarray) -> ir.Value:
            tensor = ir.tensor(np.ascontiguousarray(arr.astype(np_dtype).reshape(shape)), name=f"{prefix}/{tag}")
            value = ir.Value(name=tensor.name, shape=ir.Shape(shape), type=ir.TensorType(dtype), const_value=tensor)
            graph.register_initializer(value)
            return value

        center, x = const("center", params.center), site.feed
        if self.formulation is Formulation.BOUNDS:
            low, high = exclusive_bounds(params.center, params.threshold, np_dtype)
            thr, top = const("low", low), const("high", high)
        else:
            thr = const("threshold", params.threshold)

        def node(op: str, inputs, tag: str) -> ir.Node:
            n = ir.Node("", op, inputs, name=f"{prefix}/{tag}", num_outputs=1)
            n.outputs[0].name = f"{prefix}/{tag}_out"
            if x.type is not None and not x.meta.get("mstransform.inferred"):  # annotate only like the input
                n.outputs[0].shape = x.shape
                n.outputs[0].type = ir.TensorType(ir.DataType.BOOL if op in ("Less", "Greater", "And") else dtype)
            return n

        if self.formulation is Formulation.BOUNDS:
            above = node("Greater", [x, thr], "AboveLow")
            below = node("Less", [x, top], "BelowHigh")
            inside = node("And", [above.outputs[0], below.outputs[0]], "InBand")
            where = node("Where", [inside.outputs[0], center, x], "Where")
            return [above, below, inside, where], where.outputs[0], (center.name, thr.name)
        sub = node("Sub", [x, center], "Sub")
        ab = node("Abs", [sub.outputs[0]], "Abs")
        if self.formulation is Formulation.WHERE:
            less = node("Less", [ab.outputs[0], thr], "Less")
            where = node("Where", [less.outputs[0], center, x], "Where")
            nodes = [sub, ab, less, where]
        else:
            one = const("one", np.ones(params.center.shape))
            gap = node("Sub", [thr, ab.outputs[0]], "Gap")
            sign = node("Sign", [gap.outputs[0]], "Sign")
            mask = node("Relu", [sign.outputs[0]], "Mask")
            keep = node("Sub", [one, mask.outputs[0]], "Keep")
            cm = node("Mul", [center, mask.outputs[0]], "CenterPart")
            xk = node("Mul", [x, keep.outputs[0]], "InputPart")
            out = node("Add", [cm.outputs[0], xk.outputs[0]], "Select")
            nodes = [sub, ab, gap, sign, mask, keep, cm, xk, out]
        return nodes, nodes[-1].outputs[0], (center.name, thr.name)


def _dangling(model: ir.Model) -> str | None:
    """The name of a value some node reads that no node, graph input or initializer provides."""
    provided: set[int] = set()
    for g in [model.graph, *model.graph.subgraphs()]:
        provided.update(id(v) for v in [*g.inputs, *g.initializers.values()])
        provided.update(id(v) for node in g for v in node.outputs)
    for node in model.graph.all_nodes():
        for v in node.inputs:
            if v is not None and id(v) not in provided and v.const_value is None:
                return v.name or "?"
    return None
