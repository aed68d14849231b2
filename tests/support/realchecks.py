"""Checks of the real-model tier that use none of the tool's passes: the stats file read as plain arrays,
sparsify operators found again by graph surgery, and the paper's operator in float64."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

def _read_stats(path: Path) -> list[dict]:
    """The stats file read with numpy only (schema of core/stats.py): one dict per site."""
    with np.load(path, allow_pickle=False) as z:
        names, feeds, axes = z["site_names"], z["site_feeds"], z["site_axes"]
        dtypes = z["site_dtypes"] if "site_dtypes" in z.files else ["float32"] * len(names)
        return [{"name": str(names[i]), "feed": str(feeds[i]), "axis": int(axes[i]), "dtype": str(dtypes[i]),
                 "mean": np.asarray(z[f"mean/{i}"], np.float64), "var": np.asarray(z[f"var/{i}"], np.float64)}
                for i in range(len(names))]


def _guarded(base: onnx.ModelProto, hard: onnx.ModelProto, feed: str) -> str | None:
    """The tensor that replaced ``feed`` at its readers in the hardened model ("" if none did; None: the
    tensor is not in the main graph).

    Readers are found in the base model and again in the hardened one by their first output
    (outputs keep their names); a reader whose input changed reads the operator's output.
    """
    produced = {o for n in base.graph.node for o in n.output} | {i.name for i in base.graph.input}
    if feed not in produced:
        return None
    hard_by_out = {n.output[0]: n for n in hard.graph.node if n.output}
    ys = set()
    for n in base.graph.node:
        for idx, name in enumerate(n.input):
            if name == feed and n.output and n.output[0] in hard_by_out:
                now = hard_by_out[n.output[0]].input[idx]
                if now != feed:
                    ys.add(now)
    assert len(ys) <= 1, f"site tensor {feed!r}: its readers now read {sorted(ys)}"
    return ys.pop() if ys else ""


def _expose(hard_path: Path, out_path: Path, pairs: dict[str, str], dtypes: dict[str, str]) -> None:
    model = onnx.load(str(hard_path))
    have = {o.name for o in model.graph.output}
    inputs = {i.name for i in model.graph.input}
    for x, y in pairs.items():
        elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtypes[x]))
        for name in (x, y):
            if name not in have and name not in inputs:
                model.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
                have.add(name)
    onnx.save(model, str(out_path))


def _band(site: dict, alpha: float):
    shape = [1] * site["rank"]
    shape[site["axis"]] = len(site["mean"])
    c = site["mean"].reshape(shape)
    t = (alpha * np.sqrt(site["var"])).reshape(shape)
    return c, t


def _check_operator(x: np.ndarray, y: np.ndarray, site: dict, alpha: float, label: str) -> np.ndarray:
    """``y`` against ``where(|x-c| < t, c, x)`` in float64; returns the mask. Disagreement only at the edge.

    The runtime compares ``|fl(x - c')| < t'`` with ``c', t'`` rounded to the site's type; against the
    float64 comparison that moves ``|x - c| - t`` by at most ``u (|x| + |c| + t)`` (u the unit
    roundoff of the type); twice that is the allowed edge distance.
    """
    dt = np.dtype(site["dtype"])
    u = 2.0 ** -(np.finfo(dt).nmant + 1)
    site = {**site, "rank": x.ndim}
    c, t = _band(site, alpha)
    x64 = x.astype(np.float64)
    gap = np.abs(x64 - c) - t
    mask = gap < 0
    c_cast = np.broadcast_to(c.astype(dt), x.shape)
    replaced = y == c_cast
    kept = y == x
    odd = ~(replaced | kept)
    assert not odd.any(), f"{label}: output is neither x nor the center at {int(odd.sum())} positions"
    wrong = np.where(mask, ~replaced, ~kept) & ~(replaced & kept)
    edge = 2 * u * (np.abs(x64) + np.abs(c) + t)
    far = wrong & (np.abs(gap) > edge)
    assert not far.any(), (f"{label}: {int(far.sum())} of {x.size} positions disagree with the numpy operator "
                           f"away from the band edge (first gap {float(np.abs(gap[far]).flat[0]):.3g})")
    return np.where(wrong, ~mask, mask)  # the mask the runtime applied
