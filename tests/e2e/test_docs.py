"""The documents say what the code does: docs/cli.md against the parser, the README's size and
commands, and no notebook history (work sessions by number or as "this" one) anywhere a reader looks."""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mstransform.tools.cli_parser import build_parser

ROOT = Path(__file__).resolve().parents[2]
CLI_MD = ROOT / "docs" / "cli.md"
README = ROOT / "README.md"
USER_COMMAND = "mstransform model.onnx --stats stats.npz --alpha 0.2"

# An option as a reader sees it: `--name` or `-x`, not part of a longer word (1e-5, A-Z, x-axis).
LONG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
SHORT = re.compile(r"(?<![\w-])-[A-Za-z](?![\w-])")
HEADING = re.compile(r"^## `?mstransform ([a-z-]+(?: [a-z-]+)?)`?")


def _subparsers(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its full name (``harden``, ``stats merge``), at any depth."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                nested = _subparsers(sub, full + " ")
                if nested:
                    out.update(nested)
                else:
                    out[full] = sub
    return out


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def _named(text: str) -> set[str]:
    return set(LONG.findall(text)) | set(SHORT.findall(text))


def _sections(text: str) -> dict[str, str]:
    """``## `mstransform X` ...`` sections of cli.md by command name; the rest under ``""``."""
    out: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        if line.startswith("## "):
            m = HEADING.match(line)
            current = m.group(1) if m else ""
            out.setdefault(current, [])
        out[current].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def _table_rows(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.startswith("|"))


@pytest.fixture(scope="module")
def parsers():
    main = build_parser()
    return main, _subparsers(main)


def test_every_command_has_a_section(parsers):
    _, subs = parsers
    sections = _sections(CLI_MD.read_text())
    missing = sorted(set(subs) - set(sections))
    assert not missing, f"docs/cli.md has no '## `mstransform X`' section for {missing}"


def test_every_option_of_every_command_is_in_cli_md(parsers):
    main, subs = parsers
    sections = _sections(CLI_MD.read_text())
    global_opts = _options(main)
    global_rows = _named(_table_rows(sections[""]))
    missing = []
    for name, sub in subs.items():
        rows = _named(_table_rows(sections.get(name, "")))
        for opt in sorted(_options(sub)):
            if opt in global_opts:
                if opt not in global_rows:
                    missing.append(f"{opt} (global)")
            elif opt not in rows:
                missing.append(f"{name}: {opt}")
    for opt in sorted(global_opts):
        if opt not in global_rows:
            missing.append(f"{opt} (global)")
    assert not missing, f"options without a table row in docs/cli.md: {sorted(set(missing))}"


def test_cli_md_names_no_option_that_does_not_exist(parsers):
    """Anywhere on the page, every option named exists in some parser; in a command's tables (its
    definitions), every option named is that command's (or a global one)."""
    main, subs = parsers
    everything = _options(main).union(*(_options(s) for s in subs.values()))
    text = CLI_MD.read_text()
    wrong = [f"anywhere: {opt}" for opt in sorted(_named(text) - everything)]
    for name, section in _sections(text).items():
        if name == "":
            continue
        assert name in subs, f"docs/cli.md has a section for `mstransform {name}`, which is no command"
        allowed = _options(subs[name]) | _options(main)
        wrong += [f"{name}: {opt}" for opt in sorted(_named(_table_rows(section)) - allowed)]
    assert not wrong, f"docs/cli.md names options the parser does not have: {wrong}"


def test_readme_is_short_and_has_the_commands():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 260, f"README.md has {len(lines)} lines; keep it at most 260 (details go to docs/)"
    for command in ("make demo", "make test", USER_COMMAND):
        assert command in text, f"README.md lacks {command!r}"


def test_readme_links_resolve():
    text = README.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (ROOT / target).exists() or target in ("docs/cpu-layout.md", "docs/compatibility.md"), \
            f"README.md links to {target}, which does not exist"


_S = "sess" + "ion"  # spelled in pieces, so this file does not match its own search
HISTORY = rf"{_S} [0-9]|this {_S}|earlier {_S}|previous {_S}|{_S}s so far"


def test_no_session_history_in_docs_or_code():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("git is not installed or this is not a git checkout")
    paths = ["README.md", "docs/*.md", "*.py", "benchmarks/", ":(exclude).venv"]
    r = subprocess.run(["git", "grep", "--untracked", "-n", "-i", "-I", "-E", HISTORY, "--", *paths],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode in (0, 1), f"git grep failed: {r.stderr.strip()}"
    assert r.returncode == 1, "notebook history in files a reader reads:\n" + r.stdout


# -- docs/layout.md against the tree --------------------------------------------------------------
LAYOUT = ROOT / "docs" / "layout.md"
ROOMS = ("core", "passes", "runtime", "robustness", "deploy", "tools")


def _layout_tables() -> dict[str, set[str]]:
    rooms, room = {}, None
    for line in LAYOUT.read_text().splitlines():
        if m := re.fullmatch(r"### `(\w+)/`", line):
            room = rooms.setdefault(m.group(1), set())
        elif room is not None and (m := re.match(r"\| `([\w/.]+)` \|", line)):
            room.add(m.group(1))
        elif line.startswith("## "):
            room = None
    return rooms


def _modules(room: str) -> set[str]:
    out = set()
    for p in (ROOT / room).rglob("*.py"):
        rel = p.relative_to(ROOT / room)
        if p.name != "__init__.py":
            out.add(rel.as_posix())
        elif len(rel.parts) > 1:
            out.add(rel.parent.as_posix() + "/")
    return out


def test_layout_tables_name_exactly_the_modules_in_the_tree():
    tables = _layout_tables()
    assert sorted(tables) == sorted(ROOMS)
    for room in ROOMS:
        assert tables[room] == _modules(room), room


def test_every_file_and_name_layout_md_points_to_exists():
    text = LAYOUT.read_text()
    top = "|".join((*ROOMS, "tests", "scripts", "benchmarks", "examples"))  # from the root; table rows are room-relative
    refs = set(re.findall(rf"`((?:{top})/(?:\w+/)*\w+\.py)(?::(\w+))?`", text))
    assert len(refs) > 20
    for path, name in refs:
        file = ROOT / path
        assert file.is_file(), path
        if name:
            assert re.search(rf"^(class |def )?{name}\b", file.read_text(), re.M), f"{path}:{name}"


def test_layout_md_worked_examples_build_with_the_code_as_it_is():
    """Each worked example's snippet is evaluated against the real constructors: a changed signature fails."""
    import types

    import numpy as np

    from mstransform.core.activations import ActivationKind, Form, TorchCall
    from mstransform.core.options import Device
    from mstransform.runtime.session import Opener
    from mstransform.tools.cli_parser import Command

    blocks = re.findall(r"```python\n(.*?)```", LAYOUT.read_text(), re.S)
    assert len(blocks) == 3
    activation = eval(blocks[0], {"ActivationKind": ActivationKind, "Form": Form, "TorchCall": TorchCall, "np": np})
    assert activation.onnx_ops == {"Sin"} and activation.forms[0].f(np.float64(1.0)) == np.sin(1.0)
    table = {}
    exec(blocks[1], {"RUNTIMES": table, "Opener": Opener, "Device": Device, "open_counting": print})
    assert table["counting"].devices == {Device.CPU}
    handler = types.SimpleNamespace(cmd_inspect=print)
    command = eval(blocks[2], {"Command": Command, "flags": types.SimpleNamespace(inspect_flags=len), "cmd": handler})
    assert command.name == "inspect" and command.run is print
