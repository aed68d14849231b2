"""A structural fingerprint of a model: which stats file belongs to which graph.

It hashes the graph's wiring (inputs, op types, edge names, initializer names, shapes
and types) but not the weight values, so it is cheap on large models. Stats measured
on one export are rejected for another export. :func:`weights_digest` covers the weight
values: two trained models of one architecture share a fingerprint but not a digest.
"""
from __future__ import annotations

import hashlib

import numpy as np
import onnx_ir as ir


def fingerprint(model: ir.Model) -> str:
    h = hashlib.sha256()
    g = model.graph

    def put(*parts) -> None:
        h.update("\x1f".join(str(p) for p in parts).encode())
        h.update(b"\x1e")

    for v in g.inputs:
        put("in", v.name, v.dtype)
    for v in g.outputs:
        put("out", v.name)
    for name, v in sorted(g.initializers.items()):
        t = v.const_value
        put("init", name, None if t is None else t.dtype, None if t is None else tuple(t.shape))
    for node in g:
        put("node", node.domain, node.op_type, *[i.name if i is not None else "" for i in node.inputs], "->",
            *[o.name for o in node.outputs])
    return h.hexdigest()[:16]


def weights_digest(model: ir.Model) -> str:
    """A digest of every initializer's name and bytes, bodies of If/Loop/Scan included."""
    h = hashlib.sha256()
    graphs = [model.graph, *model.graph.subgraphs()]
    for g in graphs:
        for name, v in sorted(g.initializers.items()):
            h.update(name.encode())
            h.update(b"\x1f")
            if v.const_value is not None:  # hashed from the (memory-mapped) buffer: no copy of the weights
                h.update(memoryview(np.ascontiguousarray(v.const_value.numpy())).cast("B"))
            h.update(b"\x1e")
    return h.hexdigest()[:16]
