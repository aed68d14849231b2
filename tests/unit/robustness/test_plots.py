"""The pictures (``robustness.plots``): the sweep figure draws its rows, and ``mstransform plot`` draws a site's
histogram with the fraction replaced."""
from __future__ import annotations

from helpers import EXAMPLE

from mstransform.robustness.alpha_rule import SweepRow

MODEL = EXAMPLE / "model.onnx"


def test_sweep_plot_draws_the_rows():
    from mstransform.robustness.plots import sweep_figure

    rows = [SweepRow(0.0, 90.0, 10.0, 10.0), SweepRow(0.1, 89.0, 30.0, 12.0), SweepRow(0.3, 80.0, 50.0, 5.0)]
    fig = sweep_figure(rows)
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    for label, field in (("clean", "clean"), ("APGD-CE (standard gradient)", "standard"),
                         ("APGD-CE straight-through (BPDA)", "bpda")):
        assert list(lines[label].get_xdata()) == [r.alpha for r in rows]
        assert list(lines[label].get_ydata()) == [getattr(r, field) for r in rows]


def test_plot_histogram(cli, example_hardened, tmp_path):
    r = cli("plot", MODEL, "--stats", example_hardened.stats, "--data", EXAMPLE / "calib.npz", "--site",
            "/block1/Relu_1", "--channel", "2", "--limit", "64", "-o", tmp_path / "h.png")
    assert r.code == 0, r.err
    frac = float(r.out.split("; ")[1].split("%")[0])
    assert 0 < frac < 100 and (tmp_path / "h.png").stat().st_size > 1000
