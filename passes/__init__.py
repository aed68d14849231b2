"""Graph passes over ONNX (``onnx_ir``) and torch.fx graphs: find MeanSparse sites and insert the
sparsify operator.

Sub-rooms, each with one reason to change, lowest first: :mod:`~mstransform.passes.graph` (reading and
plumbing ONNX graphs), :mod:`~mstransform.passes.sites` (site finding: placement over the activation table,
computed matching, the ONNX adapter, the plan), :mod:`~mstransform.passes.onnx` (rewrites of ONNX graphs)
beside :mod:`~mstransform.passes.fx` (the torch.fx pass), and :mod:`~mstransform.passes.harden` on top (the
pass manager that hardens a model in memory, with its provenance). The activation table and the placement
rules serve both graph kinds; site finding is one analysis
(:func:`~mstransform.passes.sites.finder.build_site_table`) over two adapters; insertion is an ``onnx_ir``
in-place pass configured by site names and parameters, whose result says whether anything changed and which
records what it inserted in the model's side record. This room depends only on :mod:`mstransform.core`.
"""
from mstransform.passes.onnx.sparsify import Inserted, InsertSparsifyPass, Operator, inserted
from mstransform.passes.sites.finder import Rejection, Site, SiteTable
from mstransform.passes.sites.onnx_finder import find_sites

__all__ = ["InsertSparsifyPass", "Inserted", "Operator", "Rejection", "Site", "SiteTable", "find_sites", "inserted"]
