"""The Python API; the command line is a thin layer over these functions.

``find_sites`` -> ``calibrate`` -> ``harden``: each takes a path or an ``onnx_ir``
model, raises :class:`mstransform.errors.MstError` subclasses on bad input, and never
modifies its inputs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import NameFixPass, ShapeInferencePass

import mstransform
from mstransform.errors import ModelError, StatsError, UsageError
from mstransform.passes.fingerprint import fingerprint
from mstransform.passes.sites import Placement, SiteTable, selection_rejects
from mstransform.passes.sites import find_sites as _find_sites
from mstransform.passes.sparsify import InsertSparsifyPass
from mstransform.runtime.calibrate import calibrate_table
from mstransform.runtime.data import DataSource, Preprocess
from mstransform.runtime.session import input_specs
from mstransform.runtime.stats import Stats, load_stats
from mstransform.runtime.thresholds import alpha_per_site, parse_alpha_specs, site_params
from mstransform.runtime.verify import VerifyReport, check_file, numeric_check
from mstransform.tools.atomic import atomic_folder, check_output_path

MAX_PROTO = 2**31 - 1
__all__ = ["HardenReport", "calibrate", "find_sites", "harden", "load_model", "load_stats"]


def load_model(model: str | Path | ir.Model) -> ir.Model:
    """Load an ONNX model (external data stays memory-mapped), name unnamed nodes, infer shapes."""
    if isinstance(model, ir.Model):
        return model
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelError(f"{path} is not an ONNX model ({type(e).__name__}); pass an exported .onnx file") from None
    if not proto.graph.node and not proto.graph.output:
        raise ModelError(f"{path} is not an ONNX model (no graph); pass an exported .onnx file")
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in init.external_data if e.key == "location"), None)
            if loc is None or not (path.parent / loc).is_file():
                raise ModelError(f"external data file {loc!r} of tensor {init.name!r} is missing next to {path}")
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < 7 or opset > onnx.defs.onnx_opset_version():
        raise ModelError(f"{path} uses ONNX opset {opset}; supported opsets are 7..{onnx.defs.onnx_opset_version()}")
    try:
        m = ir.serde.deserialize_model(proto)
    except Exception as e:
        raise ModelError(f"{path} is a malformed ONNX model: {str(e).splitlines()[0]}") from None
    ir.external_data.set_base_dir(m.graph, path.parent)
    m.meta["mstransform.path"] = str(path)
    _name_after_outputs(m)
    NameFixPass()(m)
    annotated = {id(v) for v in _all_values(m) if v.type is not None or v.shape is not None}
    ShapeInferencePass(strict_mode=False)(m)
    for v in _all_values(m):
        if id(v) not in annotated and (v.type is not None or v.shape is not None):
            v.meta[INFERRED] = True
    return m


INFERRED = "mstransform.inferred"


def _name_after_outputs(m: ir.Model) -> None:
    """Give unnamed nodes the dynamo exporter's convention, ``node_<first output>``.

    The dynamo exporter names nodes ``node_<fx name>``, but nodes it inlines from
    onnxscript functions come out unnamed or as ``n4``, ``n0_2``; their outputs still carry
    the FX names, so this keeps site names equal to the FX pass's. Names already taken are
    left as they are (NameFixPass fills the rest).
    """
    import re

    generic = re.compile(r"n\d+(_\d+)*")
    taken = {n.name for n in m.graph if n.name}
    for node in m.graph:
        unnamed = not node.name or generic.fullmatch(node.name)
        if unnamed and node.outputs and node.outputs[0].name:
            candidate = f"node_{node.outputs[0].name}"
            if candidate not in taken:
                node.name = candidate
                taken.add(candidate)


def _all_values(m: ir.Model):
    for node in m.graph:
        yield from node.outputs


def _drop_inferred(m: ir.Model) -> None:
    """Forget shapes this tool inferred, so the written graph carries only the annotations it came with.

    ONNX Runtime picks kernels and fusions from value_info; a model written with extra
    annotations can compute different low-order bits even where nothing was inserted.
    """
    for v in _all_values(m):
        if v.meta.get(INFERRED):
            v.shape = None
            v.type = None


def find_sites(model, placement: Placement | str = "activations", *, include=None, exclude=None, include_se=False,
               axes=None) -> SiteTable:
    """The site table of ``model`` (see :func:`mstransform.passes.find_sites`)."""
    try:
        return _find_sites(load_model(model), placement, include=include, exclude=exclude, include_se=include_se,
                           axes=axes)
    except (KeyError, ValueError) as e:
        raise UsageError(str(e).strip("'\"")) from None


def calibrate(model, data, *, placement="activations", include=None, exclude=None, include_se=False, axes=None,
              batch_size: int = 64, limit: int | None = None, preprocess: Preprocess | None = None,
              progress: bool = True, threads: int | None = None, shard: tuple[int, int] | None = None) -> Stats:
    """Measure per-site statistics of ``model`` on clean ``data``; returns :class:`Stats`.

    ``model`` is an ONNX path or ``onnx_ir`` model, or a torch ``nn.Module`` /
    ``torch.export`` program (then ``data`` is a tensor, array or iterable of batches).
    """
    if _is_torch(model):
        from mstransform.passes.fx import calibrate_fx

        return calibrate_fx(model, data, placement=placement, batch_size=batch_size, include_se=include_se)
    m = load_model(model)
    table = find_sites(m, placement, include=include, exclude=exclude, include_se=include_se, axes=axes)
    selection = {"include": include, "exclude": exclude, "include_se": include_se, "axes": axes or {}}
    return calibrate_table(m, table, data, batch_size=batch_size, limit=limit, preprocess=preprocess,
                           progress=progress, threads=threads, selection=selection, shard=shard)


@dataclass
class HardenReport:
    output: Path | None
    model: ir.Model
    sites: list[str]
    skipped: list[str]
    alphas: dict[str, float]
    verify: VerifyReport | None = None
    checks: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"inserted {len(self.sites)} sparsify operator(s)"
                 + (f"; {len(self.skipped)} site(s) left as identity (threshold 0)" if self.skipped else "")]
        if self.output is not None:
            lines.append(f"wrote {self.output}")
        lines += [f"check: {c}" for c in self.checks]
        return "\n".join(lines)


def harden(model, stats: Stats | str | Path, *, alpha: float | list[str] = 0.2, mode: str = "meansparse",
           center: str = "mean", formulation: str = "where", output: str | Path | None = None,
           include: str | None = None, exclude: str | None = None, ignore_fingerprint: bool = False,
           probe: dict[str, np.ndarray] | None = None, verify: bool = True, threads: int | None = None) -> HardenReport:
    """Insert the sparsify operator at every site of ``stats`` and (if ``output``) write and verify the model.

    For a torch ``nn.Module`` or ``torch.export`` program, returns a hardened ``GraphModule``
    (see :func:`mstransform.passes.fx.harden_fx`) instead of a report.

    ``alpha`` is one number, or a list of ``--alpha`` strings (one plain number and
    ``SITE_PATTERN=NUMBER`` overrides). The input file is never modified.
    """
    if _is_torch(model):
        from mstransform.passes.fx import harden_fx

        if not isinstance(stats, Stats):
            stats = load_stats(stats)
        return harden_fx(model, stats, alpha=float(alpha), mode=mode, center=center)
    source_path = None if isinstance(model, ir.Model) else Path(model)
    if output is not None:
        output = check_output_path(output, source_path)
    if not isinstance(stats, Stats):
        stats = load_stats(stats)
    base, overrides = parse_alpha_specs(alpha)
    m = load_model(model)
    fp = fingerprint(m)
    from_fx = (stats.selection or {}).get("framework") == "fx"  # names carry over; tensor names do not
    if fp != stats.fingerprint and not ignore_fingerprint and not from_fx:
        raise StatsError(f"stats were measured on another model (fingerprint {stats.fingerprint}, this model {fp}); "
                         "calibrate this model or pass --ignore-fingerprint")
    sel = stats.selection or {}
    table = find_sites(m, stats.placement, include=sel.get("include"), exclude=sel.get("exclude"),
                       include_se=bool(sel.get("include_se")), axes=sel.get("axes") or None)
    by_name = table.by_name()
    if from_fx and set(stats.sites) != set(by_name):
        aligned = stats.aligned_to([(t.name, t.kind, t.channels if isinstance(t.channels, int) else None)
                                    for t in table])
        stats = aligned or stats
    extra = [n for n in stats.sites if n not in by_name]
    if extra:
        raise StatsError(f"stats hold site {extra[0]!r} that this model lacks ({len(extra)} in all); "
                         "stats of another model?")
    missing = [n for n in by_name if n not in stats.sites]
    if missing:
        raise StatsError(f"site {missing[0]!r} has no statistics ({len(missing)} missing); recalibrate")
    plan_sites = [s for s in table if selection_rejects(s, include, exclude) is None]
    alphas = alpha_per_site([s.name for s in plan_sites], base, overrides)
    plan = []
    for s in plan_sites:
        st = stats.sites[s.name]
        if st.feed != s.feed_name and not from_fx:
            raise StatsError(f"site {s.name!r} guards tensor {s.feed_name!r} but the stats measured {st.feed!r}")
        if s.channels is not None and isinstance(s.channels, int) and s.channels != st.channels:
            raise StatsError(f"site {s.name!r} has {s.channels} channels but its stats have {st.channels}")
        s.axis, s.rank = st.axis, st.rank
        plan.append((s, site_params(st, alphas[s.name], mode, center)))
    pass_ = InsertSparsifyPass(plan, formulation)
    pass_(m)
    _provenance(m, mode, center, base, overrides, stats, len(pass_.inserted), formulation)
    report = HardenReport(None, m, [i.site for i in pass_.inserted], pass_.skipped, alphas)
    if output is None:
        return report
    _drop_inferred(m)
    _save(m, output, source_path)
    report.output = output
    if verify:
        try:
            report.checks += check_file(output)
            if probe is None:
                probe = synthetic_probe(m)
            axes = {s.name: s.axis for s, _ in plan}
            report.verify = numeric_check(output, pass_.inserted, probe, axes, threads=threads)
            report.checks += report.verify.checks
        except BaseException:
            _remove_output(output)
            raise
    return report


def _is_torch(model) -> bool:
    mod = type(model).__module__
    return mod.startswith("torch") or hasattr(model, "named_modules")


def _provenance(m: ir.Model, mode, center, base, overrides, stats: Stats, n: int, formulation: str) -> None:
    props = m.metadata_props
    props["mstransform.version"] = mstransform.__version__
    props["mstransform.mode"] = mode
    props["mstransform.center"] = "zero" if mode == "forged" else center
    props["mstransform.alpha"] = repr(base) + "".join(f";{p}={v!r}" for p, v in overrides)
    props["mstransform.stats_sha256"] = stats.sha256()
    props["mstransform.stats_fingerprint"] = stats.fingerprint
    props["mstransform.sites"] = str(n)
    props["mstransform.formulation"] = formulation


def _external(m: ir.Model) -> bool:
    return any(isinstance(v.const_value, ir.ExternalTensor) for v in m.graph.initializers.values())


def _save(m: ir.Model, output: Path, source: Path | None) -> None:
    """Write the model (and its external data, if any) atomically next to ``output``."""
    big = _external(m) or sum(v.const_value.nbytes for v in m.graph.initializers.values()
                              if v.const_value is not None) > MAX_PROTO // 2
    data_name = output.name + ".data"
    with atomic_folder(output.resolve().parent) as tmp:
        try:
            if big:
                ir.save(m, tmp / output.name, external_data=data_name)
            else:
                ir.save(m, tmp / output.name)
            if big:
                os.replace(tmp / data_name, output.parent / data_name)
            os.replace(tmp / output.name, output)
        except OSError as e:
            import errno

            from mstransform.errors import OutputError

            if e.errno == errno.ENOSPC:
                raise OutputError(f"disk full while writing {output}; free space and run again") from None
            raise OutputError(f"cannot write {output}: {e.strerror or e}") from None


def _remove_output(output: Path) -> None:
    for p in (output, output.parent / (output.name + ".data")):
        try:
            p.unlink()
        except OSError:
            pass


def synthetic_probe(m: ir.Model, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """A small random batch shaped like the model's inputs (dynamic dims -> ``batch`` or 1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in input_specs(m):
        if spec.shape is None:
            raise UsageError(f"input {spec.name!r} has unknown shape; pass probe data with --data")
        shape = [batch if i == 0 and d is None else (d or 1) for i, d in enumerate(spec.shape)]
        if spec.dtype.kind == "f":
            out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            out[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return out


def probe_from(data_source: DataSource, n: int = 8) -> dict[str, np.ndarray]:
    for batch in data_source:
        return {k: v[:n] for k, v in batch.inputs.items()}
    raise UsageError("no probe batch")
