"""The parser from its command table, and ``--help`` as a newcomer reads it: a command added to the table alone is
parsed, listed and dispatched; every flag says what it does, grouped by topic (inputs, data, operator,
output, checks, runtime, attack), the global options last; ``harden --help`` is held to a golden file."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mstransform.tools.cli_parser import TOPICS, build_parser

GOLDEN = Path(__file__).resolve().parents[2] / "support" / "golden" / "harden-help.txt"


def commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_flag_says_what_it_does(name):
    parser = commands()[name]
    silent = [a.option_strings or [a.dest] for a in parser._actions if not a.help]
    assert not silent, f"{name}: flags without help: {silent}"


@pytest.mark.parametrize("name", ["harden", "calibrate", "run", "eval", "sweep", "sites"])
def test_flags_are_grouped_by_topic_and_global_options_come_last(name):
    text = commands()[name].format_help()
    titles = [line[:-1] for line in text.splitlines() if line.endswith(":") and line[:-1] in TOPICS]
    assert titles[-1] == "global options" and len(titles) >= 3, titles
    assert titles == [t for t in TOPICS if t in titles]  # in the one order every command uses


def test_harden_help_is_the_golden_file():
    """A change of the harden command's flags or words shows here; regenerate with
    ``COLUMNS=100 mstransform harden --help > tests/support/golden/harden-help.txt`` and read the diff."""
    env = {**os.environ, "COLUMNS": "100"}
    out = subprocess.run([sys.executable, "-m", "mstransform", "harden", "--help"], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert out == GOLDEN.read_text()


def test_a_command_added_to_the_table_alone_is_parsed_listed_dispatched_and_path_checked(monkeypatch, tmp_path):
    """One ``Command`` entry (docs/layout.md's worked example): the parser, ``--help``'s list, the dispatch and the
    role check of its path argument all come from it."""
    from helpers import EXAMPLE, run_cli

    from mstransform.core.errors import ModelError
    from mstransform.tools import cli_parser

    ran = []

    def inspect_flags(p):
        p.add_argument("model", help="the ONNX model")

    def cmd_inspect(a):
        ran.append(a.model)
        print(f"inspected {Path(a.model).name}")
        return 0

    entry = cli_parser.Command("inspect", "what a model declares: inputs, outputs, opsets", inspect_flags, cmd_inspect)
    monkeypatch.setitem(cli_parser.COMMANDS, "inspect", entry)
    listed = build_parser().format_help()
    assert "inspect" in listed and "what a model declares" in listed
    done = run_cli("inspect", EXAMPLE / "model.onnx")
    assert (done.code, done.out, ran) == (0, "inspected model.onnx\n", [str(EXAMPLE / "model.onnx")])
    os.mkfifo(tmp_path / "pipe.onnx")  # the `model` role refuses a FIFO unopened, before the command runs
    refused = run_cli("inspect", tmp_path / "pipe.onnx")
    assert refused.code == ModelError.exit_code and refused.err.count("\n") == 1 and "pipe.onnx" in refused.err
    assert len(ran) == 1
