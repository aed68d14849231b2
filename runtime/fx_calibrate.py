"""Calibration of torch models through the FX pass: observers at the sites, exact float64 moments."""
from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn as nn

from mstransform.core.errors import DataError
from mstransform.core.moments import Moments, chan_merge
from mstransform.core.options import Placement, Selection
from mstransform.core.stats import SiteStats, Stats
from mstransform.passes.fx import editable, fx_fingerprint, input_record, insert_module, placement_of, site_table


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


def _inputs(item):
    """The model input of one batch as PyTorch users pass it: a tensor, ``(inputs, labels)``, or a dict."""
    if isinstance(item, dict):
        tensors = [v for k, v in item.items() if k not in ("label", "labels", "target", "targets", "y")]
        if len(tensors) != 1:
            raise DataError(f"a batch dict has {len(tensors)} input tensors; give one (labels under 'labels')")
        item = tensors[0]
    elif isinstance(item, (tuple, list)):
        if not item:
            raise DataError("a batch is an empty tuple")
        item = item[0]
    return item if isinstance(item, torch.Tensor) else torch.as_tensor(np.asarray(item))


def _batches(data, batch_size: int, limit: int | None):
    """Batches streamed from ``data`` (never materialised), cut at ``limit`` samples."""
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    source = ((data[i:i + batch_size]) for i in range(0, len(data), batch_size)) if isinstance(data, torch.Tensor) \
        else (_inputs(item) for item in data)
    seen = 0
    for x in source:
        if limit is not None:
            x = x[:limit - seen]
        seen += len(x)
        yield x
        if limit is not None and seen >= limit:
            return  # stop before pulling another batch from a lazy source


def calibrate_fx(model, data, *, placement: Placement | str = Placement.ACTIVATIONS, example: tuple | None = None,
                 batch_size: int = 64, limit: int | None = None, include_se: bool = False,
                 progress: bool = True, extent: bool = False) -> Stats:
    """Per-site statistics of a torch model over ``data`` (same schema as the ONNX path).

    ``data``: a tensor or array (cut into ``batch_size`` batches), or any iterable of batches --
    tensors, ``(inputs, labels)`` tuples or dicts, e.g. a ``DataLoader``. It is streamed: memory
    does not grow with the number of samples. Floating-point batches are moved to the device and
    dtype of the model's weights (a CPU float32 DataLoader feeds a CUDA bfloat16 model as is).
    ``extent`` also measures each channel's max ``|x|`` (forged mode needs it), as on the ONNX path.
    """
    from tqdm.auto import tqdm

    place = placement_of(model)
    batches = (place(x) for x in _batches(data, batch_size, limit))
    first = next(batches, None)
    if first is None:
        raise DataError("no calibration data")
    example = example or (first[:1],)
    selection = Selection(include_se=include_se, framework="fx")
    gm, exported = editable(model, example)
    table = site_table(gm, exported, placement, selection)
    fingerprint = fx_fingerprint(gm)  # of the model's own graph, before the observers go in
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    inputs = (input_record(names[0], first),) if len(names) == 1 else ()
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
        for x in itertools.chain([first], batches):
            gm(x)
            samples += len(x)
            bar.update(len(x))
    bar.close()
    sites = {name: SiteStats(name, site.feed.name, site.kind, obs.axis, obs.rank, obs.dtype, obs.moments)
             for (name, obs), site in zip(observers.items(), table)}
    return Stats(fingerprint, table.placement, sites, samples, selection, inputs)
