"""One function per command: turn flags into typed options, call the API (:mod:`mstransform.tools.api`), print.

Every path flag was checked by its role before the command runs (:func:`mstransform.tools.cli.check_paths`);
only outputs the command line derives itself (harden's default output and stats file, which no flag
names) are checked here. All other logic is in the API. Nothing heavy is imported before a command runs:
the command table (:data:`mstransform.tools.cli_parser.COMMANDS`) imports this module for ``--help`` too.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from mstransform.core.errors import UsageError
from mstransform.core.fileio import write_json
from mstransform.core.options import AlphaPlan, Selection
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


def _axes(specs, param: str, form: str) -> dict:
    """``NAME=AXIS`` flags (``--axis SITE=AXIS``, ``--batch-axis NAME=AXIS``) by the one parser of that spelling;
    its errors name ``param``, which the command line reports as the flag, and spell the strings as ``form``."""
    from mstransform.runtime.inputs import parse_axes

    return parse_axes(specs, param, none=param == "batch_axes", form=form)


def _selection(a) -> Selection:
    """The site selection flags (``--include/--exclude/--include-se/--axis``) as one :class:`Selection`."""
    return Selection(a.include, a.exclude, getattr(a, "include_se", False),
                     tuple(_axes(getattr(a, "axis", None), "axes", "SITE=AXIS").items()))


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
    from mstransform.tools.api import Preprocess

    size = _floats(a.size, "--size")
    if size is not None and (len(size) != 2 or not all(1 <= v <= 16384 and v == int(v) for v in size)):
        raise UsageError(f"--size {a.size!r}: expected W,H, whole numbers between 1 and 16384")
    return Preprocess(a.scale, _floats(a.mean, "--mean"), _floats(a.std, "--std"),
                      tuple(int(v) for v in size) if size else None)


def _batch_axes(a):
    return _axes(getattr(a, "batch_axis", None), "batch_axes", "NAME=AXIS")


def _attack_config(a, attacks):
    from mstransform.tools.api import AttackConfig

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
    from mstransform.tools.api import site_fractions

    if a.data is None:
        raise UsageError("--stats needs --data: the stats hold each channel's mean and variance, not how many values "
                         "fall in the band, so the fraction is counted on data (the calibration data will do)")
    plot = _path(a.plot)
    rows = site_fractions(a.model, a.stats, a.data, AlphaPlan.parse(a.alpha), batch_size=a.batch_size, limit=a.limit,
                          preprocess=_preprocess(a), threads=a.threads, batch_axes=_batch_axes(a))
    print(f"values the operator replaces (|x - mean| < alpha * sigma), counted on {a.data}")
    print(rows.format())
    if plot is not None:
        rows.save(plot, f"{Path(a.model).name}: replaced fraction per site")
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
    if (api.launched() or (0, 1))[0] != 0:  # under torchrun every rank holds the merge: rank 0 writes it
        return 0
    stats.save(out)
    print(f"calibrated {len(stats)} site(s) on {stats.samples} sample(s) in {time.perf_counter() - t0:.1f} s; "
          f"wrote {out}")
    _json(a, "calibrate", {"stats_file": str(out), **stats.to_dict()})
    return 0


def cmd_stats(a) -> int:
    from mstransform.tools import api

    if a.stats_command == "inspect":
        print(api.load_stats(a.stats).format())
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
        _check_derived(a, output, stats_out)
        done = api.calibrate_and_harden(model, a.data, output=output, stats_output=stats_out, alpha=alpha,
                                        mode=a.mode, center=a.center, formulation=a.formulation,
                                        placement=a.placement, selection=_selection(a),
                                        batch_size=a.batch_size, limit=a.limit, preprocess=pre,
                                        verify=not a.no_verify, threads=a.threads, log=say,
                                        precision=a.precision, runtime=a.runtime, batch_axes=_batch_axes(a))
        print(done.format())
        document = done.to_dict()
    else:
        _check_derived(a, output)
        report = api.harden(model, a.stats, output, alpha=alpha, mode=Mode(a.mode), center=a.center,
                            formulation=a.formulation, selection=_selection(a),
                            ignore_fingerprint=a.ignore_fingerprint, verify=not a.no_verify, threads=a.threads,
                            precision=a.precision, runtime=a.runtime, probe=a.data, batch_axes=_batch_axes(a),
                            preprocess=pre, batch_size=a.batch_size)
        print(report.format())
        document = report.to_dict()
    if a.eval:
        (hard,) = api.compare_accuracy([output], a.eval, batch_size=a.batch_size, preprocess=pre, threads=a.threads,
                                       runtime=a.runtime, batch_axes=_batch_axes(a))
        for label, acc in (("base", base), ("hardened", hard)):
            print(f"clean accuracy {label:9s} {acc.percent:6.2f}%  ({acc.correct}/{acc.total})")
        print(f"clean accuracy change {hard.percent - base.percent:+.2f} points")
        document["clean_accuracy"] = {"base": base.to_dict(), "hardened": hard.to_dict()}
    _json(a, "harden", document)
    return 0


def _check_derived(a, output: Path, stats_output: Path | None = None) -> None:
    """Harden's outputs that no flag may name (its default output and stats file) against its inputs, by the
    check every path flag went through (:func:`mstransform.tools.arguments.check_paths`)."""
    from mstransform.tools.arguments import check_paths

    check_paths({"model": a.model, "stats": a.stats, "data": a.data, "eval": a.eval, "output": output,
                 "stats_output": stats_output}, models_out=("output",))


def cmd_check_trt(a) -> int:
    from mstransform.tools import api

    report = api.check_trt(a.model, a.trt_version, fp16=a.fp16)
    _json(a, "check-trt", report.to_dict())  # written before a blocking finding ends the command (exit 9)
    print(report.format())
    report.raise_for_errors()
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
    if result.providers_note:
        LOGGER.debug(f"providers: {result.providers_note}")
    for note in result.notes:
        say(note)
    print(result.format())
    if out is not None:
        print(f"wrote {result.save(out)}")
    _json(a, "run", result.to_dict())
    return 0


def _parts(a):
    """Where eval and sweep keep finished chunks (beside their --json, else --csv report)."""
    from mstransform.tools.api import parts_folder

    if a.shard is not None and a.json is None:
        raise UsageError("--shard needs --json: the shard's report is what `mstransform eval merge` reads")
    return parts_folder(a.json, a.csv)


def cmd_eval(a) -> int:
    from mstransform.tools import api

    parts = _parts(a)
    cfg = _attack_config(a, [x.strip() for x in a.attacks.split(",") if x.strip()])
    report = api.evaluate(a.models, a.data, cfg, log=say, threads=a.threads, device=a.device, runtime=a.runtime,
                          shard=_shard(a.shard), parts=parts, fresh=a.fresh)
    if report.primary:
        print(report.format())
    report.save(a.json, a.csv)
    return 0


def cmd_eval_merge(a) -> int:
    from mstransform.tools import api

    report = api.merge_eval(a.reports, a.output)
    print(report.format())
    print(f"merged {len(a.reports)} report(s); wrote {a.output}")
    return 0


def cmd_sweep(a) -> int:
    from mstransform.tools import api

    parts = _parts(a)
    cfg = _attack_config(a, ("apgd-ce", "bpda"))
    report = api.sweep(a.model, api.load_stats(a.stats), a.data, list(_floats(a.alphas, "--alphas")), cfg,
                       max_clean_drop=a.max_clean_drop, log=say, threads=a.threads, device=a.device,
                       shard=_shard(a.shard), parts=parts, fresh=a.fresh)
    if report.primary:
        print(f"sweep on {a.data} ({cfg.n} images, {cfg.norm} eps={cfg.eps:g}, APGD-CE {cfg.apgd_iters} iterations), "
              f"{report.seconds:.0f} s")
        print(report.format())
        if report.alpha > 0:
            print(f"apply: mstransform {a.model} --stats {a.stats} --alpha {report.alpha:g}")
    report.save(a.json, a.csv, a.plot, f"{Path(a.model).name}: alpha sweep on {Path(a.data).name}")
    if a.plot and report.primary:
        print(f"wrote {a.plot}")
    return 0


def cmd_plot(a) -> int:
    from mstransform.core.options import check_alpha
    from mstransform.tools import api

    out = _path(a.output)
    result = api.plot_site_histogram(a.model, api.load_stats(a.stats), a.data, a.site, a.channel,
                                     check_alpha(a.alpha), out, a.limit)
    print(f"{result.format()}; wrote {out}")
    return 0


def cmd_bench(a) -> int:
    from mstransform.core.options import Runtime, choice
    from mstransform.tools import api

    sizes = _floats(a.batch_sizes, "--batch-sizes")
    if not all(v == int(v) for v in sizes):
        raise UsageError(f"--batch-sizes {a.batch_sizes!r}: expected whole numbers, e.g. 1,8")
    providers = a.providers.split(",") if a.providers else None
    runtimes = [choice(Runtime, r.strip(), "runtime") for r in a.runtime.split(",")]
    for runtime in runtimes:  # every runtime checked before the first one runs
        api.check_runtime_choice(runtime, a.device, providers)
    reports = []
    for runtime in runtimes:
        report = api.bench(a.base, a.hardened, batch_sizes=[int(v) for v in sizes], runtime=runtime, device=a.device,
                           providers=providers, threads=a.threads, warmup=a.warmup, rounds=a.rounds, runs=a.runs)
        print(report.format(), flush=True)
        reports.append(report.to_dict())
    if a.json is not None:
        _json(a, "bench", {"reports": reports})
        print(f"wrote {a.json}")
    return 0
