"""The torch.fx pass: the same sites and operator as the ONNX pass, inside PyTorch.

Input: an ``nn.Module`` (traced with ``torch.fx.symbolic_trace``), a ``torch.export``
``ExportedProgram`` (its unlifted ``.module()`` is used), or a ``GraphModule``.

Site names: for a ``torch.export`` program a site is named ``node_<fx name>`` of the node
producing the activation's output -- exactly the name the dynamo ONNX exporter gives that
node -- so stats measured on the FX graph apply to its ONNX export and back. For a
``symbolic_trace`` graph the name is the activation module's path (``block1.act1``) or the
FX node name for functional calls; those correspond to no ONNX export, so use
``torch.export`` when stats must cross over.
"""
from __future__ import annotations

import copy
import hashlib
import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from mstransform.passes.sites import Placement
from mstransform.runtime.torch_ops import MeanSparse, MomentsObserver

aten = torch.ops.aten

MODULE_KINDS = {nn.ReLU: "Relu", nn.ReLU6: "Clip(ReLU6)", nn.GELU: "Gelu", nn.SiLU: "SiLU", nn.Hardswish: "HardSwish",
                nn.ELU: "Elu", nn.LeakyReLU: "LeakyRelu", nn.Mish: "Mish", nn.SELU: "Selu", nn.CELU: "Celu",
                nn.Softplus: "Softplus", nn.Tanh: "Tanh", nn.Sigmoid: "Sigmoid", nn.PReLU: "PRelu",
                nn.Hardsigmoid: "HardSigmoid"}
FUNCTION_KINDS = {
    F.relu: "Relu", torch.relu: "Relu", F.relu6: "Clip(ReLU6)", F.gelu: "Gelu", F.silu: "SiLU",
    F.hardswish: "HardSwish", F.elu: "Elu", F.leaky_relu: "LeakyRelu", F.mish: "Mish", F.selu: "Selu",
    torch.selu: "Selu", F.celu: "Celu", F.softplus: "Softplus", torch.tanh: "Tanh", torch.sigmoid: "Sigmoid",
    F.hardsigmoid: "HardSigmoid", F.prelu: "PRelu",
    aten.relu.default: "Relu", aten.relu_.default: "Relu", aten.gelu.default: "Gelu", aten.silu.default: "SiLU",
    aten.silu_.default: "SiLU", aten.hardswish.default: "HardSwish", aten.hardswish_.default: "HardSwish",
    aten.elu.default: "Elu", aten.leaky_relu.default: "LeakyRelu", aten.mish.default: "Mish",
    aten.selu.default: "Selu", aten.celu.default: "Celu", aten.softplus.default: "Softplus",
    aten.tanh.default: "Tanh", aten.sigmoid.default: "Sigmoid", aten.hardsigmoid.default: "HardSigmoid",
    aten.prelu.default: "PRelu", aten._prelu_kernel.default: "PRelu",
}
HARDTANH = {aten.hardtanh.default, aten.hardtanh_.default, F.hardtanh}
METHOD_KINDS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}
POOLS = {aten.adaptive_avg_pool2d.default, aten.mean.dim, aten._adaptive_avg_pool2d.default,
         F.adaptive_avg_pool2d, torch.mean}
MULS = {operator.mul, torch.mul, aten.mul.Tensor}
ADDS = {operator.add, torch.add, aten.add.Tensor}


@dataclass
class FxSite:
    name: str
    kind: str
    feed: fx.Node
    readers: list[fx.Node]
    rank: int | None
    axis: int | None
    channels: int | None
    all_uses: bool = False  # residual sites guard every reader of the tensor


@dataclass
class FxSiteTable:
    placement: Placement
    sites: list[FxSite]
    rejected: list[tuple[str, str, str]] = field(default_factory=list)

    def __len__(self):
        return len(self.sites)

    def __iter__(self):
        return iter(self.sites)

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.sites:
            out[s.kind] = out.get(s.kind, 0) + 1
        return out


def to_graph_module(model, example: tuple | None = None) -> tuple[fx.GraphModule, bool]:
    """A GraphModule with shape metadata, and whether it came from ``torch.export``."""
    if isinstance(model, torch.export.ExportedProgram):
        return model.module(), True
    if isinstance(model, fx.GraphModule):
        gm, exported = model, any("val" in n.meta or "example_value" in n.meta for n in model.graph.nodes)
    else:
        gm, exported = fx.symbolic_trace(model), False
    if example is not None and not exported:
        from torch.fx.passes.shape_prop import ShapeProp

        ShapeProp(gm).propagate(*example)
    return gm, exported


def _shape(node) -> tuple[int, ...] | None:
    val = (node.meta.get("val", node.meta.get("example_value")) if isinstance(node, fx.Node) else None)
    if val is not None and hasattr(val, "shape"):
        return tuple(int(d) if isinstance(d, int) else -1 for d in val.shape)
    tm = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None


def _kind(node: fx.Node, gm: fx.GraphModule) -> str | None:
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, nn.Hardtanh) and not isinstance(mod, nn.ReLU6):
            return "Clip(ReLU6)" if (mod.min_val, mod.max_val) == (0.0, 6.0) else None
        return next((k for t, k in MODULE_KINDS.items() if type(mod) is t), None)
    if node.op == "call_function":
        if node.target in HARDTANH:
            lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
            hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
            return "Clip(ReLU6)" if (lo, hi) == (0.0, 6.0) else None
        return FUNCTION_KINDS.get(node.target)
    if node.op == "call_method":
        return METHOD_KINDS.get(node.target)
    return None


def _first_input(node: fx.Node) -> fx.Node | None:
    return next((a for a in node.args if isinstance(a, fx.Node)), None)


def _is_pool(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in POOLS) or (node.op == "call_method" and node.target == "mean")


def _in_squeeze_excite(feed: fx.Node, out: fx.Node, hops: int = 6) -> bool:
    source, v = None, feed
    for _ in range(hops):
        if v is None or v.op in ("placeholder", "get_attr"):
            return False
        if _is_pool(v):
            source = _first_input(v)
            break
        v = _first_input(v)
    if source is None:
        return False
    frontier = [out]
    for _ in range(hops):
        nxt = []
        for n in frontier:
            for user in n.users:
                if user.op == "call_function" and user.target in MULS and source in user.args and n in user.args:
                    return True
                nxt.append(user)
        frontier = nxt
    return False


def _axis(rank: int | None) -> int | None:
    if rank is None:
        return None
    return rank - 1 if rank <= 3 else 1


def find_fx_sites(model, placement: Placement | str = "activations", *, example: tuple | None = None,
                  include_se: bool = False) -> tuple[fx.GraphModule, FxSiteTable]:
    """The GraphModule to edit and its site table (same catalogue and rules as the ONNX pass)."""
    placement = Placement(placement)
    if placement is Placement.LINEAR_INPUTS:
        raise NotImplementedError("the FX pass supports the activations and activations+residual placements")
    gm, exported = to_graph_module(model, example)
    sites, rejected, fed = [], [], set()
    for node in gm.graph.nodes:
        kind = _kind(node, gm)
        if kind is None:
            continue
        feed = _first_input(node)
        if feed is None or feed.op == "get_attr":
            continue
        if not include_se and _in_squeeze_excite(feed, node):
            rejected.append((node.name, kind, "inside a Squeeze-and-Excitation branch"))
            continue
        shape = _shape(feed)
        rank = None if shape is None else len(shape)
        axis = _axis(rank)
        name = f"node_{node.name}" if exported else (node.target if node.op == "call_module" else node.name)
        channels = shape[axis] if shape is not None and axis is not None else None
        sites.append(FxSite(name, kind, feed, [node], rank, axis, channels))
        fed.add(feed)
    if placement is Placement.ACTIVATIONS_RESIDUAL:
        for node in gm.graph.nodes:
            if node.op != "call_function" or node.target not in ADDS or node in fed:
                continue
            args = [a for a in node.args[:2] if isinstance(a, fx.Node)]
            if len(args) != 2 or _shape(args[0]) is None or _shape(args[0]) != _shape(args[1]):
                continue
            shape = _shape(node)
            rank = len(shape)
            name = f"node_{node.name}" if exported else node.name
            sites.append(FxSite(name, "residual", node, list(node.users), rank, _axis(rank),
                                shape[_axis(rank)], all_uses=True))
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        sites.sort(key=lambda s: min(order[r] for r in s.readers))
    return gm, FxSiteTable(placement, sites, rejected)


def _insert(gm: fx.GraphModule, site: FxSite, module: nn.Module, attr: str) -> None:
    gm.add_submodule(attr, module)
    first = min(site.readers, key=lambda n: list(gm.graph.nodes).index(n))
    with gm.graph.inserting_before(first):
        new = gm.graph.call_module(attr, (site.feed,))
    if site.all_uses:
        site.feed.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    else:
        for reader in site.readers:
            reader.replace_input_with(site.feed, new)


def fx_fingerprint(gm: fx.GraphModule) -> str:
    h = hashlib.sha256()
    for n in gm.graph.nodes:
        h.update(f"{n.op}|{n.target}|{[getattr(a, 'name', repr(a)) for a in n.args]}".encode())
    return "fx:" + h.hexdigest()[:13]


def calibrate_fx(model, data, *, placement="activations", example: tuple | None = None, batch_size: int = 64,
                 include_se: bool = False):
    """Exact per-site statistics of a torch model over ``data`` (same schema as the ONNX path)."""
    from mstransform.runtime.stats import SiteStats, Stats

    batches = list(_batches(data, batch_size))
    if not batches:
        raise ValueError("no calibration data")
    example = example or (batches[0][:1],)
    gm, table = find_fx_sites(_editable(model, example), placement, example=example, include_se=include_se)
    observers = {}
    for i, site in enumerate(table):
        obs = MomentsObserver(site.axis if site.axis is not None else 1)
        _insert(gm, site, obs, f"_mst_observer_{i}")
        observers[site.name] = obs
    gm.recompile()
    gm.eval()
    samples = 0
    with torch.no_grad():
        for x in batches:
            gm(x)
            samples += len(x)
    sites = {name: SiteStats(name, site.feed.name, site.kind, obs.axis, obs.rank, obs.dtype, obs.moments)
             for (name, obs), site in zip(observers.items(), table)}
    return Stats(fx_fingerprint(gm), table.placement.value, sites, samples,
                 {"framework": "fx", "include_se": include_se})


def harden_fx(model, stats, alpha: float = 0.2, *, mode: str = "meansparse", center: str = "mean",
              example: tuple | None = None) -> fx.GraphModule:
    """A GraphModule with a :class:`MeanSparse` before every site of ``stats`` (matched by name)."""
    from mstransform.errors import StatsError
    from mstransform.runtime.thresholds import check_alpha, site_params

    alpha = check_alpha(alpha)
    gm, table = find_fx_sites(_editable(model, example), stats.placement, example=example,
                              include_se=bool((stats.selection or {}).get("include_se")))
    names = [s.name for s in table]
    if set(names) != set(stats.sites):
        stats = stats.aligned_to([(s.name, s.kind, s.channels) for s in table]) or stats
    missing = [n for n in names if n not in stats.sites]
    extra = [n for n in stats.sites if n not in names]
    if missing or extra:
        raise StatsError(f"stats and model sites differ (missing {missing[:3]}, extra {extra[:3]}); "
                         "for ONNX stats use a torch.export program (site names node_<name>)")
    for i, site in enumerate(table):
        st = stats.sites[site.name]
        if site.channels not in (None, -1) and site.channels != st.channels:
            raise StatsError(f"site {site.name!r} has {site.channels} channels but its stats have {st.channels}")
        params = site_params(st, alpha, mode, center)
        sigma = params.threshold / alpha if alpha > 0 else np.sqrt(st.moments.var)
        op = MeanSparse(params.center, sigma, alpha, rank=st.rank, axis=st.axis, site=site.name)
        _insert(gm, site, op, f"meansparse_{i}")
    gm.recompile()
    return gm


def _editable(model, example) -> fx.GraphModule:
    """A private copy of the model's graph, so inserting operators never edits the caller's."""
    gm, _ = to_graph_module(model, example)
    return copy.deepcopy(gm)


def _batches(data, batch_size: int):
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if isinstance(data, torch.Tensor):
        for i in range(0, len(data), batch_size):
            yield data[i:i + batch_size]
        return
    for item in data:
        yield torch.as_tensor(item) if not isinstance(item, torch.Tensor) else item


def meansparse_backend(stats, alpha: float = 0.2, *, mode: str = "meansparse", center: str = "mean", inner=None):
    """A ``torch.compile`` backend that hardens the captured graph, then hands it to Inductor.

    ``torch.compile(model, backend=meansparse_backend(stats, alpha=0.2))``. Dynamo's node
    names differ from ``torch.export``'s, so stats are matched by position (kind and channel
    count must agree site by site; see :meth:`Stats.aligned_to`); a graph break that splits
    the sites across graphs is refused with that message. ``inner`` defaults to Inductor.
    """

    def backend(gm: fx.GraphModule, example_inputs):
        hardened = harden_fx(gm, stats, alpha, mode=mode, center=center)
        if inner is not None:
            return inner(hardened, example_inputs)
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(hardened, example_inputs)

    return backend
