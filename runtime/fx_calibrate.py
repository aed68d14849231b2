"""Calibration of torch models through the FX pass: observers at the sites, exact float64 moments."""
from __future__ import annotations

import inspect
import itertools

import numpy as np
import torch
import torch.nn as nn

from mstransform.core.errors import DataError, ModelError
from mstransform.core.moments import Moments, chan_merge
from mstransform.core.options import Placement, Selection
from mstransform.core.stats import SiteStats, Stats
from mstransform.passes.fx.transform import (batch_error, check_arity, editable, fx_fingerprint, input_record, insert_module, placement_of,
                                   site_table)
from mstransform.runtime.dataset import Dataset, ModelInput, split_item, to_array


class MomentsObserver(nn.Module):
    """Identity that folds every tensor it sees into per-channel moments, kept where the tensor is.

    Each batch is reduced on its own device in float64 (whatever the model's dtype: fp32, fp16,
    bf16) and merged into the running moments there, with Chan's rule on C-sized float64
    vectors: nothing is copied to the host and nothing waits for the device until
    :attr:`moments` is read, once, after the last batch (a copy per site and batch would stall
    a GPU's queue 49 times a batch on ResNet-50). Each batch's mean and variance come from one
    float64 pass (``torch.var_mean``, Welford's update), exact to float64 rounding for any
    realistic batch: fp16/bf16 inputs convert to float64 exactly.
    """

    def __init__(self, axis: int, extent: bool = False):
        super().__init__()
        self.axis, self.extent = axis, extent  # extent: also max |x| (forged mode's), one more read
        self.count = 0
        self._mean = self._m2 = self._absmax = None  # (C,) float64, on the device of the tensors seen
        self.rank: int | None = None
        self.dtype = "float32"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            d = x.detach().double()
            dims = [i for i in range(d.ndim) if i != self.axis]
            n = d.numel() // max(d.shape[self.axis], 1)
            var, mean = torch.var_mean(d, dim=dims, correction=0)  # one pass (Welford), no temporaries
            self._fold(n, mean, var * n, d.abs().amax(dim=dims) if self.extent else None)
        self.rank = x.ndim
        self.dtype = str(x.dtype).removeprefix("torch.")
        return x

    def _fold(self, n: int, mean: torch.Tensor, m2: torch.Tensor, absmax: torch.Tensor | None) -> None:
        """One batch folded into the running moments, on the device (the merge :class:`Moments` uses)."""
        if n == 0:
            return
        if self.count == 0:
            self.count, self._mean, self._m2, self._absmax = n, mean, m2, absmax
            return
        self._mean, self._m2 = chan_merge(self.count, self._mean, self._m2, n, mean, m2)
        self._absmax = None if absmax is None else torch.maximum(self._absmax, absmax)
        self.count += n

    @property
    def moments(self) -> Moments | None:
        """The moments so far, on the host (the one copy from the device); None before any batch."""
        if self.count == 0:
            return None
        parts = [self._mean, self._m2] + ([] if self._absmax is None else [self._absmax])
        packed = torch.stack(parts).cpu().numpy()
        return Moments(self.count, packed[0], packed[1], packed[2] if len(parts) == 3 else None)


def _forward_names(model) -> list[str]:
    """The names of the inputs a torch model requires, in order (to place a dict batch's values)."""
    if isinstance(model, torch.export.ExportedProgram):
        return [s.arg.name for s in model.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    if isinstance(model, torch.fx.GraphModule):
        return [n.name for n in model.graph.nodes if n.op == "placeholder" and not n.args]
    params = inspect.signature(model.forward).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]


def _tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(to_array(x, "a data batch"))


def _positional(model, given: ModelInput) -> tuple[torch.Tensor, ...]:
    """One batch as the module's positional inputs (:mod:`mstransform.runtime.dataset` reads the item)."""
    if given.single is not None:
        values = (given.single,)
    elif given.positional is not None:
        values = given.positional
    else:
        named, _ = given.by_name(_forward_names(model), "the module")
        values = tuple(named.values())
    return tuple(_tensor(v) for v in values)


def scaled_whole(x: torch.Tensor) -> torch.Tensor:
    """Samples given whole: uint8 (images) scaled to [0, 1] exactly as the ONNX path scales them
    (float32 times float32(1/255)); anything else as it is."""
    if x.dtype != torch.uint8:
        return x
    return x.to(torch.float32) * torch.tensor(np.float32(1 / 255))


def _batches(model, data, batch_size: int, limit: int | None):
    """Batches (tuples of the module's inputs) streamed from ``data`` (never materialised), cut at ``limit``."""
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.ascontiguousarray(data))
    if isinstance(data, torch.Tensor):
        source = ((scaled_whole(data[i:i + batch_size]),) for i in range(0, len(data), batch_size))
    else:
        transformed = isinstance(data, Dataset)
        source = (_positional(model, split_item(item, transformed)) for item in data)
    seen = 0
    for xs in source:
        if limit is not None:
            xs = tuple(x[:limit - seen] for x in xs)
        seen += len(xs[0])
        yield xs
        if limit is not None and seen >= limit:
            return  # stop before pulling another batch from a lazy source


def _forward(gm, xs: tuple, start: int) -> None:
    """One batch through the observed module; a batch the module cannot take is one line, not a traceback."""
    try:
        gm(*xs)
    except Exception as e:
        raise batch_error(e, xs, f"the batch of sample {start},") from None


def calibrate_fx(model, data, *, placement: Placement | str = Placement.ACTIVATIONS, example: tuple | None = None,
                 batch_size: int = 64, limit: int | None = None, include_se: bool = False,
                 progress: bool = True, extent: bool = False) -> Stats:
    """Per-site statistics of a torch model over ``data`` (same schema as the ONNX path).

    ``data``: a tensor or array (cut into ``batch_size`` batches; uint8 scaled to [0, 1] as on the ONNX
    path), or any iterable of batches -- tensors, ``(inputs, labels)`` tuples or dicts, e.g. a
    ``DataLoader``, or an :class:`~mstransform.runtime.dataset.Dataset` -- read by the rule of
    :mod:`mstransform.runtime.dataset`, unscaled; a module of several inputs takes a tuple of them per
    batch. It is streamed: memory does not grow with the number of samples. Floating-point batches are moved to the device and
    dtype of the model's weights (a CPU float32 DataLoader feeds a CUDA bfloat16 model as is).
    ``extent`` also measures each channel's max ``|x|`` (forged mode needs it), as on the ONNX path.
    """
    from tqdm.auto import tqdm

    place = placement_of(model)
    batches = (tuple(place(x) for x in xs) for xs in _batches(model, data, batch_size, limit))
    first = next(batches, None)
    if first is None:
        raise DataError("no calibration data")
    example = example or tuple(x[:1] for x in first)
    selection = Selection(include_se=include_se, framework="fx")
    gm, exported = editable(model, example)
    table = site_table(gm, exported, placement, selection)
    if len(table) == 0:  # as on the ONNX path: empty stats are no result
        why = f" ({table.rejected[0].node}: {table.rejected[0].reason})" if table.rejected else ""
        raise ModelError(f"the torch model has no sites to calibrate{why}")
    fingerprint = fx_fingerprint(gm)  # of the model's own graph, before the observers go in
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    inputs = (input_record(names[0], first[0]),) if len(names) == 1 else ()
    observers = {}
    for i, site in enumerate(table):
        obs = MomentsObserver(site.axis if site.axis is not None else 1, extent)
        insert_module(gm, site, obs, f"_mst_observer_{i}")
        observers[site.name] = obs
    gm.recompile()
    gm.eval()
    samples = 0
    bar = tqdm(unit="img", desc="calibrating", disable=None if progress else True, leave=False)
    with torch.no_grad():
        check_arity(gm, first)
        for xs in itertools.chain([first], batches):
            _forward(gm, xs, samples)
            samples += len(xs[0])
            bar.update(len(xs[0]))
    bar.close()
    sites = {name: SiteStats(name, site.feed.name, site.kind, obs.axis, obs.rank, obs.dtype, obs.moments)
             for (name, obs), site in zip(observers.items(), table)}
    return Stats(fingerprint, table.placement, sites, samples, selection, inputs)
