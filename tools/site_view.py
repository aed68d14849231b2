"""``sites --stats S --alpha A --data D``: how much each operator blocks, site by site across depth.

The fractions are measured on data (:mod:`mstransform.runtime.replaced`), never estimated from the
statistics; the figure plots them against the site's depth (its index in the site table, input to
output), since alpha is tuned per depth (``--alpha '/block4/.*=0.1'``).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from mstransform.core.options import AlphaPlan, Center, Mode, Runtime
from mstransform.core.stats import Stats, load_stats
from mstransform.robustness.plots import save_png
from mstransform.runtime.data import Preprocess
from mstransform.runtime.replaced import SiteFraction, replaced_fractions
from mstransform.tools.arguments import checked

__all__ = ["SiteFraction", "SiteFractions", "site_fractions"]


class SiteFractions(list):
    """The replaced fraction of every site (a :class:`SiteFraction` each), in depth order."""

    def format(self) -> str:
        """The sites for people: depth, name, activation, channels, alpha and the fraction replaced."""
        head = ("depth", "site", "activation", "channels", "alpha", "replaced", "values")
        cells = [(str(r.depth), r.name, r.kind, str(r.channels), f"{r.alpha:g}",
                  "unreached" if r.fraction is None else f"{100 * r.fraction:.2f}%", str(r.values)) for r in self]
        widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]
        right = {0, 3, 4, 5, 6}
        return "\n".join("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                         .rstrip() for r in [head, *cells])

    def to_dict(self) -> dict:
        """The sites for machines: each one's fields and its fraction (None where no value reached it)."""
        return {"sites": [{**asdict(r), "fraction": r.fraction} for r in self]}

    def save(self, plot_path, title: str = "") -> None:
        """The figure: every site's replaced fraction against its depth, one marker per activation kind (PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * len(self) + 3), 4))
        reached = [r for r in self if r.fraction is not None]
        ax.plot([r.depth for r in reached], [100 * r.fraction for r in reached], "-", color="0.7", lw=1)
        for kind in sorted({r.kind for r in reached}):
            mine = [r for r in reached if r.kind == kind]
            ax.plot([r.depth for r in mine], [100 * r.fraction for r in mine], "o", label=kind)
        alphas = sorted({r.alpha for r in self})
        ax.set_xlabel("site depth (index in the site table, input to output)")
        ax.set_ylabel("values replaced by the operator (%)")
        ax.set_title(title or f"replaced fraction per site, alpha {', '.join(f'{a:g}' for a in alphas)}")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        save_png(fig, plot_path)


@checked
def site_fractions(model: str | Path, stats: Stats | str | Path, data, alpha: float | AlphaPlan = 0.2, *,
                   mode: Mode | str = Mode.MEANSPARSE, center: Center | str = Center.MEAN, batch_size: int = 64,
                   limit: int | None = None, preprocess: Preprocess | None = None, threads: int | None = None,
                   runtime: Runtime | str = Runtime.ONNXRUNTIME,
                   batch_axes: dict[str, int | None] | None = None) -> SiteFractions:
    """Per site of ``stats``, the fraction of ``data``'s values at that site that the operator at ``alpha``
    replaces (``|x - c| < alpha * sigma``, counted value by value in the tensor's type), in depth order."""
    return SiteFractions(replaced_fractions(
        model, stats if isinstance(stats, Stats) else load_stats(stats), data, alpha, mode=Mode(mode),
        center=Center(center), batch_size=batch_size, limit=limit, preprocess=preprocess, threads=threads,
        runtime=runtime, batch_axes=batch_axes))
