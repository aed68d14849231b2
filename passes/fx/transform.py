"""The torch.fx pass: the same sites and operator as the ONNX pass, inside PyTorch.

Input: an ``nn.Module`` (traced with ``torch.fx.symbolic_trace``), a ``torch.export``
``ExportedProgram`` (its unlifted ``.module()`` is used), or a ``GraphModule``. Sites come
from the shared finder and catalogue through :class:`~mstransform.passes.fx.finder.FxView`;
:class:`~mstransform.passes.fx.module.MeanSparse` modules are inserted on the device of the
tensors they guard. The caller's model is never edited: the pass works on a private copy.

Statistics are checked against the graph before anything is inserted, as the ONNX pass checks them:
site names (or, where the graph is not the calibrated one, kinds by position), and every site's channel
count. Where the graph carries no shapes (a traced ``nn.Module`` without ``example``), they are
propagated from the calibration samples the stats record; another model's stats fail there, in one
:class:`~mstransform.core.errors.StatsError` line, never later in ``forward``.
"""
from __future__ import annotations

import copy
import hashlib
import warnings

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from mstransform.core.errors import DataError, StatsError, UsageError
from mstransform.core.options import AlphaPlan, Center, Mode, Placement, Selection
from mstransform.core.stats import InputRecord, Stats
from mstransform.passes.fx.finder import FxView
from mstransform.passes.fx.module import MeanSparse
from mstransform.passes.sites.finder import Site, SiteTable, build_site_table
from mstransform.passes.sites.plan import build_plan


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

        check_arity(gm, example)
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(*example)
        except Exception as e:  # the module cannot take this batch: one line, not torch's traceback
            raise batch_error(e, example, "a batch of") from None
    return gm, exported


def batch_error(e: Exception, batch: tuple, where: str) -> DataError:
    """One line for a batch the module cannot take: the innermost reason (ShapeProp wraps it), the batch's
    shapes, and where it holds uint8, that batches formed in Python pass unscaled."""
    while e.__cause__ is not None:
        e = e.__cause__
    shapes = ", ".join(f"{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}" if torch.is_tensor(x)
                       else type(x).__name__ for x in batch)
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    hint = (" (batches formed in Python pass unscaled: scale them, e.g. mst.Dataset(loader, lambda b: "
            "b[0].float() / 255))" if any(torch.is_tensor(x) and x.dtype == torch.uint8 for x in batch) else "")
    return DataError(f"the module fails on {where} {shapes}: {reason}{hint}")


def check_arity(gm: fx.GraphModule, example: tuple) -> None:
    """One line where a batch holds another number of inputs than the module takes."""
    holders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    names, required = [n.name for n in holders], sum(not n.args for n in holders)  # args: a default value
    if not required <= len(example) <= len(names):
        raise DataError(f"the module takes {len(names)} input(s) ({', '.join(names)}); a batch holds "
                        f"{len(example)} (a tuple batch is (inputs, labels): give ((x1, x2), labels) batches, "
                        "or mst.Dataset(loader, tuple) to pass a tuple as the inputs)")


def editable(model, example: tuple | None = None) -> tuple[fx.GraphModule, bool]:
    """A private copy of the model's graph, so inserting operators never edits the caller's."""
    gm, exported = to_graph_module(model, example)
    with warnings.catch_warnings():  # copying a torch.export module's pytree specs runs torch's own deprecated
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning)  # LeafSpec check (torch 2.13): nothing the user can act on
        return copy.deepcopy(gm), exported


def site_table(gm: fx.GraphModule, exported: bool, placement: Placement | str = Placement.ACTIVATIONS,
               selection: Selection = Selection()) -> SiteTable:
    """The site table of ``gm`` (same catalogue and rules as the ONNX pass)."""
    return build_site_table(FxView(gm, exported), placement, selection)


def find_fx_sites(model, placement: Placement | str = Placement.ACTIVATIONS, *, example: tuple | None = None,
                  include_se: bool = False) -> tuple[fx.GraphModule, SiteTable]:
    """A private GraphModule of ``model`` and its site table."""
    gm, exported = editable(model, example)
    return gm, site_table(gm, exported, placement, Selection(include_se=include_se, framework="fx"))


def placement_of(model):
    """A function that moves a batch to the device (and, where floating point, the dtype) of ``model``'s
    first floating-point weight: a CPU float32 batch feeds a CUDA bfloat16 model as is."""
    state = model.state_dict if isinstance(getattr(model, "state_dict", None), dict) else model.state_dict()
    ref = next((t for t in state.values() if torch.is_tensor(t) and t.is_floating_point()), None)
    if ref is None:
        return lambda x: x
    return lambda x: x.to(device=ref.device, dtype=ref.dtype) if x.is_floating_point() else x.to(ref.device)


def input_record(name: str, x: torch.Tensor) -> InputRecord:
    """One calibration sample's shape and type, as the stats file records an input (batch axis 0)."""
    try:
        dtype = str(np.dtype(str(x.dtype).removeprefix("torch.")))
    except TypeError:  # bfloat16 has no numpy type: recorded as the float type data comes in
        dtype = "float32"
    return InputRecord(name, dtype, (1, *(int(d) for d in x.shape[1:])), 0)


def _propagate_recorded(gm: fx.GraphModule, model, stats: Stats) -> None:
    """Shapes on ``gm``'s nodes from a batch of two zero samples shaped as the stats' recorded inputs."""
    from torch.fx.passes.shape_prop import ShapeProp

    records = [r for r in stats.inputs if r.batch_axis is not None]
    if len(records) != len(stats.inputs) or len(records) != sum(n.op == "placeholder" for n in gm.graph.nodes):
        return
    place = placement_of(model)
    batch = tuple(place(torch.zeros((2, *r.shape[1:]), dtype=torch.from_numpy(np.zeros(0, r.dtype)).dtype))
                  for r in records)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*batch)
    except Exception as e:  # the model does not take the calibrated inputs: not its stats
        shapes = ", ".join(str(tuple(r.shape)) for r in records)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise StatsError(f"stats were measured on inputs of shape {shapes} (one sample), which this model does not "
                         f"take ({reason}); stats of another model?") from None


def site_device(gm: fx.GraphModule, site: Site) -> torch.device:
    """Where the guarded tensor lives: its traced value's device, else the module's first tensor's."""
    val = site.feed.meta.get("val", site.feed.meta.get("example_value"))
    if isinstance(val, torch.Tensor):
        return val.device
    first = next(iter(gm.parameters()), None)
    if first is None:  # `or` would ask a tensor for its truth value
        first = next(iter(gm.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def insert_module(gm: fx.GraphModule, site: Site, module: nn.Module, attr: str) -> None:
    """Call ``module`` on the site's tensor and route its readers through the result."""
    gm.add_submodule(attr, module)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    first = min(site.readers, key=order.__getitem__)
    with gm.graph.inserting_before(first):
        new = gm.graph.call_module(attr, (site.feed,))
    if site.all_uses:
        site.feed.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    else:
        for reader in site.readers:
            reader.replace_input_with(site.feed, new)


def fx_fingerprint(gm: fx.GraphModule) -> str:
    """The structure of ``gm`` (ops, targets, arguments): equal for two traces of one model, whatever its widths."""
    h = hashlib.sha256()
    for n in gm.graph.nodes:
        h.update(f"{n.op}|{n.target}|{[getattr(a, 'name', repr(a)) for a in n.args]}".encode())
    return "fx:" + h.hexdigest()[:13]


def harden_fx(model, stats: Stats, alpha: float | AlphaPlan = 0.2, *, mode: Mode | str = Mode.MEANSPARSE,
              center: Center | str = Center.MEAN, example: tuple | None = None) -> fx.GraphModule:
    """A GraphModule with a :class:`MeanSparse` before every site of ``stats`` (matched by name; by position,
    kind and channel count where the graph is not the one calibrated, e.g. an exporter renamed a node).

    Channel counts come from the graph's shapes: ``torch.export`` and dynamo graphs carry them, a traced
    module gets them from ``example`` or, without it, from the calibration samples the stats record."""
    gm, exported = editable(model, example)
    if example is None and not exported:
        _propagate_recorded(gm, model, stats)
    sel = stats.selection
    table = site_table(gm, exported, stats.placement, Selection(include_se=sel.include_se, framework="fx"))
    unknown = [s.name for s in table if s.rank is None]
    if unknown:
        raise UsageError(f"gives no shape for site {unknown[0]!r} and the stats record no inputs it takes: pass "
                         "example (one batch of the model's inputs), so that the stats' channel counts can be checked",
                         param="model")
    same = stats.fingerprint == fx_fingerprint(gm)  # the graph calibrated: names must match as they are
    plan = build_plan(table, stats, alpha, Mode(mode), Center(center), by_position=not same, check_feeds=False)
    for i, (site, params) in enumerate(plan.entries):
        st, a = plan.stats.sites[site.name], plan.alphas[site.name]
        sigma = params.threshold / a if a > 0 else np.sqrt(st.moments.var)
        op = MeanSparse(params.center, sigma, a, rank=site.rank, axis=site.axis, site=site.name,
                        device=site_device(gm, site))
        insert_module(gm, site, op, f"meansparse_{i}")
    gm.recompile()
    return gm


def meansparse_backend(stats: Stats, alpha: float | AlphaPlan = 0.2, *, mode: Mode | str = Mode.MEANSPARSE,
                       center: Center | str = Center.MEAN, inner=None):
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
