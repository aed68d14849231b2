"""Graph passes over ONNX (``onnx_ir``) and torch.fx graphs: find MeanSparse sites and insert the
sparsify operator.

The activation catalogue and placement rules (:mod:`~mstransform.passes.catalogue`) are declared
once for both graph kinds; site finding is one analysis (:func:`~mstransform.passes.sites.build_site_table`)
over two adapters; insertion is an ``onnx_ir`` in-place pass configured by site names and parameters, whose
result says whether anything changed and which records what it inserted in the model's side record. This room depends only on :mod:`mstransform.core`.
"""
from mstransform.passes.onnx_view import find_sites
from mstransform.passes.sites import Rejection, Site, SiteTable
from mstransform.passes.sparsify import Inserted, InsertSparsifyPass, Operator, inserted

__all__ = ["InsertSparsifyPass", "Inserted", "Operator", "Rejection", "Site", "SiteTable", "find_sites", "inserted"]
