"""Deploying hardened models: the static TensorRT check and its operator tables, the TensorRT engine
builder, and AOTInductor packages of hardened PyTorch models. Depends on :mod:`mstransform.runtime`,
:mod:`mstransform.passes` and :mod:`mstransform.core`; nothing below imports it."""
