"""Pictures of what the operator does: Figure 1 of the MeanSparse paper for one site and channel (the
clean feature histogram with the mean and the blocked band, before and after the operator), and the
alpha sweep's accuracies against alpha."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mstransform.core.errors import UsageError
from mstransform.core.fileio import atomic_output
from mstransform.core.operator import sparsify
from mstransform.core.stats import Stats
from mstransform.robustness.alpha_rule import SweepRow
from mstransform.runtime.site_values import site_channel_values


@dataclass
class HistogramResult:
    """What the histogram of one site's channel counted: its values and the fraction the operator replaces."""

    values: int
    replaced: float

    def format(self) -> str:
        """The count for people, in one line."""
        return f"{self.values} values; {100 * self.replaced:.1f}% fall in the blocked band"

    def to_dict(self) -> dict:
        """The count for machines."""
        return {"values": self.values, "replaced": self.replaced}


def plot_site_histogram(model, stats: Stats, data, site: str, channel: int, alpha: float, path,
                        limit: int = 512) -> HistogramResult:
    """Figure 1 of the paper for ``site``/``channel`` of ``model`` on ``data``, written to ``path``."""
    if site not in stats.sites:
        raise UsageError(f"the stats have no site {site!r}; `mstransform stats inspect` lists them")
    s = stats.sites[site]
    if not 0 <= channel < s.channels:
        raise UsageError(f"{channel} is out of range: site {site!r} has {s.channels} channels", param="channel")
    values, _ = site_channel_values(model, site, channel, data, limit)
    mean, sigma = float(s.moments.mean[channel]), float(np.sqrt(s.moments.var[channel]))
    frac = plot_histogram(values, mean, sigma, alpha, path, f"{site}, channel {channel}, alpha {alpha:g}")
    return HistogramResult(len(values), frac)


def plot_histogram(values: np.ndarray, mean: float, sigma: float, alpha: float, path, title: str) -> float:
    """Write the before/after figure; returns the fraction of values the operator replaces."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    save_png(fig, path)
    return replaced


def sweep_figure(rows: list[SweepRow], title: str = ""):
    """The sweep as a matplotlib figure: one line per accuracy, alpha on x (kept apart so it can be checked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = [r.alpha for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(a, [r.clean for r in rows], "o-", label="clean")
    ax.plot(a, [r.standard for r in rows], "s-", label="APGD-CE (standard gradient)")
    ax.plot(a, [r.bpda for r in rows], "^-", label="APGD-CE straight-through (BPDA)")
    ax.set_xlabel("alpha")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "MeanSparse alpha sweep (held-out training split)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_sweep(rows: list[SweepRow], path, title: str = "") -> None:
    """The sweep's figure (:func:`sweep_figure`) as a PNG at ``path``."""
    save_png(sweep_figure(rows, title), path)


def save_png(fig, path) -> None:
    """``fig`` as a PNG at ``path``, written whole or not at all; the figure is closed."""
    import matplotlib.pyplot as plt

    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
