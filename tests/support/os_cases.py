"""Shared by the hostile-input tests of the OS, outputs, signals and API classes: each case's folder, snapshots,
and the one-error check."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import sys
from pathlib import Path

import onnx
import pytest
from helpers import EXAMPLE, run_cli

import mstransform as mst

MODEL, CALIB = EXAMPLE / "model.onnx", EXAMPLE / "calib.npz"
_SCRIPT = Path(sys.executable).with_name("mstransform")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "mstransform.tools.entry"]
LONG = "a" * 300


# -- the folder of each case ---------------------------------------------------------------
@pytest.fixture(scope="module")
def stats_bytes(tmp_path_factory):
    d = tmp_path_factory.mktemp("os-stats")
    mst.calibrate(MODEL, CALIB, limit=256, progress=False).save(d / "stats.npz")
    return (d / "stats.npz").read_bytes()


@pytest.fixture
def w(tmp_path, stats_bytes):
    """tmp_path with model.onnx, calib.npz, stats.npz and ext/: model.onnx whose weights live in
    ext/model.onnx.data, and renamed.onnx, a copy of it that reads the same data file."""
    shutil.copy(MODEL, tmp_path / "model.onnx")
    shutil.copy(CALIB, tmp_path / "calib.npz")
    (tmp_path / "stats.npz").write_bytes(stats_bytes)
    (tmp_path / "ext").mkdir()
    onnx.save(onnx.load(str(MODEL)), str(tmp_path / "ext" / "model.onnx"), save_as_external_data=True,
              location="model.onnx.data", size_threshold=0)
    shutil.copy(tmp_path / "ext" / "model.onnx", tmp_path / "ext" / "renamed.onnx")
    (tmp_path / "other").mkdir()
    return tmp_path


def snapshot(folder: Path) -> dict:
    """Every entry under ``folder``: a regular file by its digest, anything else by its kind (never opened)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o444:
                out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISREG(st.st_mode):  # mode 000: by size and time, as reading it may be refused
                out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
            else:
                out[str(p.relative_to(folder))] = stat.S_IFMT(st.st_mode)
    return out


PROGRESS = ("calibrating ",)  # the tool's own progress line, written before a late failure


def one_error(code: int, err: str, expected: int, words: str = "") -> str:
    """Exactly one line, ``mstransform: error: ...``, besides the tool's progress lines."""
    lines = [x for x in err.strip().splitlines() if not x.startswith(PROGRESS)]
    assert code == expected, f"exit {code}, stderr {err!r}"
    assert len(lines) == 1 and lines[0].startswith("mstransform: error:"), err
    assert "Traceback" not in err
    assert words.lower() in lines[0].lower(), lines[0]
    return lines[0]


class _Hang(BaseException):
    """Raised by the alarm: a case blocked (a FIFO opened with no writer)."""


def run_bounded(*argv, seconds: int = 20):
    """run_cli, failing instead of hanging for ever."""
    def alarm(signum, frame):
        raise _Hang(f"blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        return run_cli(*argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def refused(w: Path, argv, code: int, words: str):
    before = snapshot(w)
    r = run_bounded(*argv)
    line = one_error(r.code, r.err, code, words)
    assert snapshot(w) == before, f"files changed: {set(snapshot(w).items()) ^ set(before.items())}"
    return line


def cli_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env.update(extra)
    return env


