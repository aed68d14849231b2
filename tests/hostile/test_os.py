"""Hostile inputs through the operating system: inputs whose read fails (I/O error, permission denied),
file systems that refuse a write (read-only, file-size limit, full device, disk full), names too long
for the file system, control characters in names, a HOME that is a file, and special files (FIFOs,
devices) given as inputs, refused before they are opened. Each gives one line, its exit code, no new
file, inputs intact; the mapping of an OSError to its class is checked on its own."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from os_cases import CLI, LONG, _Hang, cli_env, one_error, refused, snapshot, stats_bytes, w  # noqa: F401 (fixtures)

from mstransform.core import fileio, guards
from mstransform.core.errors import DataError, ModelError, OutputError, StatsError, one_line


# -- inputs whose read fails ------------------------------------------------------------------
UNREADABLE = [("data", ["calibrate", "model.onnx", "--data", "bad.npy", "-o", "s.npz"], 5, "bad.npy"),
              ("stats", ["model.onnx", "--stats", "bad.npz", "-o", "o.onnx"], 4, "bad.npz"),
              ("model", ["sites", "bad.onnx"], 3, "bad.onnx")]


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="no /proc/self/mem")
@pytest.mark.parametrize("argv,code,name", [c[1:] for c in UNREADABLE], ids=[c[0] for c in UNREADABLE])
def test_input_read_fails_io_error(w, monkeypatch, argv, code, name):
    """A regular file whose first read fails (EIO, for root too): /proc/self/mem at offset 0."""
    (w / name).symlink_to("/proc/self/mem")
    monkeypatch.chdir(w)
    refused(w, argv, code, "cannot be read")


def _modes_enforced() -> bool:
    """False for root with CAP_DAC_OVERRIDE, which reads a file of mode 000 (run under `setpriv
    --bounding-set=-dac_override,-dac_read_search` to enforce modes as root)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "probe"
        p.write_bytes(b"x")
        os.chmod(p, 0)
        try:
            p.read_bytes()
        except PermissionError:
            return True
        return False


@pytest.mark.skipif(not _modes_enforced(), reason="this process reads files whatever their mode (root); "
                                                  "see the injected case")
@pytest.mark.parametrize("argv,code,name", [c[1:] for c in UNREADABLE], ids=[c[0] for c in UNREADABLE])
def test_input_permission_denied(w, monkeypatch, argv, code, name):
    np.save(w / "x.npy", np.zeros((4, 1, 28, 28), np.float32))
    shutil.copy(w / {"bad.npy": "x.npy", "bad.npz": "stats.npz", "bad.onnx": "model.onnx"}[name], w / name)
    os.chmod(w / name, 0)
    monkeypatch.chdir(w)
    refused(w, argv, code, "permission denied")


@pytest.mark.parametrize("argv,code,name", [c[1:] for c in UNREADABLE], ids=[c[0] for c in UNREADABLE])
def test_input_permission_denied_injected(w, monkeypatch, argv, code, name):
    (w / name).write_bytes(b"\x93NUMPY" if name.endswith(".npy") else b"PK\x03\x04")
    real = os.open

    def deny(path, flags, *a, **k):
        if os.path.basename(os.fspath(path)) == name:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path, flags, *a, **k)

    monkeypatch.setattr(fileio.os, "open", deny)
    monkeypatch.chdir(w)
    refused(w, argv, code, "permission denied")


# -- writes the file system refuses ---------------------------------------------------------------
WRITES = [("read-only output folder", ["calibrate", "model.onnx", "--data", "calib.npz", "-o", "s.npz"], "access"),
          ("stats on a read-only file system", ["calibrate", "model.onnx", "--data", "calib.npz", "-o", "s.npz"],
           "mkstemp"),
          ("model on a read-only file system", ["model.onnx", "--stats", "stats.npz", "-o", "o.onnx"], "mkdtemp"),
          ("rename on a read-only file system", ["calibrate", "model.onnx", "--data", "calib.npz", "-o", "s.npz"],
           "replace")]


@pytest.mark.parametrize("argv,where", [c[1:] for c in WRITES], ids=[c[0] for c in WRITES])
def test_read_only_file_system_injected(w, monkeypatch, argv, where):
    """EROFS where a read-only mount gives it: access(W_OK) before any work, then (remounted meanwhile) the
    temporary file, folder or rename."""
    module = fileio.os if where in ("replace", "access") else fileio.tempfile
    real = getattr(module, where)

    def erofs(*a, **k):
        if where == "access":
            return False if str(w) in os.fspath(a[0]) and a[1] == os.W_OK else real(*a, **k)
        target = k.get("dir") or (a[1] if where == "replace" else None)
        if target is not None and str(w) in os.fspath(target):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(target))
        return real(*a, **k)

    monkeypatch.setattr(module, where, erofs)
    monkeypatch.chdir(w)
    refused(w, argv, 6, "not writable" if where == "access" else "read-only file system")


def test_file_size_limit_while_writing_stats(w):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    before = snapshot(w)
    p = subprocess.run([*CLI, "calibrate", "model.onnx", "--data", "calib.npz", "--limit", "64", "-o", "s.npz"],
                       cwd=w, capture_output=True, text=True, timeout=60, preexec_fn=limit)
    one_error(p.returncode, p.stderr, 6, "file-size limit")
    assert snapshot(w) == before


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_stdout_on_full_device(w):
    with open("/dev/full", "w") as full:
        p = subprocess.run([*CLI, "sites", str(w / "model.onnx")], stdout=full, stderr=subprocess.PIPE, text=True,
                           timeout=60)
    one_error(p.returncode, p.stderr, 6, "standard output")


def test_disk_full_maps_to_output_error(tmp_path, monkeypatch):
    from mstransform.core import fileio as atomic

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full)
    with pytest.raises(OutputError, match="disk full"):
        with atomic.atomic_output(tmp_path / "x.npz") as tmp:
            tmp.write_bytes(b"data")
    assert os.listdir(tmp_path) == []


# -- names too long, control characters in names ------------------------------------------
NAMES = [("long output", ["model.onnx", "--stats", "stats.npz", "-o", LONG + ".onnx"], 6, "too long"),
         ("long saved stats", ["model.onnx", "--data", "calib.npz", "--save-stats", LONG, "-o", "o.onnx"], 6,
          "too long"),
         ("long data", ["calibrate", "model.onnx", "--data", LONG + ".npz", "-o", "s.npz"], 5, "too long"),
         ("long stats", ["model.onnx", "--stats", LONG + ".npz", "-o", "o.onnx"], 4, "too long"),
         ("long model", ["sites", LONG + ".onnx"], 3, "too long")]


@pytest.mark.parametrize("argv,code,words", [c[1:] for c in NAMES], ids=[c[0] for c in NAMES])
def test_name_too_long(w, monkeypatch, argv, code, words):
    monkeypatch.chdir(w)
    refused(w, argv, code, words)


def test_longest_output_name_still_writes(w, monkeypatch):
    """A name of 251 bytes is valid: the temporary name beside it must be valid too."""
    monkeypatch.chdir(w)
    name = "s" * 247 + ".npz"
    r = run_cli("calibrate", "model.onnx", "--data", "calib.npz", "--limit", "64", "-o", name)
    assert r.code == 0, r.err
    assert (w / name).is_file() and not [p for p in os.listdir(w) if p.startswith(".")]


NEWLINES = [("newline in stats", ["model.onnx", "--stats", "a\nb.npz", "-o", "o.onnx"], 4),
            ("newline in data", ["calibrate", "model.onnx", "--data", "x\ny.npz", "-o", "s.npz"], 5),
            ("newline in output folder", ["model.onnx", "--stats", "stats.npz", "-o", "new\ndir/o.onnx"], 6),
            ("line separator in model", ["sites", "m\u2028x.onnx"], 3),
            ("escape sequence in model", ["sites", "m\x1b[2Jx\r.onnx"], 3)]


@pytest.mark.parametrize("argv,code", [c[1:] for c in NEWLINES], ids=[c[0] for c in NEWLINES])
def test_control_characters_in_paths(w, monkeypatch, argv, code):
    monkeypatch.chdir(w)
    line = refused(w, argv, code, "")
    assert "\x1b" not in line and "\r" not in line
    assert one_line("a\nb\u2028c\x1bd\udcff") == "a\\nb\\u2028c\\x1bd\\udcff"


def test_read_only_home_prints_nothing(w, tmp_path_factory):
    """ONNX Runtime's telemetry cannot persist its device id under a HOME that is a file: silenced at the source."""
    home = tmp_path_factory.mktemp("home") / "not-a-folder"
    home.write_text("")
    p = subprocess.run([*CLI, "model.onnx", "--stats", "stats.npz", "-o", "o.onnx"], cwd=w, capture_output=True,
                       text=True, timeout=120, env=cli_env(HOME=str(home)))
    assert p.returncode == 0 and p.stderr == "", p.stderr


# -- special files are refused before they are opened --------------------------------------
FIFOS = [("data FIFO .npy", ["calibrate", "model.onnx", "--data", "f.npy", "-o", "s.npz"], "f.npy", 5),
         ("data FIFO .npz", ["calibrate", "model.onnx", "--data", "f.npz", "-o", "s.npz"], "f.npz", 5),
         ("stats FIFO", ["model.onnx", "--stats", "f.npz", "-o", "o.onnx"], "f.npz", 4),
         ("model FIFO", ["sites", "f.onnx"], "f.onnx", 3),
         ("eval FIFO", ["model.onnx", "--stats", "stats.npz", "--eval", "f.npz", "-o", "o.onnx"], "f.npz", 5),
         ("data is /dev/zero", ["calibrate", "model.onnx", "--data", "zero.npy", "-o", "s.npz"], "zero.npy", 5)]


@pytest.mark.parametrize("argv,name,code", [c[1:] for c in FIFOS], ids=[c[0] for c in FIFOS])
def test_special_file_inputs(w, monkeypatch, argv, name, code):
    if name.startswith("zero"):
        (w / name).symlink_to("/dev/zero")
    else:
        os.mkfifo(w / name)
    monkeypatch.chdir(w)
    refused(w, argv, code, "not a regular file")


def test_api_refuses_a_fifo(w):
    from mstransform.runtime.data import DataSource
    from mstransform.runtime.inputs import input_specs

    from mstransform.passes.graph.load import load_model

    os.mkfifo(w / "f.npy")
    specs = input_specs(load_model(w / "model.onnx"))

    def alarm(signum, frame):
        raise _Hang("blocked")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(20)
    try:
        with pytest.raises(DataError, match="FIFO"):
            DataSource(w / "f.npy", specs)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- the mapping of an OSError no reader mapped ---------------------------------------------
MAPPED = [("data", DataError, "calib.npz", errno.EACCES), ("image in a data folder", DataError, "imgs/a.png",
                                                           errno.EIO),
          ("stats", StatsError, "stats.npz", errno.EACCES), ("model", ModelError, "model.onnx", errno.EIO),
          ("output temporary", OutputError, ".mstransform-o.onnx.x1.tmp", errno.EACCES),
          ("disk full, no file", OutputError, None, errno.ENOSPC),
          ("read-only, unknown file", OutputError, "/elsewhere/x", errno.EROFS)]


@pytest.mark.parametrize("cls,name,code", [c[1:] for c in MAPPED], ids=[c[0] for c in MAPPED])
def test_os_error_mapping(tmp_path, cls, name, code):
    """The one mapping the command line's top level uses for an OSError no reader mapped."""
    roles = [(tmp_path / "model.onnx", ModelError, "model file"), (tmp_path / "calib.npz", DataError, "data"),
             (tmp_path / "imgs", DataError, "data"), (tmp_path / "stats.npz", StatsError, "stats file"),
             (tmp_path / "o.onnx", OutputError, "output")]
    filename = None if name is None else str(name if name.startswith("/") else tmp_path / name)
    err = guards.classify_os_error(OSError(code, os.strerror(code), filename), roles)
    assert type(err) is cls and "\n" not in str(err)
    assert guards.classify_os_error(OSError(errno.EIO, "Input/output error", "/unrelated"), roles) is None
    assert isinstance(guards.input_error(PermissionError(errno.EACCES, "Permission denied"), "x", DataError, "data"),
                      DataError)
