"""Graph passes: find MeanSparse sites in an ONNX graph and insert the sparsify operator.

The ONNX passes work on an ``onnx_ir`` model. Site finding is an analysis that
returns a :class:`SiteTable` (with a reason for every activation it did not
match); insertion is an ``onnx_ir`` in-place pass whose result says whether
anything changed.
"""
from mstransform.passes.sites import Placement, Rejection, Site, SiteTable, find_sites
from mstransform.passes.sparsify import InsertSparsifyPass, SiteParams

__all__ = [
    "InsertSparsifyPass",
    "Placement",
    "Rejection",
    "Site",
    "SiteParams",
    "SiteTable",
    "find_sites",
]
