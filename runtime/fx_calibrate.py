"""Calibration of torch models through the FX pass: observers at the sites, exact float64 moments."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from mstransform.core.errors import DataError
from mstransform.core.moments import Moments
from mstransform.core.options import Placement, Selection
from mstransform.core.stats import SiteStats, Stats
from mstransform.passes.fx import editable, fx_fingerprint, insert_module, site_table


class MomentsObserver(nn.Module):
    """Identity that folds every tensor it sees into exact float64 per-channel moments."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis
        self.moments: Moments | None = None
        self.rank: int | None = None
        self.dtype = "float32"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().numpy()
        m = Moments.of_batch(arr, self.axis)
        self.moments = m if self.moments is None else self.moments.merge(m)
        self.rank = x.ndim
        self.dtype = np.dtype(arr.dtype).name
        return x


def _batches(data, batch_size: int):
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if isinstance(data, torch.Tensor):
        for i in range(0, len(data), batch_size):
            yield data[i:i + batch_size]
        return
    for item in data:
        yield torch.as_tensor(item) if not isinstance(item, torch.Tensor) else item


def calibrate_fx(model, data, *, placement: Placement | str = Placement.ACTIVATIONS, example: tuple | None = None,
                 batch_size: int = 64, include_se: bool = False) -> Stats:
    """Exact per-site statistics of a torch model over ``data`` (same schema as the ONNX path)."""
    batches = list(_batches(data, batch_size))
    if not batches:
        raise DataError("no calibration data")
    example = example or (batches[0][:1],)
    selection = Selection(include_se=include_se, framework="fx")
    gm, exported = editable(model, example)
    table = site_table(gm, exported, placement, selection)
    observers = {}
    for i, site in enumerate(table):
        obs = MomentsObserver(site.axis if site.axis is not None else 1)
        insert_module(gm, site, obs, f"_mst_observer_{i}")
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
    return Stats(fx_fingerprint(gm), table.placement, sites, samples, selection)
