"""Every README snippet meant to run runs as printed: the fenced ``sh`` and ``python`` blocks, in order,
in a fresh folder holding what `make demo` leaves (its recipe, read from the Makefile), the shipped
examples and, under the names the README uses, the example's model and data (`model.onnx`,
`calib.npz`, `test.npz`, `val.npz`). The first ``sh`` block runs with the project's environment off
the `PATH`, as a new user's shell is, so it must itself make `mstransform` and `python` findable.
Indented blocks show forms that take minutes (eval, sweep): each `mstransform` line in them must
parse with the command line's parser."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mstransform.tools.cli_parser import build_parser, with_default_command

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLE = ROOT / "examples" / "fashion_mnist"
FENCE = re.compile(r"^```(sh|python)\n(.*?)^```$", re.S | re.M)
VENV_BIN = Path(sys.executable).parent


def fenced(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def indented_commands(text: str) -> list[str]:
    """`mstransform ...` lines of the README's indented (4-space) blocks, outside fences."""
    fenced_spans = [m.span() for m in FENCE.finditer(text)]
    offset, out = 0, []
    for line in text.splitlines(keepends=True):
        inside = any(a <= offset < b for a, b in fenced_spans)
        offset += len(line)
        if not inside and line.startswith("    mstransform "):
            out.append(line.strip().split("  #")[0].strip())
    return out


def demo_recipe() -> list[str]:
    """The shell lines of the Makefile's `demo` target, with its variables filled in as `make` would."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    block = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, re.M).group(1)
    variables = {"$(VENV)": ".venv", "$(EXAMPLE)": "examples/fashion_mnist"}
    lines = []
    for line in block.splitlines():
        for k, v in variables.items():
            line = line.replace(k, v)
        lines.append(line.strip())
    return lines


def _env(activated: bool) -> dict:
    env = dict(os.environ)
    parts = [p for p in env.get("PATH", "").split(os.pathsep) if Path(p).resolve() != VENV_BIN.resolve()]
    env["PATH"] = os.pathsep.join(parts)
    env.pop("VIRTUAL_ENV", None)
    env["MPLBACKEND"] = "Agg"
    return env


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A folder as a user has it right after `make demo` (the environment linked, not reinstalled)."""
    home = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "examples", home / "examples", ignore=shutil.ignore_patterns("out", "__pycache__"))
    (home / ".venv").symlink_to(VENV_BIN.parent)
    for name in ("model.onnx", "calib.npz", "test.npz", "val.npz"):
        shutil.copy(EXAMPLE / name, home / name)
    r = subprocess.run(["bash", "-e", "-c", "\n".join(demo_recipe())], cwd=home, env=_env(False),
                       capture_output=True, text=True)
    assert r.returncode == 0, f"make demo's recipe failed:\n{r.stderr[-2000:]}"
    return home


def test_every_fenced_snippet_runs_as_printed(fresh):
    blocks = fenced(README.read_text())
    assert [kind for kind, _ in blocks].count("sh") >= 2 and any(kind == "python" for kind, _ in blocks)
    first_sh = True
    for i, (kind, code) in enumerate(blocks):
        if kind == "sh":
            script = code if first_sh else "source .venv/bin/activate\n" + code
            cmd = ["bash", "-e", "-o", "pipefail", "-c", script]
            first_sh = False
        else:
            cmd = [str(VENV_BIN / "python"), "-c", code]
        r = subprocess.run(cmd, cwd=fresh, env=_env(False), capture_output=True, text=True)
        assert r.returncode == 0, f"README block {i} ({kind}) failed:\n{code}\n--- stderr:\n{r.stderr[-3000:]}"


def test_after_setup_names_the_environment():
    """Right after the two set-up commands: the first thing to type puts the environment on PATH."""
    text = README.read_text()
    after = text[text.index("make test"):]
    kind, code = fenced(after)[0]
    assert kind == "sh" and code.splitlines()[0] == "source .venv/bin/activate"
    assert "python examples/01_harden_onnx/harden.py" in code


def test_indented_commands_parse():
    lines = indented_commands(README.read_text())
    assert any(" eval " in f" {line} " for line in lines)
    parser = build_parser()
    for line in lines:
        argv = shlex.split(line)[1:]
        try:
            parser.parse_args(with_default_command(argv))
        except SystemExit as e:  # pragma: no cover - argparse's own exit
            pytest.fail(f"README command does not parse: {line} ({e})")
