"""The command line's parser, built from its one command table (:data:`COMMANDS`).

Adding a command is one :class:`Command` entry, its ``cmd_`` function in :mod:`~.commands` and its
flags function in :mod:`~.cli_flags`: the parser, the dispatch of :mod:`~.cli`, ``--help``'s list
and the words the default command (harden) tells apart from a model file all derive from the table.
A path flag's role is its destination's entry in :data:`mstransform.tools.arguments.ROLES`, which
the command line checks for every command before it runs; the flag an error names is read off the
parser too (:func:`flag_names`).
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from mstransform.core.errors import UsageError
from mstransform.tools import cli_flags as flags
from mstransform.tools import commands as cmd

# API parameters set by a flag of another name; every other parameter is named by its flag's destination.
PARAMS = {"n": "images", "axes": "axis", "batch_axes": "batch_axis", "probe": "data", "workspace_mib": "workspace"}


@dataclass(frozen=True)
class Command:
    """One sub-command: its name, its line in ``--help``, the function that adds its flags and the one that
    runs it; the words users type for it where they are not its name, and which of its outputs are models."""

    name: str
    help: str
    flags: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    typed_as: tuple[str, ...] = ()  # `eval merge` is parsed as eval-merge
    models_out: tuple[str, ...] = ()  # outputs that are ONNX models (each also writes OUT.data)


# Every command, in the order of `mstransform --help`.
COMMANDS = {c.name: c for c in (
    Command("harden", "insert sparsify operators (the default command)", flags.harden_flags, cmd.cmd_harden,
            models_out=("output",)),
    Command("sites", "print the site table and why other activations were not matched; with --stats and --data, "
                     "the fraction of values each operator replaces", flags.sites_flags, cmd.cmd_sites),
    Command("calibrate", "measure per-site statistics on clean training data", flags.calibrate_flags,
            cmd.cmd_calibrate),
    Command("stats", "inspect or merge stats files", flags.stats_flags, cmd.cmd_stats),
    Command("check-trt", "static TensorRT compatibility check (no GPU needed)", flags.check_trt_flags,
            cmd.cmd_check_trt),
    Command("engine", "build a TensorRT engine (needs TensorRT and a GPU)", flags.engine_flags, cmd.cmd_engine),
    Command("run", "batch inference on any model, on any --runtime: its outputs; where the first output "
                   "holds class scores, accuracy on labelled data, else predictions", flags.run_flags, cmd.cmd_run),
    Command("eval", "clean, white-box, black-box and straight-through accuracy, side by side", flags.eval_flags,
            cmd.cmd_eval),
    Command("eval-merge", "`eval merge`: merge the --json reports of every shard of one evaluation",
            flags.eval_merge_flags, cmd.cmd_eval_merge, typed_as=("eval", "merge")),
    Command("sweep", "choose alpha on a held-out split of the training data", flags.sweep_flags, cmd.cmd_sweep),
    Command("plot", "feature histogram of one site/channel before and after the operator", flags.plot_flags,
            cmd.cmd_plot),
    Command("bench", "hardened/base latency side by side: warm-up, interleaved rounds, medians", flags.bench_flags,
            cmd.cmd_bench),
)}


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


def build_parser() -> argparse.ArgumentParser:
    from mstransform import __version__

    parser = Parser(prog="mstransform", description="Harden exported ONNX models with MeanSparse operators.",
                    epilog="example: mstransform model.onnx --stats stats.npz --alpha 0.2  (no sub-command = harden)",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mstransform {__version__}")
    _add_global(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", parser_class=_Sub)
    for command in COMMANDS.values():
        command.flags(sub.add_parser(command.name, help=command.help))
    return parser


def _global_valued() -> set[str]:
    """The global flags that take a value (``--threads N``), skipped with it where the command is looked for."""
    parser = Parser(add_help=False)
    _add_global(parser, suppress=False)
    return {s for a in parser._actions if a.nargs != 0 for s in a.option_strings}


def _typed() -> list[str]:
    """The commands users type by their name (not ``eval-merge``, typed ``eval merge``)."""
    return [c.name for c in COMMANDS.values() if not c.typed_as]


def with_default_command(argv: list[str]) -> list[str]:
    """``mstransform MODEL ...`` means ``mstransform harden MODEL ...``; ``eval merge`` is ``eval-merge``."""
    valued = _global_valued()
    i = 0
    while i < len(argv):
        if argv[i] in valued:
            i += 2
        elif argv[i].startswith("-"):
            i += 1
        else:
            break
    if i < len(argv) and argv[i] not in COMMANDS and not any(x in argv for x in ("-h", "--help", "--version")):
        _refuse_mistyped_command(argv[i])
        return [*argv[:i], "harden", *argv[i:]]
    for command in COMMANDS.values():
        words = list(command.typed_as)
        if words and argv[i:i + len(words)] == words:
            return [*argv[:i], command.name, *argv[i + len(words):]]
    return argv


def _refuse_mistyped_command(word: str) -> None:
    """A word where the command goes that is no file and looks like a command (``calibrte``): say which one,
    rather than hardening a model of that name."""
    import difflib
    import os

    if os.path.exists(word) or any(c in word for c in "./\\") or not word.replace("-", "").isalpha():
        return
    close = difflib.get_close_matches(word, _typed(), n=1, cutoff=0.6)
    if close:
        raise UsageError(f"unknown command {word!r}; did you mean {close[0]!r}? (see `mstransform --help`)")
    raise UsageError(f"{word!r} is neither a command ({', '.join(_typed())}) nor a model file")


def flag_names() -> dict[str, str]:
    """API parameter -> the flag that sets it, for error messages (``batch_axes`` -> ``--batch-axis``), read off
    the parser: an option by its strings (``-n/--images``), a positional by its name in capitals (``MODEL``)."""
    actions = [a for p in _parsers(build_parser()) for a in p._actions
               if a.dest != "help" and not isinstance(a, argparse._SubParsersAction)]
    names: dict[str, str] = {}
    for a in sorted(actions, key=lambda a: not a.option_strings):  # an option's name before a positional's
        names.setdefault(a.dest, "/".join(a.option_strings) if a.option_strings else a.dest.upper())
    names.update({param: names[dest] for param, dest in PARAMS.items()})
    names["mean/std"] = f"{names['mean']}/{names['std']}"
    return names


def _parsers(parser):
    """``parser`` and every parser of its sub-commands, theirs included."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)
