"""Figure 1 of the MeanSparse paper for one site and channel: the clean feature histogram
with the mean and the blocked band, before and after the operator."""
from __future__ import annotations

import numpy as np

from mstransform.errors import UsageError


def site_channel_values(model, site_name: str, channel: int, data, limit: int = 512) -> tuple[np.ndarray, int]:
    from mstransform.passes.sites import find_sites
    from mstransform.runtime.calibrate import expose_sites
    from mstransform.runtime.data import DataSource
    from mstransform.runtime.session import input_specs, make_session
    from mstransform.tools.api import load_model

    m = load_model(model)
    table = find_sites(m, "activations+residual")
    site = table.by_name().get(site_name)
    if site is None:
        raise UsageError(f"no site {site_name!r}; `mstransform sites` lists them")
    expose_sites(m, table)
    session = make_session(m)
    values = []
    axis = site.axis
    for batch in DataSource(data, input_specs(m), batch_size=64, limit=limit):
        x = session.run([site.feed.name], batch.inputs)[0]
        axis = axis if axis is not None else (x.ndim - 1 if x.ndim <= 3 else 1)
        if not 0 <= channel < x.shape[axis]:
            raise UsageError(f"site {site_name!r} has {x.shape[axis]} channels; --channel {channel} is out of range")
        values.append(np.take(x, channel, axis=axis).reshape(-1))
    return np.concatenate(values), axis


def plot_histogram(values: np.ndarray, mean: float, sigma: float, alpha: float, path, title: str) -> float:
    """Write the before/after figure; returns the fraction of values the operator replaces."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mstransform.runtime.operator import sparsify
    from mstransform.tools.atomic import atomic_output

    t = alpha * sigma
    after = sparsify(values[None, :], np.array([mean]), np.array([t]), axis=0)[0]
    replaced = float(np.mean(np.abs(values - mean) < t))
    bins = np.linspace(values.min(), values.max(), 80)
    fig, axes = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    for ax, v, label in ((axes[0], values, "before"), (axes[1], after, f"after ({100 * replaced:.1f}% set to the mean)")):
        ax.hist(v, bins=bins, color="tab:blue" if label == "before" else "tab:orange")
        ax.axvline(mean, color="k", lw=1, label=f"mean {mean:.3g}")
        ax.axvspan(mean - t, mean + t, color="tab:red", alpha=0.15, label=f"blocked |x-mean| < {alpha:g} sigma")
        ax.set_ylabel(label)
        ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    axes[0].set_title(title)
    axes[1].set_xlabel("feature value")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return replaced
