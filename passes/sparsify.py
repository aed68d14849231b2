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
inserted comes back in its :class:`SparsifyResult`, so one instance can run on many models.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult, PostconditionError, PreconditionError

from mstransform.core.options import Formulation
from mstransform.core.params import SiteParams
from mstransform.passes.sites import Site

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)


def _max_finite(dtype: np.dtype) -> float:
    if dtype.name == "bfloat16":  # ml_dtypes' type: numpy's finfo does not know it
        import ml_dtypes

        return float(ml_dtypes.finfo(dtype).max)
    return float(np.finfo(dtype).max)


def _keys(a: np.ndarray) -> np.ndarray:
    """Unsigned integers that sort like the floats of ``a`` (-0 just below +0, infinities at the ends)."""
    bits = a.view(np.dtype(f"u{a.dtype.itemsize}"))
    sign = bits.dtype.type(1 << (8 * a.dtype.itemsize - 1))
    return np.where(bits & sign, ~bits, bits | sign)


def _floats(keys: np.ndarray, dtype: np.dtype) -> np.ndarray:
    sign = keys.dtype.type(1 << (8 * dtype.itemsize - 1))
    return np.where(keys & sign, keys ^ sign, ~keys).astype(keys.dtype).view(dtype)


def exclusive_bounds(center, threshold, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the nearest floats of ``dtype`` just outside ``{x : |fl(x - c)| < t}``.

    With ``fl`` the subtraction in ``dtype`` (what the ``where`` form and the numpy reference
    compute), the set is an interval of floats because ``fl(x - c)`` is monotone in ``x``; a
    binary search over the floats' order finds its ends ``L <= c <= H``, and ``(low, high)`` are
    the floats just before ``L`` and just after ``H`` (``-inf``/``+inf`` at the ends of the
    range). Then ``low < x < high`` holds exactly when ``|fl(x - c)| < t``. A channel with no
    such ``x`` (``t <= 0``, NaN, or ``c`` not finite) gets ``(+inf, -inf)``: nothing is inside.
    """
    dtype = np.dtype(dtype)
    c = np.asarray(center).astype(dtype)
    t = np.asarray(threshold).astype(dtype)
    with np.errstate(all="ignore"):
        ok = np.isfinite(c.astype(np.float64)) & (t.astype(np.float64) > 0)
        cs = np.where(ok, c, np.zeros((), dtype)).astype(dtype)
        ts = np.where(ok, t, np.ones((), dtype)).astype(dtype)
        big = np.array([_max_finite(dtype)], dtype=dtype)
        kmin, kmax, kc = _keys(-big)[0], _keys(big)[0], _keys(cs)
        lo, hi = np.full_like(kc, kmin), kc.copy()
        while np.any(lo < hi):  # L: the first float with fl(x - c) > -t (true at c)
            mid = lo + (hi - lo) // 2
            inside = (_floats(mid, dtype) - cs) > -ts
            lo, hi = np.where(inside, lo, mid + 1), np.where(inside, mid, hi)
        first = lo
        lo, hi = kc.copy(), np.full_like(kc, kmax)
        while np.any(lo < hi):  # H: the last float with fl(x - c) < t
            mid = hi - (hi - lo) // 2
            inside = (_floats(mid, dtype) - cs) < ts
            lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid - 1)
        low, high = _floats(first - 1, dtype), _floats(lo + 1, dtype)
        inf = np.array(np.inf).astype(dtype)
        return np.where(ok, low, inf).astype(dtype), np.where(ok, high, -inf).astype(dtype)


def bounds_threshold(center: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """A threshold whose band equals ``low < x < high`` around ``center``, in their type.

    ``low`` and ``high`` are the nearest excluded floats, so ``t = min(|fl(low - c)|, |fl(high - c)|)``
    is excluded and everything inside is below it. The matcher recomputes the bounds from this
    ``t`` and accepts the operator only if they come back unchanged."""
    with np.errstate(all="ignore"):
        t = np.minimum(np.abs(low - center), np.abs(high - center))
        return np.where(low < high, t, np.zeros((), center.dtype)).astype(center.dtype)


@dataclass(frozen=True)
class Inserted:
    """What the pass added for one site: names a verifier can expose and check."""

    site: str
    x: str
    y: str
    center: str
    threshold: str


@dataclass
class SparsifyResult(PassResult):
    inserted: list[Inserted] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class InsertSparsifyPass(InPlacePass):
    """Insert the sparsify operator before the readers of each site's tensor."""

    def __init__(self, plan: list[tuple[Site, SiteParams]], formulation: Formulation | str = Formulation.WHERE):
        super().__init__()
        self.plan = list(plan)
        self.formulation = Formulation(formulation)

    def requires(self, model: ir.Model) -> None:
        nodes = {id(n) for n in model.graph.all_nodes()}  # bodies of If/Loop/Scan too
        for site, params in self.plan:
            if site.rank is None or site.axis is None:
                raise PreconditionError(f"site {site.name!r} has no known rank/channel axis")
            if params.center.shape != params.threshold.shape or params.center.ndim != 1:
                raise PreconditionError(f"site {site.name!r}: center and threshold must be 1-D and equal in shape")
            if any(id(n) not in nodes for n, _ in site.readers):
                raise PreconditionError(f"site {site.name!r} reads from nodes that are not in the model")
            if site.feed.dtype is not None and site.feed.dtype not in FLOAT_TYPES:
                raise PreconditionError(f"site {site.name!r} is of type {site.feed.dtype}, not a float type")

    def call(self, model: ir.Model) -> SparsifyResult:
        graph = model.graph  # holds the constants; a body reads them as outer-scope values
        order = {id(n): i for g in [graph, *graph.subgraphs()] for i, n in enumerate(g)}
        result = SparsifyResult(model, False)
        for site, params in self.plan:
            if params.is_identity:
                result.skipped.append(site.name)
                continue
            first_reader = min((n for n, _ in site.readers), key=lambda n: order[id(n)])
            nodes, y, names = self._build(graph, site, params)
            first_reader.graph.insert_before(first_reader, nodes)  # in the site's own graph
            for node, idx in site.readers:
                node.replace_input_with(idx, y)
            result.inserted.append(Inserted(site.name, site.feed.name, y.name, *names))
        result.modified = bool(result.inserted)
        return result

    def ensures(self, model: ir.Model) -> None:
        for site, params in self.plan:
            if not params.is_identity and f"mstransform/{site.name}/center" not in model.graph.initializers:
                raise PostconditionError(f"site {site.name!r}: constants were not registered")

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
