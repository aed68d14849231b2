"""The pass manager that hardens an ``onnx_ir`` model in memory: plan the operators from statistics,
run the passes, record how.

:func:`harden_model` checks the statistics against the model (fingerprint, weights, sites), plans
one operator per site (:func:`~mstransform.passes.sites.plan.build_plan`) and runs the passes in
order -- an opset upgrade where the model needs one, the float conversion for fp16/bf16, the
sparsify insertion and the provenance record -- with nothing written and nothing checked:
writing and checking the result is :mod:`mstransform.runtime.publish`'s.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import PassError, PreconditionError

from mstransform.core import __version__
from mstransform.core.errors import ModelError, MstError, StatsError, UsageError
from mstransform.core.options import AlphaPlan, Center, Formulation, Mode, Precision, Selection, choice
from mstransform.core.stats import Stats, load_stats
from mstransform.passes.graph.fingerprint import fingerprint, weights_digest
from mstransform.passes.graph.load import ProvenancePass, UpgradeOpsetPass, load_model
from mstransform.passes.onnx.precision import PRECISION_TYPES, ConvertFloatPass, precision_opset_pass
from mstransform.passes.onnx.sparsify import COUNT, SKIPPED, Inserted, InsertSparsifyPass, Operator, inserted
from mstransform.passes.sites.onnx_finder import find_sites
from mstransform.passes.sites.plan import build_plan

HARDENED_MARK = COUNT  # metadata_props key the sparsify pass writes: a hardened model is refused as input


@dataclass
class Hardened:
    """A hardened model in memory (:func:`harden_model`): nothing written, nothing checked."""

    model: ir.Model
    sites: list[str]  # sites that got an operator
    skipped: list[str]  # sites left as identity (threshold 0 in every channel)
    alphas: dict[str, float]
    inserted: list[Inserted]
    stats: Stats  # as matched to the model's site names

    def to_dict(self) -> dict:
        """The hardening for machines: sites with an operator, sites left as identity, each site's alpha."""
        return {"sites": list(self.sites), "skipped": list(self.skipped), "alphas": dict(self.alphas)}

    def format(self) -> str:
        """One line for people: how many operators went in, how many sites were left as identity."""
        return inserted_line(self.sites, self.skipped)


def inserted_line(sites: list[str], skipped: list[str]) -> str:
    """``inserted N sparsify operator(s); M site(s) left as identity (threshold 0)``."""
    return (f"inserted {len(sites)} sparsify operator(s)"
            + (f"; {len(skipped)} site(s) left as identity (threshold 0)" if skipped else ""))


def harden_model(model, stats: Stats | str | Path, *, alpha: float | AlphaPlan = 0.2,
                 mode: Mode | str = Mode.MEANSPARSE, center: Center | str = Center.MEAN,
                 formulation: Formulation | str = Formulation.WHERE, selection: Selection | None = None,
                 ignore_fingerprint: bool = False, precision: Precision | str = Precision.FP32) -> Hardened:
    """Insert the sparsify operator at every site of ``stats`` into ``model`` (a path or an ``onnx_ir`` model,
    loaded afresh from a path; an ``onnx_ir`` model is changed in place) and return it in memory.

    ``alpha`` is one number or an :class:`AlphaPlan` (per-site overrides); ``selection``'s
    include/exclude patterns narrow the calibrated sites further. ``precision`` fp16/bf16 converts
    the model first (:mod:`mstransform.passes.onnx.precision`), so the operators are made in that type
    from the float64 statistics."""
    if type(model).__module__.startswith("torch") or hasattr(model, "named_modules"):
        raise UsageError("is a torch model; use mstransform.harden_torch for nn.Module / torch.export programs",
                         param="model")
    mode, center = choice(Mode, mode, "mode"), choice(Center, center, "center")
    formulation = choice(Formulation, formulation, "formulation")
    precision = choice(Precision, precision, "precision")
    plan_alpha = AlphaPlan.of(alpha)
    if not isinstance(stats, Stats):
        stats = load_stats(stats)
    m = load_model(model)
    refuse_hardened(m)
    from_fx = stats.selection.framework == "fx"  # names carry over; tensor names do not
    _check_stats(m, stats, ignore_fingerprint or from_fx)
    site_selection = dataclasses.replace(stats.selection, framework="onnx")
    table = find_sites(m, stats.placement, site_selection)
    narrow = Selection(selection.include, selection.exclude) if selection is not None else Selection()
    written = PRECISION_TYPES.get(precision)  # the type float sites will have once converted
    plan = build_plan(table, stats, plan_alpha, mode, center, narrow=narrow, by_position=from_fx,
                      check_feeds=not from_fx,
                      dtype_of=lambda s: written or (s.feed.dtype.numpy() if s.feed.dtype is not None else np.float32))
    operators = {site.name: Operator(params, site.axis, site.rank) for site, params in plan.entries}
    passes = []
    # an opset-7 export lacks Where; bf16 Conv needs opset 22
    upgrade = UpgradeOpsetPass() if precision is Precision.FP32 else precision_opset_pass(precision)
    if upgrade.missing(m):
        passes.append(upgrade)
    if precision is not Precision.FP32:
        passes.append(ConvertFloatPass(precision))
    passes += [InsertSparsifyPass(operators, formulation, placement=stats.placement, selection=site_selection),
               ProvenancePass(provenance(mode, center, plan_alpha, plan.stats, formulation, precision))]
    m = run_passes(ir.passes.PassManager(passes), m)
    done = inserted(m)
    return Hardened(m, [i.site for i in done], list(m.meta.get(SKIPPED, [])), plan.alphas, done, plan.stats)


def _check_stats(m: ir.Model, stats: Stats, by_names_only: bool) -> None:
    """Stats measured on another model (or on other weights) are refused, unless matched by names only."""
    fp = fingerprint(m)
    if fp != stats.fingerprint and not by_names_only:
        raise StatsError(f"stats were measured on another model (fingerprint {stats.fingerprint}, this model {fp}); "
                         "calibrate this model or pass", fix=("ignore_fingerprint", "True"))
    digest = weights_digest(m) if stats.weights and not by_names_only else stats.weights
    if digest != stats.weights:
        raise StatsError(f"stats were measured on a model with other weights (digest {stats.weights}, this model "
                         f"{digest}): the same architecture, trained otherwise; calibrate this model "
                         "or pass", fix=("ignore_fingerprint", "True"))


def run_passes(manager, m: ir.Model) -> ir.Model:
    """Run ``manager`` on ``m``; our own errors come out as they were raised, a pass's precondition as a
    model error (one line), anything else as the bug it is."""
    try:
        return manager(m).model
    except PassError as e:
        cause = e
        while cause is not None:
            if isinstance(cause, MstError):
                raise cause from None
            if isinstance(cause, PreconditionError):
                raise ModelError(str(cause)) from None
            cause = cause.__cause__
        raise


def refuse_hardened(m: ir.Model) -> None:
    """A model this tool hardened already is refused: harden the base model instead."""
    if HARDENED_MARK in m.metadata_props:
        raise UsageError(f"already holds {m.metadata_props[HARDENED_MARK]} sparsify operator(s) from mstransform; "
                         "harden the base model instead", param="model")


def provenance(mode: Mode, center: Center, alpha: AlphaPlan, stats: Stats, formulation: Formulation,
               precision: Precision) -> dict[str, str]:
    """The ``metadata_props`` that record how a model was hardened (:class:`ProvenancePass` writes them)."""
    return {"mstransform.version": __version__, "mstransform.mode": mode.value,
            "mstransform.center": Center.ZERO.value if mode is Mode.FORGED else center.value,
            "mstransform.alpha": alpha.describe(), "mstransform.stats_sha256": stats.sha256(),
            "mstransform.stats_fingerprint": stats.fingerprint,
            "mstransform.formulation": formulation.value, "mstransform.precision": precision.value}
