"""One function per command: turn flags into typed options, call one API function, print.

Every path flag was checked by its role before the command runs (:func:`mstransform.tools.cli.check_paths`);
only outputs the command line derives itself (harden's default output and stats file, which no flag
names) are checked here. All other logic is in the API.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from mstransform.core.errors import UsageError
from mstransform.core.fileio import write_json
from mstransform.core.guards import check_outputs
from mstransform.core.options import AlphaPlan, Selection
from mstransform.passes.graph.external_data import with_references
from mstransform.tools.logs import LOGGER, say


def _floats(text, flag: str):
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"{flag}: expected finite numbers, got {text!r}")
    return values


def _axes(specs) -> dict[str, int]:
    out = {}
    for spec in specs or []:
        name, sep, axis = spec.rpartition("=")
        if not sep:
            raise UsageError(f"--axis {spec!r}: expected SITE=AXIS")
        try:
            out[name] = int(axis)
        except ValueError:
            raise UsageError(f"--axis {spec!r}: expected SITE=AXIS with an integer axis") from None
    return out


def _selection(a) -> Selection:
    """The site selection flags (``--include/--exclude/--include-se/--axis``) as one :class:`Selection`."""
    return Selection(a.include, a.exclude, getattr(a, "include_se", False),
                     tuple(_axes(getattr(a, "axis", None)).items()))


def _shard(spec):
    if spec is None:
        return None
    i, sep, n = spec.partition("/")
    try:
        i, n = int(i), int(n)
    except ValueError:
        raise UsageError(f"--shard {spec!r}: expected I/N, e.g. 0/4") from None
    if not sep or n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {spec!r}: need 0 <= I < N")
    return i, n


def _preprocess(a):
    from mstransform.runtime.data import Preprocess

    size = _floats(a.size, "--size")
    if size is not None and (len(size) != 2 or not all(1 <= v <= 16384 and v == int(v) for v in size)):
        raise UsageError(f"--size {a.size!r}: expected W,H, whole numbers between 1 and 16384")
    return Preprocess(a.scale, _floats(a.mean, "--mean"), _floats(a.std, "--std"),
                      tuple(int(v) for v in size) if size else None)


def _batch_axes(a):
    from mstransform.runtime.inputs import parse_batch_axes

    return parse_batch_axes(getattr(a, "batch_axis", None))


def _attack_config(a, attacks):
    from mstransform.robustness.attacks import AttackConfig

    return AttackConfig(eps=a.eps, norm=a.norm, n=a.images, batch_size=a.batch_size, seed=a.seed,
                        apgd_iters=a.apgd_iters, pgd_steps=a.pgd_steps, square_queries=a.square_queries,
                        attacks=tuple(attacks))


def cmd_sites(a) -> int:
    from mstransform.tools import api

    if a.stats is None:
        given = [f for f, v in (("--alpha", a.alpha), ("--data", a.data), ("--plot", a.plot)) if v]
        if given:
            raise UsageError(f"{given[0]} needs --stats (and --data): the replaced fraction is measured per site")
        table = api.find_sites(a.model, a.placement, _selection(a))
        print(table.format())
        _json(a, "sites", table.to_dict())
        return 0
    if a.json is not None:
        raise UsageError("--json writes the site table; leave out --stats (the fractions go to the table and --plot)")
    return _site_fractions(a)


def _path(value) -> Path | None:
    """A path flag as a Path: the command line checked every path flag by its role before the command ran
    (:func:`mstransform.tools.cli.check_paths`), so no command checks them again."""
    return None if value is None else Path(value)


def _json(a, command: str, document: dict) -> None:
    """``--json FILE``: the command's result for machines (written whole, never half)."""
    if getattr(a, "json", None) is not None:
        write_json(a.json, {"command": command, **document})


def _site_fractions(a) -> int:
    from mstransform.tools.site_view import format_fractions, plot_fractions, site_fractions

    if a.data is None:
        raise UsageError("--stats needs --data: the stats hold each channel's mean and variance, not how many values "
                         "fall in the band, so the fraction is counted on data (the calibration data will do)")
    plot = _path(a.plot)
    rows = site_fractions(a.model, a.stats, a.data, AlphaPlan.parse(a.alpha), batch_size=a.batch_size, limit=a.limit,
                          preprocess=_preprocess(a), threads=a.threads, batch_axes=_batch_axes(a))
    print(f"values the operator replaces (|x - mean| < alpha * sigma), counted on {a.data}")
    print(format_fractions(rows))
    if plot is not None:
        plot_fractions(rows, plot, f"{Path(a.model).name}: replaced fraction per site")
        print(f"wrote {plot}")
    return 0


def cmd_calibrate(a) -> int:
    from mstransform.tools import api

    out = _path(a.output)
    t0 = time.perf_counter()
    stats = api.calibrate(a.model, a.data, placement=a.placement, selection=_selection(a), batch_size=a.batch_size,
                          limit=a.limit,
                          preprocess=_preprocess(a), threads=a.threads, shard=_shard(a.shard), log=say,
                          device=a.device, runtime=a.runtime, extent=a.extent, batch_axes=_batch_axes(a))
    stats.save(out)
    print(f"calibrated {len(stats)} site(s) on {stats.samples} sample(s) in {time.perf_counter() - t0:.1f} s; "
          f"wrote {out}")
    _json(a, "calibrate", {"stats_file": str(out), **stats.to_dict()})
    return 0


def cmd_stats(a) -> int:
    from mstransform.tools import api

    if a.stats_command == "inspect":
        print(api.load_stats(a.stats).summary())
        return 0
    merged = api.merge_stats(a.inputs, a.output)
    print(f"merged {len(a.inputs)} file(s): {len(merged)} site(s), {merged.samples} sample(s); wrote {a.output}")
    return 0


def cmd_harden(a) -> int:
    from mstransform.core.options import Mode
    from mstransform.tools import api

    if a.stats is None and a.data is None:
        raise UsageError("give --stats NPZ (from `mstransform calibrate`) or --data PATH to calibrate now")
    model = Path(a.model)
    output = Path(a.output) if a.output else api.default_output(model, a.mode)
    alpha = AlphaPlan.parse(a.alpha)
    pre = _preprocess(a)
    base = None
    if a.eval:  # the base model's accuracy first: bad labelled data fails before any output exists
        (base,) = api.compare_accuracy([model], a.eval, batch_size=a.batch_size, preprocess=pre, threads=a.threads,
                                       runtime=a.runtime, batch_axes=_batch_axes(a))
    if a.stats is None:
        stats_out = Path(a.save_stats) if a.save_stats else api.default_stats_output(output)
        check_outputs([output, stats_out], [*with_references(model), a.data, a.eval], models=[output])
        t0 = time.perf_counter()
        done = api.calibrate_and_harden(model, a.data, output=output, stats_output=stats_out, alpha=alpha,
                                        mode=a.mode, center=a.center, formulation=a.formulation,
                                        placement=a.placement, selection=_selection(a),
                                        batch_size=a.batch_size, limit=a.limit, preprocess=pre,
                                        verify=not a.no_verify, threads=a.threads, log=say,
                                        precision=a.precision, runtime=a.runtime, batch_axes=_batch_axes(a))
        print(f"calibrated {len(done.stats)} site(s) on {done.stats.samples} sample(s) in "
              f"{time.perf_counter() - t0:.1f} s; wrote {done.stats_path}")
        report = done.report
    else:
        check_outputs([output], [*with_references(model), a.stats, a.eval, a.data], models=[output])
        report = api.harden(model, a.stats, output, alpha=alpha, mode=Mode(a.mode), center=a.center,
                            formulation=a.formulation, selection=_selection(a),
                            ignore_fingerprint=a.ignore_fingerprint, verify=not a.no_verify, threads=a.threads,
                            precision=a.precision, runtime=a.runtime, probe=a.data, batch_axes=_batch_axes(a),
                            preprocess=pre, batch_size=a.batch_size)
    print(report.summary())
    document = report.to_dict()
    if a.stats is None:
        document["stats_file"] = str(done.stats_path)
    if a.eval:
        (hard,) = api.compare_accuracy([output], a.eval, batch_size=a.batch_size, preprocess=pre, threads=a.threads,
                                       runtime=a.runtime, batch_axes=_batch_axes(a))
        for label, acc in (("base", base), ("hardened", hard)):
            print(f"clean accuracy {label:9s} {acc.percent:6.2f}%  ({acc.correct}/{acc.total})")
        print(f"clean accuracy change {hard.percent - base.percent:+.2f} points")
        document["clean_accuracy"] = {label: {"correct": acc.correct, "total": acc.total, "percent": acc.percent}
                                      for label, acc in (("base", base), ("hardened", hard))}
    _json(a, "harden", document)
    return 0


def cmd_check_trt(a) -> int:
    from mstransform.tools import api

    report = api.check_trt(a.model, a.trt_version, fp16=a.fp16)
    for f in report.findings:
        print(f)
    _json(a, "check-trt", report.to_dict())  # written before a blocking finding ends the command (exit 9)
    report.raise_for_errors()
    print(f"ok: compatible with the TensorRT {report.version} ONNX parser's operator table"
          + (" and fp16 constants" if a.fp16 else "") + f" ({len(report.findings)} warning(s))")
    return 0


def cmd_engine(a) -> int:
    from mstransform.tools import api

    out = api.build_engine(a.model, a.output, shapes=a.shapes, fp16=a.fp16, bf16=a.bf16, workspace_mib=a.workspace,
                           timing_cache=a.timing_cache)
    print(f"wrote {out}")
    return 0


def cmd_run(a) -> int:
    from mstransform.tools import api

    out = _path(a.output)
    providers = a.providers.split(",") if a.providers else None
    result = api.run(a.model, a.data, providers=providers, batch_size=a.batch_size, limit=a.limit,
                     preprocess=_preprocess(a), threads=a.threads, runtime=a.runtime, batch_axes=_batch_axes(a),
                     device=a.device)
    preds = result.predictions
    if out is not None and preds is None and out.suffix.lower() != ".npz":
        raise UsageError(f"-o {out}: output {next(iter(result.outputs), '?')!r} holds no class scores, so there "
                         "are no predictions to write; name a .npz file (-o OUT.npz) to write every output")
    print(result.runtime)
    if result.providers_note:
        LOGGER.debug(f"providers: {result.providers_note}")
    for note in result.notes:
        say(note)
    if result.accuracy is not None:
        print(f"accuracy {result.accuracy.percent:.2f}% ({result.accuracy.correct}/{result.accuracy.total})")
    elif preds is not None:
        print(f"predictions for {len(preds)} sample(s): {preds[:20].tolist()}{' ...' if len(preds) > 20 else ''}")
    else:
        print(f"outputs for {result.samples} sample(s): {_outputs_line(result)}")
    if out is not None:
        print(f"wrote {result.save(out)}")
    _json(a, "run", result.to_dict())
    return 0


def _outputs_line(result) -> str:
    """``boxes [100,7,4] float32 (batch axis 0), anchors [7,4] float32 (no batch axis)``."""
    parts = []
    for name, array in result.outputs.items():
        axis = result.output_axes.get(name)
        parts.append(f"{name} [{','.join(map(str, array.shape))}] {array.dtype} "
                     f"({'no batch axis' if axis is None else f'batch axis {axis}'})")
    return ", ".join(parts) or "none is a tensor"


def cmd_eval(a) -> int:
    from mstransform.tools.evaluation import evaluate

    from mstransform.tools.evaluation import parts_folder

    if a.shard is not None and a.json is None:
        raise UsageError("--shard needs --json: the shard's report is what `mstransform eval merge` reads")
    cfg = _attack_config(a, [x.strip() for x in a.attacks.split(",") if x.strip()])
    report = evaluate(a.models, a.data, cfg, progress=say, threads=a.threads, device=a.device, runtime=a.runtime,
                      shard=_shard(a.shard), parts=parts_folder(a.json, a.csv), fresh=a.fresh)
    if report.primary:
        print(report.table())
    report.write(a.json, a.csv)
    return 0


def cmd_eval_merge(a) -> int:
    from mstransform.tools.evaluation import merge

    (out,) = check_outputs([a.output], a.reports)
    report = merge(a.reports, out)
    print(report.table())
    print(f"merged {len(a.reports)} report(s); wrote {out}")
    return 0


def cmd_sweep(a) -> int:
    from mstransform.core.stats import load_stats
    from mstransform.tools.sweep import sweep

    from mstransform.tools.evaluation import parts_folder

    if a.shard is not None and a.json is None:
        raise UsageError("--shard needs --json: the shard's report is what `mstransform eval merge` reads")
    cfg = _attack_config(a, ("apgd-ce", "bpda"))
    report = sweep(a.model, load_stats(a.stats), a.data, list(_floats(a.alphas, "--alphas")), cfg,
                   max_clean_drop=a.max_clean_drop, progress=say, threads=a.threads, device=a.device,
                   shard=_shard(a.shard), parts=parts_folder(a.json, a.csv), fresh=a.fresh)
    if report.primary:
        print(f"sweep on {a.data} ({cfg.n} images, {cfg.norm} eps={cfg.eps:g}, APGD-CE {cfg.apgd_iters} iterations), "
              f"{report.seconds:.0f} s")
        print(report.table())
        if report.alpha > 0:
            print(f"apply: mstransform {a.model} --stats {a.stats} --alpha {report.alpha:g}")
    report.write(a.json, a.csv, a.plot, f"{Path(a.model).name}: alpha sweep on {Path(a.data).name}")
    if a.plot and report.primary:
        print(f"wrote {a.plot}")
    return 0


def cmd_plot(a) -> int:
    from mstransform.core.options import check_alpha
    from mstransform.core.stats import load_stats
    from mstransform.robustness.plots import plot_site_histogram

    out = _path(a.output)
    result = plot_site_histogram(a.model, load_stats(a.stats), a.data, a.site, a.channel, check_alpha(a.alpha),
                                 out, a.limit)
    print(f"{result.values} values; {100 * result.replaced:.1f}% fall in the blocked band; wrote {out}")
    return 0


def cmd_bench(a) -> int:
    from mstransform.tools.bench import bench

    (out,) = check_outputs([a.json], [*with_references(a.base, a.hardened)])  # no role names base/hardened
    sizes = _floats(a.batch_sizes, "--batch-sizes")
    if not all(v == int(v) for v in sizes):
        raise UsageError(f"--batch-sizes {a.batch_sizes!r}: expected whole numbers, e.g. 1,8")
    from mstransform.core.options import Runtime, choice
    from mstransform.runtime.session import check_runtime_choice

    runtimes = [choice(Runtime, r.strip(), "runtime") for r in a.runtime.split(",")]
    for runtime in runtimes:  # every runtime checked before the first one runs
        check_runtime_choice(runtime, a.device, a.providers.split(",") if a.providers else None)
    reports = []
    for runtime in runtimes:
        report = bench(a.base, a.hardened, batch_sizes=[int(v) for v in sizes], runtime=runtime, device=a.device,
                       providers=a.providers.split(",") if a.providers else None, threads=a.threads,
                       warmup=a.warmup, rounds=a.rounds, runs=a.runs)
        print(report.table(), flush=True)
        reports.append(report.to_json())
    if out is not None:
        _json(a, "bench", {"reports": reports})
        print(f"wrote {out}")
    return 0


COMMANDS = {"sites": cmd_sites, "calibrate": cmd_calibrate, "stats": cmd_stats, "harden": cmd_harden,
            "check-trt": cmd_check_trt, "engine": cmd_engine, "run": cmd_run, "eval": cmd_eval,
            "eval-merge": cmd_eval_merge, "sweep": cmd_sweep,
            "plot": cmd_plot, "bench": cmd_bench}
