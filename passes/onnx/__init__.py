"""Rewrites of ONNX graphs: inserting the sparsify operator, recognising it in any graph, its exact
bounds, the in-graph reductions of calibration and the float16/bfloat16 conversion.

Builds on :mod:`mstransform.passes.sites` and :mod:`mstransform.passes.graph`."""
