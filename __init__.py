"""mstransform: harden exported models with MeanSparse sparsify operators.

The Python API mirrors the command line::

    import mstransform as mst
    sites = mst.find_sites("model.onnx")
    stats = mst.calibrate("model.onnx", "train_sample.npz")
    stats.save("stats.npz")
    report = mst.harden("model.onnx", stats, alpha=0.2, output="model.meansparse.onnx")
"""
__version__ = "0.1.0"

from mstransform.tools.api import calibrate, find_sites, harden, load_model, load_stats  # noqa: E402

__all__ = ["__version__", "calibrate", "find_sites", "harden", "load_model", "load_stats"]
