"""Site finding: the placement rules over the activation table (``core.activations.ACTIVATIONS``),
activations recognised by what they compute, the one site analysis over graph adapters, the ONNX adapter (:func:`~mstransform.passes.sites.onnx_finder.find_sites`)
and the plan built from a site table and statistics.

Imports :mod:`mstransform.passes.graph` only; the ONNX rewrites and the FX pass build on it."""
