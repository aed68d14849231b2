"""``--help`` as a newcomer reads it: every flag says what it does, grouped by topic (inputs, data, operator,
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
