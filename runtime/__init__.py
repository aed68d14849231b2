"""Running models: a model's inputs and data as batches, ONNX Runtime and OpenVINO sessions, calibration
(ONNX in-graph, FX observers, across processes), accuracy and the self-check of written models.
Depends on :mod:`mstransform.passes` and :mod:`mstransform.core`; robustness, deployment and the tools
stand above it."""
