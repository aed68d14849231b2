"""mstransform: harden exported models with MeanSparse sparsify operators.

The Python API mirrors the command line::

    import mstransform as mst
    sites = mst.find_sites("model.onnx")
    stats = mst.calibrate("model.onnx", "train_sample.npz")
    stats.save("stats.npz")
    report = mst.harden("model.onnx", stats, "model.meansparse.onnx", alpha=0.2)   # written and checked
    hardened = mst.harden_model("model.onnx", stats, alpha=0.2)                    # in memory, onnx_ir
    module = mst.harden_torch(exported_program, stats, alpha=0.2)                  # torch.fx / torch.export

Names are imported on first use, so ``import mstransform`` (and the command line's start-up,
where Ctrl-C must already be handled) costs nothing until the API is touched; type checkers see
them through the ``TYPE_CHECKING`` imports below.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mstransform.core import __version__

_API = {  # name -> module it lives in
    **{n: "mstransform.tools.api" for n in (  # tools/api.py's __all__ (a test holds them equal)
        "AttackConfig", "Hardened", "HardenReport", "OneStepResult", "RunResult", "TrtCheck", "bench", "build_engine",
        "calibrate", "calibrate_and_harden", "check_trt", "compare_accuracy", "default_output", "evaluate",
        "find_sites", "harden", "harden_model", "harden_torch", "load_model", "load_stats", "merge_stats",
        "package_torch", "run", "site_fractions", "sweep")},
    **{n: "mstransform.core.options" for n in (
        "AlphaPlan", "Center", "Device", "Formulation", "Mode", "Placement", "Precision", "Runtime", "Selection")},
    "Stats": "mstransform.core.stats", "Preprocess": "mstransform.runtime.data",
    "Dataset": "mstransform.runtime.dataset",
}
__all__ = ["__version__", *sorted(_API)]

if TYPE_CHECKING:
    from mstransform.core.options import (AlphaPlan, Center, Device, Formulation, Mode, Placement, Precision,
                                          Runtime, Selection)
    from mstransform.core.stats import Stats
    from mstransform.runtime.data import Preprocess
    from mstransform.runtime.dataset import Dataset
    from mstransform.tools.api import (AttackConfig, Hardened, HardenReport, OneStepResult, RunResult, TrtCheck, bench,
                                       build_engine, calibrate, calibrate_and_harden, check_trt, compare_accuracy,
                                       default_output, evaluate, find_sites, harden, harden_model, harden_torch,
                                       load_model, load_stats, merge_stats, package_torch, run, site_fractions, sweep)


def __getattr__(name):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'mstransform' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
