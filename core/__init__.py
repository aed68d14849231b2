"""The floor every room stands on: errors, typed options, the operator's reference definition,
moments, statistics and their file format, safe npz reading and atomic file output.

Nothing here imports from any other room (an import-linter contract in ``pyproject.toml`` enforces it), and
nothing here imports onnx, onnxruntime or torch: the floor is numpy only.
"""

__version__ = "0.2.0"  # the package's version, mstransform.__version__ (provenance records it)
