"""The ``mstransform`` command: a thin argparse layer over :mod:`mstransform.tools.api`.

``mstransform MODEL --stats stats.npz --alpha 0.2`` (no sub-command) hardens a model;
sub-commands: ``sites``, ``calibrate``, ``stats inspect|merge``, ``harden``.
Errors print one line and exit with the code of their class (see ``mstransform.errors``).
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from mstransform.errors import Interrupted, MstError, Terminated, UsageError

SUBCOMMANDS = ("sites", "calibrate", "stats", "harden", "check-trt", "engine", "run", "eval", "sweep", "plot")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, usage exit code 2
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _axis_overrides(specs):
    out = {}
    for spec in specs or []:
        name, sep, axis = spec.rpartition("=")
        try:
            out[name] = int(axis)
        except ValueError:
            raise UsageError(f"--axis {spec!r}: expected SITE=AXIS with an integer axis") from None
        if not sep:
            raise UsageError(f"--axis {spec!r}: expected SITE=AXIS")
    return out


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


def _floats(text):
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"expected comma-separated numbers, got {text!r}") from None


def _add_selection(p):
    p.add_argument("--placement", default="activations", choices=["activations", "activations+residual", "linear-inputs"],
                   help="where operators go (default: activations, as in the paper)")
    p.add_argument("--include", metavar="REGEX", help="keep only sites whose name or tensor matches")
    p.add_argument("--exclude", metavar="REGEX", help="drop sites whose name or tensor matches")
    p.add_argument("--include-se", action="store_true", help="also harden activations inside Squeeze-and-Excitation")
    p.add_argument("--axis", action="append", metavar="SITE=AXIS", help="override a site's channel axis")


def _add_data(p, required=False):
    p.add_argument("--data", required=required, metavar="PATH",
                   help="clean training data: .npy, .npz (keys = input names) or a folder of images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, metavar="N", help="use at most N samples")
    p.add_argument("--scale", type=float, help="multiply raw values by this (default 1/255 for integer data)")
    p.add_argument("--mean", help="per-channel mean to subtract after scaling, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", help="per-channel std to divide by after subtracting the mean")
    p.add_argument("--size", help="resize images to W,H (default: the model input's size)")


def _preprocess(a):
    from mstransform.runtime.data import Preprocess

    size = _floats(a.size)
    return Preprocess(a.scale, _floats(a.mean), _floats(a.std), tuple(int(v) for v in size) if size else None)


def _add_harden(p):
    p.add_argument("model", help="input ONNX model (never modified)")
    p.add_argument("--stats", metavar="NPZ", help="statistics from `mstransform calibrate`")
    _add_data(p)
    p.add_argument("--alpha", action="append", metavar="A|SITE=A",
                   help="threshold multiplier (default 0.2); repeat SITE_REGEX=A for per-site values")
    p.add_argument("-o", "--output", help="output model (default: MODEL.<mode>.onnx next to the input)")
    p.add_argument("--mode", default="meansparse", choices=["meansparse", "forged"])
    p.add_argument("--center", default="mean", choices=["mean", "zero", "global"],
                   help="center of the blocked band (meansparse; paper A.7)")
    p.add_argument("--formulation", default="where", choices=["where", "float"],
                   help="Sub/Abs/Less/Where (default) or a bool-free float form")
    p.add_argument("--placement", default=None, choices=["activations", "activations+residual", "linear-inputs"],
                   help="placement when calibrating with --data (default: activations; linear-inputs for forged)")
    p.add_argument("--include", metavar="REGEX")
    p.add_argument("--exclude", metavar="REGEX")
    p.add_argument("--save-stats", metavar="NPZ", help="with --data: where to keep the measured stats")
    p.add_argument("--eval", metavar="DATA", help="labelled data (.npz with 'labels'): print clean accuracy before/after")
    p.add_argument("--ignore-fingerprint", action="store_true", help="accept stats measured on another export")
    p.add_argument("--no-verify", action="store_true", help="skip the post-write checks")


def build_parser() -> argparse.ArgumentParser:
    from mstransform import __version__

    parser = _Parser(prog="mstransform", description="Harden exported ONNX models with MeanSparse operators.",
                     epilog="example: mstransform model.onnx --stats stats.npz --alpha 0.2  (no sub-command = harden)",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mstransform {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("harden", help="insert sparsify operators (the default command)")
    _add_harden(p)

    p = sub.add_parser("sites", help="print the site table and why other activations were not matched")
    p.add_argument("model")
    _add_selection(p)

    p = sub.add_parser("calibrate", help="measure per-site statistics on clean training data")
    p.add_argument("model")
    _add_data(p, required=True)
    _add_selection(p)
    p.add_argument("-o", "--output", required=True, help="stats file to write (.npz)")
    p.add_argument("--shard", metavar="I/N", help="only batches I, I+N, I+2N, ... (merge shards with `stats merge`)")

    p = sub.add_parser("stats", help="inspect or merge stats files")
    ss = p.add_subparsers(dest="stats_command", required=True, parser_class=_Parser)
    q = ss.add_parser("inspect", help="summarise a stats file")
    q.add_argument("stats")
    q = ss.add_parser("merge", help="merge shards exactly")
    q.add_argument("inputs", nargs="+")
    q.add_argument("-o", "--output", required=True)

    p = sub.add_parser("check-trt", help="static TensorRT compatibility check (no GPU needed)")
    p.add_argument("model")
    p.add_argument("--trt-version", default=None, help="TensorRT release to check against (default: newest known)")
    p.add_argument("--fp16", action="store_true", help="also check constants are representable in fp16")

    p = sub.add_parser("engine", help="build a TensorRT engine (needs TensorRT and a GPU)")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, help="engine file (.plan)")
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--shapes", help="MIN/OPT/MAX batch sizes (1/8/64) or NAME:1x3x224x224/.../... per input")
    p.add_argument("--workspace", type=int, default=1024, help="workspace limit in MiB")
    p.add_argument("--timing-cache", help="timing cache file (read if present, written after the build)")

    p = sub.add_parser("run", help="batch inference in ONNX Runtime: accuracy on labelled data, else predictions")
    p.add_argument("model")
    _add_data(p, required=True)
    p.add_argument("--providers", help="comma-separated ONNX Runtime providers (default: TensorRT > CUDA > CPU)")
    p.add_argument("-o", "--output", help="write predictions (.npy)")

    p = sub.add_parser("eval", help="clean, white-box, black-box and straight-through accuracy, side by side")
    p.add_argument("models", nargs="+", help="ONNX models (base first, then hardened ones)")
    p.add_argument("--data", required=True, help="labelled data in [0,1] after scaling (.npz with 'labels')")
    _add_attack(p)
    p.add_argument("--attacks", default=",".join(("apgd-ce", "apgd-dlr", "pgd", "square", "bpda")))
    p.add_argument("--json", help="write the results as JSON")
    p.add_argument("--csv", help="write the results as CSV")

    p = sub.add_parser("sweep", help="choose alpha on a held-out split of the training data")
    p.add_argument("model")
    p.add_argument("--stats", required=True)
    p.add_argument("--data", required=True, help="held-out TRAINING split with labels (never the test set)")
    p.add_argument("--alphas", default="0.05,0.1,0.15,0.2,0.3,0.5")
    p.add_argument("--max-clean-drop", type=float, default=0.5, help="clean-accuracy budget in points (default 0.5)")
    _add_attack(p)
    p.add_argument("--plot", help="PNG of clean, standard-robust and BPDA-robust accuracy against alpha")
    p.add_argument("--json")
    p.add_argument("--csv")

    p = sub.add_parser("plot", help="feature histogram of one site/channel before and after the operator")
    p.add_argument("model")
    p.add_argument("--stats", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--channel", type=int, default=0)
    p.add_argument("--alpha", type=float, default=0.2)
    p.add_argument("--limit", type=int, default=512)
    p.add_argument("-o", "--output", required=True, help="PNG file")
    return parser


def _add_attack(p):
    p.add_argument("--eps", type=float, default=0.1, help="perturbation budget (pixel scale [0,1]; default 0.1)")
    p.add_argument("--norm", default="Linf", choices=["Linf", "L2"])
    p.add_argument("-n", "--images", type=int, default=500, help="number of images (default 500)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--apgd-iters", type=int, default=100)
    p.add_argument("--pgd-steps", type=int, default=20)
    p.add_argument("--square-queries", type=int, default=1000)


def _attack_config(a, attacks=None):
    from mstransform.runtime.robustness import AttackConfig

    return AttackConfig(eps=a.eps, norm=a.norm, n=a.images, batch_size=a.batch_size, seed=a.seed,
                        apgd_iters=a.apgd_iters, pgd_steps=a.pgd_steps, square_queries=a.square_queries,
                        attacks=tuple(attacks or ()))


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_sites(a) -> int:
    from mstransform.tools import api

    table = api.find_sites(a.model, a.placement, include=a.include, exclude=a.exclude, include_se=a.include_se,
                           axes=_axis_overrides(a.axis))
    print(table.format())
    return 0


def cmd_calibrate(a) -> int:
    from mstransform.tools import api
    from mstransform.tools.atomic import check_output_path

    out = check_output_path(a.output, a.model, a.data)
    t0 = time.perf_counter()
    stats = api.calibrate(a.model, a.data, placement=a.placement, include=a.include, exclude=a.exclude,
                          include_se=a.include_se, axes=_axis_overrides(a.axis), batch_size=a.batch_size,
                          limit=a.limit, preprocess=_preprocess(a), threads=a.threads, shard=_shard(a.shard))
    stats.save(out)
    print(f"calibrated {len(stats)} site(s) on {stats.samples} sample(s) in {time.perf_counter() - t0:.1f} s; "
          f"wrote {out}")
    return 0


def cmd_stats(a) -> int:
    from mstransform.runtime.stats import load_stats
    from mstransform.tools.atomic import check_output_path

    if a.stats_command == "inspect":
        print(load_stats(a.stats).summary())
        return 0
    out = check_output_path(a.output, *a.inputs)
    merged = load_stats(a.inputs[0])
    for path in a.inputs[1:]:
        merged = merged.merge(load_stats(path))
    merged.save(out)
    print(f"merged {len(a.inputs)} file(s): {len(merged)} site(s), {merged.samples} sample(s); wrote {out}")
    return 0


def cmd_harden(a) -> int:
    from mstransform.runtime.data import DataSource
    from mstransform.runtime.evaluate import accuracy
    from mstransform.runtime.session import input_specs, make_session
    from mstransform.tools import api
    from mstransform.tools.atomic import check_output_path

    if (a.stats is None) == (a.data is None):
        raise UsageError("give either --stats NPZ (from `mstransform calibrate`) or --data PATH to calibrate now")
    model_path = Path(a.model)
    output = Path(a.output) if a.output else model_path.with_name(f"{model_path.stem}.{a.mode}.onnx")
    check_output_path(output, model_path)
    from mstransform.runtime.thresholds import parse_alpha_specs

    parse_alpha_specs(a.alpha)  # reject bad alphas before any work
    model = api.load_model(model_path)
    specs = input_specs(model)
    probe = None
    stats = a.stats
    if a.data is not None:
        placement = a.placement or ("linear-inputs" if a.mode == "forged" else "activations")
        stats_out = Path(a.save_stats) if a.save_stats else output.with_name(output.stem + ".stats.npz")
        check_output_path(stats_out, model_path, a.data)
        t0 = time.perf_counter()
        stats = api.calibrate(model_path, a.data, placement=placement, include=None, exclude=None,
                              batch_size=a.batch_size, limit=a.limit, preprocess=_preprocess(a), threads=a.threads)
        stats.save(stats_out)
        print(f"calibrated {len(stats)} site(s) on {stats.samples} sample(s) in {time.perf_counter() - t0:.1f} s; "
              f"wrote {stats_out}")
        probe = api.probe_from(DataSource(a.data, specs, batch_size=8, limit=8, preprocess=_preprocess(a)))
    report = api.harden(model_path, stats, alpha=a.alpha, mode=a.mode, center=a.center, formulation=a.formulation,
                        output=output, include=a.include, exclude=a.exclude,
                        ignore_fingerprint=a.ignore_fingerprint, probe=probe, verify=not a.no_verify,
                        threads=a.threads)
    print(report.summary())
    if a.eval:
        rows = []
        for label, path in (("base", model_path), ("hardened", output)):
            data = DataSource(a.eval, specs, batch_size=a.batch_size, preprocess=_preprocess(a))
            acc = accuracy(make_session(path, threads=a.threads), data)
            rows.append((label, acc))
        for label, acc in rows:
            print(f"clean accuracy {label:9s} {acc.percent:6.2f}%  ({acc.correct}/{acc.total})")
        print(f"clean accuracy change {rows[1][1].percent - rows[0][1].percent:+.2f} points")
    return 0


def cmd_check_trt(a) -> int:
    from mstransform.errors import CompatibilityError
    from mstransform.runtime.trt_check import check_trt, support_table, versions
    from mstransform.tools import api

    version = a.trt_version or versions()[-1]
    if version not in support_table()["versions"]:
        raise UsageError(f"unknown --trt-version {version!r}; known: {', '.join(versions())}")
    findings = check_trt(api.load_model(a.model), version, fp16=a.fp16)
    for f in findings:
        print(f)
    errors = [f for f in findings if f.level == "error"]
    if errors:
        raise CompatibilityError(f"{len(errors)} problem(s) for TensorRT {version}; first: {errors[0]}")
    print(f"ok: compatible with the TensorRT {version} ONNX parser's operator table"
          + (" and fp16 constants" if a.fp16 else "") + f" ({len(findings)} warning(s))")
    return 0


def cmd_engine(a) -> int:
    from mstransform.runtime.session import input_specs
    from mstransform.runtime.trt_engine import build_engine, import_tensorrt, parse_shapes
    from mstransform.tools import api
    from mstransform.tools.atomic import check_output_path

    out = check_output_path(a.output, a.model)
    model = api.load_model(a.model)
    profile = parse_shapes(a.shapes, {s.name: s.shape for s in input_specs(model)})
    import_tensorrt()
    build_engine(a.model, out, fp16=a.fp16, bf16=a.bf16, profile=profile, workspace_mib=a.workspace,
                 timing_cache=a.timing_cache)
    print(f"wrote {out}")
    return 0


def cmd_run(a) -> int:
    import numpy as np

    from mstransform.runtime.data import DataSource
    from mstransform.runtime.evaluate import Accuracy, predict
    from mstransform.runtime.session import choose_providers, input_specs, make_session
    from mstransform.tools import api
    from mstransform.tools.atomic import atomic_output, check_output_path

    out = check_output_path(a.output, a.model, a.data) if a.output else None
    model = api.load_model(a.model)
    providers = a.providers.split(",") if a.providers else None
    chosen, why = choose_providers(providers)
    session = make_session(a.model, providers=chosen, threads=a.threads)
    print(f"provider: {session.get_providers()[0]} ({why})")
    data = DataSource(a.data, input_specs(model), batch_size=a.batch_size, limit=a.limit,
                      preprocess=_preprocess(a))
    preds, labels = predict(session, data, require_labels=False)
    if labels is not None:
        acc = Accuracy(int((preds == labels).sum()), len(labels))
        print(f"accuracy {acc.percent:.2f}% ({acc.correct}/{acc.total})")
    else:
        print(f"predictions for {len(preds)} sample(s): {preds[:20].tolist()}{' ...' if len(preds) > 20 else ''}")
    if out is not None:
        with atomic_output(out) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, preds)
        print(f"wrote {out}")
    return 0


def cmd_eval(a) -> int:
    from mstransform.runtime.robustness import evaluate_model, format_table, load_labelled, write_reports
    from mstransform.runtime.session import input_specs
    from mstransform.tools import api
    from mstransform.tools.atomic import check_output_path

    for out in (a.json, a.csv):
        if out:
            check_output_path(out, *a.models, a.data)
    cfg = _attack_config(a, [x.strip() for x in a.attacks.split(",") if x.strip()])
    specs = input_specs(api.load_model(a.models[0]))
    x, y = load_labelled(a.data, specs, cfg.n)
    t0 = time.perf_counter()
    results = [evaluate_model(Path(m).stem, m, x, y, cfg, progress=_say, threads=a.threads) for m in a.models]
    print(f"{cfg.norm} eps={cfg.eps:g}, {len(x)} images from {a.data}, seed {cfg.seed}; accuracy in %; "
          f"every figure measured by ONNX Runtime on the .onnx file ({time.perf_counter() - t0:.0f} s)")
    print(format_table(results))
    write_reports(results, cfg, a.json, a.csv)
    return 0


def cmd_sweep(a) -> int:
    from mstransform.runtime.robustness import choose_alpha, plot_sweep
    from mstransform.runtime.stats import load_stats
    from mstransform.runtime.sweep import sweep
    from mstransform.tools.atomic import atomic_output, check_output_path

    for out in (a.plot, a.json, a.csv):
        if out:
            check_output_path(out, a.model, a.data, a.stats)
    alphas = [float(v) for v in _floats(a.alphas)]
    from mstransform.runtime.thresholds import check_alpha

    for v in alphas:
        check_alpha(v)
    stats = load_stats(a.stats)
    cfg = _attack_config(a, ("apgd-ce", "bpda"))
    t0 = time.perf_counter()
    rows = sweep(a.model, stats, a.data, alphas, cfg, progress=_say, threads=a.threads)
    alpha, reason = choose_alpha(rows, a.max_clean_drop)
    print(f"sweep on {a.data} ({cfg.n} images, {cfg.norm} eps={cfg.eps:g}, APGD-CE {cfg.apgd_iters} iterations), "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"{'alpha':>6}  {'clean':>6}  {'APGD-CE':>7}  {'BPDA':>6}  {'worst':>6}")
    for r in rows:
        print(f"{r.alpha:>6g}  {r.clean:6.2f}  {r.standard:7.2f}  {r.bpda:6.2f}  {r.robust:6.2f}")
    print(f"chosen: {reason}")
    if alpha > 0:
        print(f"apply: mstransform {a.model} --stats {a.stats} --alpha {alpha:g}")
    if a.plot:
        plot_sweep(rows, a.plot, f"{Path(a.model).name}: alpha sweep on {Path(a.data).name}")
        print(f"wrote {a.plot}")
    import json

    payload = {"rows": [r.__dict__ for r in rows], "chosen_alpha": alpha, "reason": reason,
               "max_clean_drop": a.max_clean_drop, "config": cfg.__dict__}
    if a.json:
        with atomic_output(a.json) as tmp:
            Path(tmp).write_text(json.dumps(payload, indent=2, default=list) + "\n")
    if a.csv:
        with atomic_output(a.csv) as tmp:
            Path(tmp).write_text("alpha,clean,apgd_ce,bpda,worst\n" + "".join(
                f"{r.alpha:g},{r.clean:.2f},{r.standard:.2f},{r.bpda:.2f},{r.robust:.2f}\n" for r in rows))
    return 0


def cmd_plot(a) -> int:
    import numpy as np

    from mstransform.runtime.histogram import plot_histogram, site_channel_values
    from mstransform.runtime.stats import load_stats
    from mstransform.runtime.thresholds import check_alpha
    from mstransform.tools.atomic import check_output_path

    out = check_output_path(a.output, a.model, a.data, a.stats)
    alpha = check_alpha(a.alpha)
    stats = load_stats(a.stats)
    if a.site not in stats.sites:
        raise UsageError(f"the stats have no site {a.site!r}; `mstransform stats inspect` lists them")
    s = stats.sites[a.site]
    if not 0 <= a.channel < s.channels:
        raise UsageError(f"site {a.site!r} has {s.channels} channels; --channel {a.channel} is out of range")
    values, _ = site_channel_values(a.model, a.site, a.channel, a.data, a.limit)
    mean, sigma = float(s.moments.mean[a.channel]), float(np.sqrt(s.moments.var[a.channel]))
    frac = plot_histogram(values, mean, sigma, alpha, out, f"{a.site}, channel {a.channel}, alpha {alpha:g}")
    print(f"{len(values)} values; {100 * frac:.1f}% fall in the blocked band; wrote {out}")
    return 0


COMMANDS = {"sites": cmd_sites, "calibrate": cmd_calibrate, "stats": cmd_stats, "harden": cmd_harden,
            "check-trt": cmd_check_trt, "engine": cmd_engine, "run": cmd_run, "eval": cmd_eval, "sweep": cmd_sweep,
            "plot": cmd_plot}


GLOBAL_VALUED = {"--threads"}


def _first_positional(argv: list[str]) -> int | None:
    """Index of the first positional argument, skipping global options and their values."""
    i = 0
    while i < len(argv):
        if argv[i] in GLOBAL_VALUED:
            i += 2
        elif argv[i].startswith("-"):
            i += 1
        else:
            return i
    return None


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    first = _first_positional(argv)
    if first is not None and argv[first] not in SUBCOMMANDS and not any(x in argv for x in ("-h", "--help", "--version")):
        argv.insert(first, "harden")
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return 2
        return COMMANDS[args.command](args)
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        err = Interrupted(f"{what}; no partial output was left")
        print(f"mstransform: error: {err}", file=sys.stderr)
        return err.exit_code
    except MstError as err:
        if debug:
            raise
        print(f"mstransform: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
