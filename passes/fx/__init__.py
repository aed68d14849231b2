"""The torch.fx side: the site finder's FX adapter, torch calls seen as elementwise ops, the operator as a
torch module and the pass that inserts it.

Builds on :mod:`mstransform.passes.sites`; imports nothing of the ONNX rewrites."""
