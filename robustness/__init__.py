"""Measuring robustness honestly: the differentiable twin of an ONNX graph and the proof that it is the
deployed model, the attacks (standard, black-box, straight-through), their reports, the alpha-selection
rule and the plots. Depends on :mod:`mstransform.runtime`, :mod:`mstransform.passes` and
:mod:`mstransform.core`; nothing below imports it."""
