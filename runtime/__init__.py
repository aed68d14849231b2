"""Running models: data, calibration, ONNX Runtime sessions, verification, the differentiable twin,
robustness evaluation and TensorRT checks. Depends on :mod:`mstransform.passes` and
:mod:`mstransform.core`, never on :mod:`mstransform.tools`."""
