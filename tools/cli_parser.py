"""The command line's flags. Choices come from the option enums; counts are typed ints whose
ranges the API checks (and the CLI reports under the flag's name)."""
from __future__ import annotations

import argparse

from mstransform.core.errors import UsageError
from mstransform.core.options import (DEFAULT_ATTACKS, Center, Device, Formulation, Mode, Placement, Precision,
                                      Runtime)

SUBCOMMANDS = ("sites", "calibrate", "stats", "harden", "check-trt", "engine", "run", "eval", "eval-merge", "sweep",
               "plot", "bench")
GLOBAL_VALUED = {"--threads", "--log-file"}
# API parameter -> the flag that sets it, for error messages.
FLAGS = {"alpha": "--alpha", "alphas": "--alphas", "batch_size": "--batch-size", "limit": "--limit",
         "threads": "--threads", "eps": "--eps", "n": "-n/--images", "norm": "--norm", "mode": "--mode",
         "center": "--center", "formulation": "--formulation", "placement": "--placement", "include": "--include",
         "exclude": "--exclude", "axes": "--axis", "attacks": "--attacks", "apgd_iters": "--apgd-iters",
         "pgd_steps": "--pgd-steps", "square_queries": "--square-queries", "seed": "--seed",
         "max_clean_drop": "--max-clean-drop", "channel": "--channel", "mean/std": "--mean/--std", "std": "--std",
         "probe": "--data", "data": "--data", "model": "MODEL", "shard": "--shard", "workspace": "--workspace",
         "device": "--device", "runtime": "--runtime", "providers": "--providers", "batch_axes": "--batch-axis",
         "trt_version": "--trt-version", "stats": "--stats",
         "ignore_fingerprint": "--ignore-fingerprint", "batch_sizes": "--batch-sizes", "warmup": "--warmup",
         "rounds": "--rounds", "runs": "--runs"}


class Parser(argparse.ArgumentParser):
    """One-line errors (exit 2), and flags gathered by topic in ``--help`` (:meth:`topic`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.topics: dict[str, argparse._ArgumentGroup] = {}

    def error(self, message):  # one line, usage exit code 2
        raise UsageError(f"{message} (see `{self.prog} --help`)")

    def topic(self, title: str):
        """The group of ``--help`` that holds the flags of one topic (:data:`TOPICS`), made on first use."""
        if title not in self.topics:
            self.topics[title] = self.add_argument_group(title, TOPICS[title])
        return self.topics[title]

    def format_help(self):
        """The topics in one order for every command (:data:`TOPICS`: the global options last)."""
        groups = self._action_groups
        order = list(TOPICS)
        self._action_groups = sorted(groups, key=lambda g: order.index(g.title) + 1 if g.title in TOPICS else 0)
        try:
            return super().format_help()
        finally:
            self._action_groups = groups


# The topics of every command's --help, in the order they are first used.
TOPICS = {
    "inputs": None,
    "data": "what the model is run on, and how raw values become its inputs",
    "operator": "which sites get the operator, and its parameters",
    "output": None,
    "checks": None,
    "runtime": "what runs the model",
    "attack": "the robustness evaluation's attacks",
    "global options": "anywhere on the line, before or after the command",
}


def _add_global(p, suppress: bool) -> None:
    """The flags that hold anywhere on the line: before or after the sub-command."""
    default = {"default": argparse.SUPPRESS} if suppress else {}
    g = p.topic("global options")
    g.add_argument("--debug", action="store_true", help="show tracebacks", **default)
    g.add_argument("--threads", type=int, help="ONNX Runtime / OpenVINO intra-op threads", **default)
    g.add_argument("-q", "--quiet", action="store_true", help="results and warnings only: no notes", **default)
    g.add_argument("-v", "--verbose", action="store_true",
                   help="also details, and the warnings and log records of the libraries underneath", **default)
    g.add_argument("--log-file", metavar="FILE", help="also write every note, warning, library record and the "
                   "error line to FILE, timestamped", **default)


class _Sub(Parser):
    """A sub-command's parser: it takes the global flags too (without overriding those given before it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if kwargs.get("add_help", True):
            _add_global(self, suppress=True)



def _values(enum_type) -> list[str]:
    return [m.value for m in enum_type]


def _model(p, help_text="the ONNX model (never modified)"):
    p.add_argument("model", help=help_text)


def _add_selection(p, placement_default=Placement.ACTIVATIONS.value,
                   placement_help="where operators go (default: activations, as in the paper)"):
    g = p.topic("operator")
    g.add_argument("--placement", default=placement_default, choices=_values(Placement), help=placement_help)
    g.add_argument("--include", metavar="REGEX", help="keep only sites whose name or tensor matches REGEX")
    g.add_argument("--exclude", metavar="REGEX", help="drop sites whose name or tensor matches REGEX")
    g.add_argument("--include-se", action="store_true", help="also harden activations inside Squeeze-and-Excitation")
    g.add_argument("--axis", action="append", metavar="SITE=AXIS", help="override a site's channel axis")


def _add_data(p, required=False, help_text="clean training data: .npy, .npz (keys = input names) or a folder of images"):
    g = p.topic("data")
    g.add_argument("--data", required=required, metavar="PATH", help=help_text)
    g.add_argument("--batch-size", type=int, default=64, help="samples per run of the model (default 64)")
    g.add_argument("--limit", type=int, metavar="N", help="use at most N samples")
    g.add_argument("--scale", type=float, help="multiply raw values by this (default 1/255 for integer data)")
    g.add_argument("--mean", help="per-channel mean to subtract after scaling, e.g. 0.485,0.456,0.406")
    g.add_argument("--std", help="per-channel std to divide by after subtracting the mean")
    g.add_argument("--size", help="resize images to W,H (default: the model input's size)")
    g.add_argument("--batch-axis", action="append", metavar="NAME=AXIS",
                   help="the axis of input NAME that holds the samples, or NAME=none to pass it whole with every "
                        "batch (default: found from the model's dim names)")


def _add_json(p):
    p.topic("output").add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE, for machines")


def _add_harden(p):
    _model(p, "input ONNX model (never modified)")
    g = p.topic("inputs")
    g.add_argument("--stats", metavar="NPZ", help="statistics from `mstransform calibrate`")
    g.add_argument("--ignore-fingerprint", action="store_true", help="accept stats measured on another export")
    _add_data(p, help_text="clean training data to calibrate on now (without --stats), or to probe the written "
                           "model with (beside --stats)")
    g = p.topic("operator")
    g.add_argument("--alpha", action="append", metavar="A|SITE=A",
                   help="threshold multiplier (default 0.2); repeat SITE_REGEX=A for per-site values")
    g.add_argument("--mode", default=Mode.MEANSPARSE.value, choices=_values(Mode),
                   help="meansparse (center the mean, threshold alpha*sigma) or forged (center 0, threshold "
                        "alpha*max|x|, before linear layers)")
    g.add_argument("--center", default=Center.MEAN.value, choices=_values(Center),
                   help="center of the blocked band (meansparse; paper A.7)")
    g.add_argument("--formulation", default=Formulation.WHERE.value, choices=_values(Formulation),
                   help="Sub/Abs/Less/Where (default) or a bool-free float form")
    _add_selection(p, None, "placement when calibrating with --data (default: activations; linear-inputs for forged)")
    g = p.topic("output")
    g.add_argument("-o", "--output", help="output model (default: MODEL.<mode>.onnx next to the input)")
    g.add_argument("--save-stats", metavar="NPZ", help="with --data: where to keep the measured stats")
    g.add_argument("--precision", default=Precision.FP32.value, choices=_values(Precision),
                   help="float type of the written model: fp16/bf16 for strongly typed engines such as TensorRT 11 "
                        "(graph I/O stays fp32)")
    _add_json(p)
    g = p.topic("checks")
    g.add_argument("--eval", metavar="DATA", help="labelled data (.npz with 'labels'): print clean accuracy before/after")
    g.add_argument("--no-verify", action="store_true", help="skip the post-write checks")
    _add_runtime(p)


def _add_runtime(p, help_text="which runtime runs the .onnx file (openvino: its CPU plugin; needs the openvino extra)"):
    p.topic("runtime").add_argument("--runtime", choices=_values(Runtime), default=Runtime.ONNXRUNTIME.value,
                                    help=help_text)


def _add_device(p):
    p.topic("runtime").add_argument(
        "--device", choices=_values(Device), help="cpu or cuda: ONNX Runtime's CPU or CUDA provider, and the torch "
                                                  "device of the twin and attacks (default: the best provider that "
                                                  "starts here)")


def _add_providers(p):
    p.topic("runtime").add_argument("--providers", help="comma-separated ONNX Runtime providers (default: "
                                                        "TensorRT > CUDA > CPU)")


def _add_attack(p):
    g = p.topic("attack")
    g.add_argument("--eps", type=float, default=0.1, help="perturbation budget (pixel scale [0,1]; default 0.1)")
    g.add_argument("--norm", default="Linf", choices=["Linf", "L2"], help="threat model (default Linf)")
    g.add_argument("-n", "--images", type=int, default=500, help="number of images (default 500)")
    g.add_argument("--batch-size", type=int, default=250, help="images per attack batch and per chunk (default 250)")
    g.add_argument("--seed", type=int, default=0, help="attack seed; each chunk's is derived from it and its first "
                                                       "image (default 0)")
    g.add_argument("--apgd-iters", type=int, default=100, help="APGD iterations (default 100)")
    g.add_argument("--pgd-steps", type=int, default=20, help="PGD steps (with torchattacks; default 20)")
    g.add_argument("--square-queries", type=int, default=1000, help="Square attack queries (default 1000)")


def _add_chunks(p):
    g = p.topic("output")
    g.add_argument("--shard", metavar="I/N", help="only chunks I, I+N, ... of --batch-size images (merge the "
                                                  "shards' --json with `eval merge`)")
    g.add_argument("--fresh", action="store_true", help="start over: ignore the chunks kept by an interrupted run")


def build_parser() -> argparse.ArgumentParser:
    from mstransform import __version__

    parser = Parser(prog="mstransform", description="Harden exported ONNX models with MeanSparse operators.",
                    epilog="example: mstransform model.onnx --stats stats.npz --alpha 0.2  (no sub-command = harden)",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mstransform {__version__}")
    _add_global(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", parser_class=_Sub)

    _add_harden(sub.add_parser("harden", help="insert sparsify operators (the default command)"))

    p = sub.add_parser("sites", help="print the site table and why other activations were not matched; with "
                                     "--stats and --data, the fraction of values each operator replaces")
    _model(p)
    p.topic("inputs").add_argument("--stats", metavar="NPZ",
                                   help="with --data: measure, per site, the values the operator replaces")
    _add_selection(p)
    p.topic("operator").add_argument("--alpha", action="append", metavar="A|SITE=A",
                                     help="with --stats: threshold multiplier (default 0.2); repeat SITE_REGEX=A for "
                                          "per-site values")
    _add_data(p)
    _add_json(p)
    p.topic("output").add_argument("--plot", metavar="PNG", help="with --stats: the replaced fraction against site "
                                                                 "depth")

    p = sub.add_parser("calibrate", help="measure per-site statistics on clean training data")
    _model(p)
    _add_data(p, required=True)
    _add_selection(p)
    g = p.topic("output")
    g.add_argument("-o", "--output", required=True, help="stats file to write (.npz)")
    _add_json(p)
    g.add_argument("--shard", metavar="I/N", help="only batches I, I+N, I+2N, ... (merge shards with `stats merge`)")
    p.topic("operator").add_argument("--extent", action="store_true", default=None,
                                     help="also measure each channel's max |x| (forged mode needs it; on by default "
                                          "with --placement linear-inputs; two more reads of every site tensor)")
    _add_device(p)
    _add_runtime(p)

    p = sub.add_parser("stats", help="inspect or merge stats files")
    ss = p.add_subparsers(dest="stats_command", required=True, parser_class=_Sub, metavar="{inspect,merge}",
                          help="what to do with stats files")
    ss.add_parser("inspect", help="summarise a stats file").add_argument("stats", help="the stats file (.npz)")
    q = ss.add_parser("merge", help="merge shards (Chan's rule in float64)")
    q.add_argument("inputs", nargs="+", help="the shards' stats files")
    q.add_argument("-o", "--output", required=True, help="merged stats file (.npz)")

    p = sub.add_parser("check-trt", help="static TensorRT compatibility check (no GPU needed)")
    _model(p)
    p.add_argument("--trt-version", default=None,
                   help="TensorRT release to check against: 8.5, 8.6, 9.2, 10.0, 10.1 or 11 (default 10.1)")
    p.add_argument("--fp16", action="store_true", help="also check constants are representable in fp16")
    _add_json(p)

    p = sub.add_parser("engine", help="build a TensorRT engine (needs TensorRT and a GPU)")
    _model(p)
    p.add_argument("-o", "--output", required=True, help="engine file (.plan)")
    p.add_argument("--fp16", action="store_true", help="let TensorRT 10 choose fp16 kernels (refused on 11: harden "
                                                       "with --precision fp16 instead)")
    p.add_argument("--bf16", action="store_true", help="let TensorRT 10 choose bf16 kernels (refused on 11)")
    p.add_argument("--shapes", help="MIN/OPT/MAX batch sizes (1/8/64) or NAME:1x3x224x224/.../... per input")
    p.add_argument("--workspace", type=int, default=1024, help="workspace limit in MiB")
    p.add_argument("--timing-cache", help="timing cache file (read if present, written after the build)")

    p = sub.add_parser("run", help="batch inference on any model, on ONNX Runtime or OpenVINO: its outputs; where "
                                   "the first output holds class scores, accuracy on labelled data, else predictions")
    _model(p)
    _add_data(p, required=True, help_text="the samples to run: .npy, .npz (keys = input names; 'labels' for "
                                          "accuracy) or a folder of images")
    p.topic("output").add_argument("-o", "--output", help="OUT.npz: every output, one array per output; any other "
                                                          "name: the predictions (.npy; class scores only)")
    _add_json(p)
    _add_providers(p)
    _add_device(p)
    _add_runtime(p)

    p = sub.add_parser("eval", help="clean, white-box, black-box and straight-through accuracy, side by side")
    p.add_argument("models", nargs="+", help="ONNX models (base first, then hardened ones)")
    p.topic("data").add_argument("--data", required=True, help="labelled data in [0,1] after scaling (.npz with "
                                                               "'labels')")
    _add_attack(p)
    p.topic("attack").add_argument("--attacks", default=",".join(DEFAULT_ATTACKS),
                                   help="comma-separated; pgd also available when torchattacks is installed")
    g = p.topic("output")
    g.add_argument("--json", help="write the results as JSON (with every image's verdicts; finished chunks are "
                                  "kept in JSON.parts/ until it is written, and a rerun resumes from them)")
    g.add_argument("--csv", help="write the results as CSV")
    _add_chunks(p)
    _add_device(p)
    _add_runtime(p)

    p = sub.add_parser("eval-merge", help="`eval merge`: merge the --json reports of every shard of one evaluation")
    p.add_argument("reports", nargs="+", help="the shards' JSON reports")
    p.add_argument("-o", "--output", required=True, help="merged JSON report")

    p = sub.add_parser("sweep", help="choose alpha on a held-out split of the training data")
    _model(p, "the base ONNX model")
    p.topic("inputs").add_argument("--stats", required=True, help="its statistics (from `mstransform calibrate`)")
    p.topic("data").add_argument("--data", required=True, help="held-out TRAINING split with labels (never the "
                                                               "test set)")
    g = p.topic("operator")
    g.add_argument("--alphas", default="0.05,0.1,0.15,0.2,0.3,0.5", help="the alphas to try, comma-separated "
                                                                        "(default 0.05,0.1,0.15,0.2,0.3,0.5)")
    g.add_argument("--max-clean-drop", type=float, default=0.5, help="clean-accuracy budget in points (default 0.5)")
    _add_attack(p)
    g = p.topic("output")
    g.add_argument("--plot", help="PNG of clean, standard-robust and BPDA-robust accuracy against alpha")
    g.add_argument("--json", help="write the sweep as JSON")
    g.add_argument("--csv", help="write the sweep as CSV")
    _add_chunks(p)
    _add_device(p)

    p = sub.add_parser("plot", help="feature histogram of one site/channel before and after the operator")
    _model(p)
    p.topic("inputs").add_argument("--stats", required=True, help="its statistics (from `mstransform calibrate`)")
    g = p.topic("data")
    g.add_argument("--data", required=True, help="the samples whose values are plotted")
    g.add_argument("--limit", type=int, default=512, help="at most this many samples (default 512)")
    g = p.topic("operator")
    g.add_argument("--site", required=True, help="the site to plot (`mstransform sites` lists them)")
    g.add_argument("--channel", type=int, default=0, help="the channel to plot (default 0)")
    g.add_argument("--alpha", type=float, default=0.2, help="threshold multiplier (default 0.2)")
    p.topic("output").add_argument("-o", "--output", required=True, help="PNG file")

    p = sub.add_parser("bench", help="hardened/base latency side by side: warm-up, interleaved rounds, medians")
    p.add_argument("base", help="the base ONNX model")
    p.add_argument("hardened", help="the hardened ONNX model (same inputs)")
    g = p.topic("data")
    g.add_argument("--batch-sizes", default="1", metavar="B,B,...", help="batch sizes to time (default 1)")
    g.add_argument("--warmup", type=int, default=5, help="untimed calls per model and batch size (default 5)")
    g.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    g.add_argument("--runs", type=int, default=10, help="timed calls per model in each round (default 10)")
    _add_providers(p)
    _add_device(p)
    p.topic("runtime").add_argument("--runtime", default=Runtime.ONNXRUNTIME.value, metavar="R[,R]",
                                    help="onnxruntime, openvino, or both comma-separated: one table per runtime "
                                         "(default onnxruntime)")
    p.topic("output").add_argument("--json", help="also write the report as JSON")
    return parser


def with_default_command(argv: list[str]) -> list[str]:
    """``mstransform MODEL ...`` means ``mstransform harden MODEL ...``."""
    i = 0
    while i < len(argv):
        if argv[i] in GLOBAL_VALUED:
            i += 2
        elif argv[i].startswith("-"):
            i += 1
        else:
            break
    if i < len(argv) and argv[i] not in SUBCOMMANDS and not any(x in argv for x in ("-h", "--help", "--version")):
        _refuse_mistyped_command(argv[i])
        return [*argv[:i], "harden", *argv[i:]]
    if argv[i:i + 2] == ["eval", "merge"]:  # `eval merge REPORTS -o OUT` is the command eval-merge
        return [*argv[:i], "eval-merge", *argv[i + 2:]]
    return argv


def _refuse_mistyped_command(word: str) -> None:
    """A word where the command goes that is no file and looks like a command (``calibrte``): say which one,
    rather than hardening a model of that name."""
    import difflib
    import os

    if os.path.exists(word) or any(c in word for c in "./\\") or not word.replace("-", "").isalpha():
        return
    commands = [c for c in SUBCOMMANDS if c != "eval-merge"]
    close = difflib.get_close_matches(word, commands, n=1, cutoff=0.6)
    if close:
        raise UsageError(f"unknown command {word!r}; did you mean {close[0]!r}? (see `mstransform --help`)")
    raise UsageError(f"{word!r} is neither a command ({', '.join(commands)}) nor a model file")
