"""The floor every room stands on: errors, typed options, the operator's reference definition,
the activation catalogue, statistics and their file format, and atomic file output.

Nothing here imports from :mod:`mstransform.passes`, :mod:`mstransform.runtime` or
:mod:`mstransform.tools` (an import-linter contract in ``pyproject.toml`` enforces it), and
nothing here imports onnx, onnxruntime or torch: the floor is numpy only.
"""
