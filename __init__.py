"""mstransform: harden exported models with MeanSparse sparsify operators.

The Python API mirrors the command line::

    import mstransform as mst
    sites = mst.find_sites("model.onnx")
    stats = mst.calibrate("model.onnx", "train_sample.npz")
    stats.save("stats.npz")
    report = mst.harden("model.onnx", stats, alpha=0.2, output="model.meansparse.onnx")
    hardened = mst.harden_torch(exported_program, stats, alpha=0.2)   # torch.fx / torch.export

Names are imported on first use, so ``import mstransform`` (and the command line's start-up,
where Ctrl-C must already be handled) costs nothing until the API is touched.
"""
__version__ = "0.2.0"

_API = ("calibrate", "calibrate_and_harden", "compare_accuracy", "find_sites", "harden", "harden_torch", "load_model",
        "load_stats", "package_torch", "run")
__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        from mstransform.tools import api

        return getattr(api, name)
    raise AttributeError(f"module 'mstransform' has no attribute {name!r}")
