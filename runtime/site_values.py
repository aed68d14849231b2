"""One site's values on data, read from ONNX Runtime: the clean histogram that ``plot`` draws."""
from __future__ import annotations

import numpy as np

from mstransform.core.errors import UsageError
from mstransform.core.options import Placement
from mstransform.passes.graph.expose import exposed
from mstransform.passes.graph.load import load_model
from mstransform.passes.sites.onnx_finder import find_sites
from mstransform.runtime.data import DataSource
from mstransform.runtime.inputs import input_specs
from mstransform.runtime.session import make_session

__all__ = ["site_channel_values"]


def site_channel_values(model, site_name: str, channel: int, data, limit: int = 512) -> tuple[np.ndarray, int]:
    """Every value of ``channel`` at site ``site_name`` over the first ``limit`` samples of ``data``,
    flattened, and the site's channel axis."""
    m = load_model(model)
    table = find_sites(m, Placement.ACTIVATIONS_RESIDUAL)
    site = table.by_name().get(site_name)
    if site is None:
        raise UsageError(f"no site {site_name!r}; `mstransform sites` lists them")
    with exposed(m, [site.feed]) as seen:
        session = make_session(m)
    values = []
    axis = site.axis
    for batch in DataSource(data, input_specs(m), batch_size=64, limit=limit):
        x = session.run([seen.name_of(site.feed)], batch.inputs)[0]
        if not 0 <= channel < x.shape[axis]:
            raise UsageError(f"{channel} is out of range: site {site_name!r} has {x.shape[axis]} channels",
                             param="channel")
        values.append(np.take(x, channel, axis=axis).reshape(-1))
    return np.concatenate(values), axis
