"""Reading and plumbing ONNX graphs: loading a file into ``onnx_ir``, its external-data files, the bodies
of control-flow nodes, exposing inner values as outputs, and a model's structural fingerprint.

The lowest sub-room of :mod:`mstransform.passes`: it imports none of its siblings."""
