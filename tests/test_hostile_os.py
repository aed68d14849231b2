"""Hostile inputs through the operating system, part 1: an input destroyed through its external data, and
OS errors (closed pipe, unreadable input, read-only file system, names too long, file-size limit, full
device), each in its class. Each failure gives one line, its exit code, no new file, inputs intact."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from os_cases import (CALIB, CLI, LONG, MODEL, PROGRESS, _Hang, cli_env, one_error, refused, run_bounded,  # noqa: F401
                      snapshot, stats_bytes, w)  # w and stats_bytes are fixtures

import mstransform as mst
from mstransform.core import fileio, guards
from mstransform.core.errors import DataError, ModelError, OutputError, StatsError


# -- 1. an input destroyed through its external data ---------------------------------------------
def _links(w: Path) -> None:
    os.link(w / "ext" / "model.onnx.data", w / "other" / "hard.onnx.data")  # another name, the same inode
    (w / "other" / "soft.onnx.data").symlink_to(w / "ext" / "model.onnx.data")
    (w / "other" / "to-data").symlink_to(w / "ext" / "model.onnx.data")


EXTERNAL = [
    ("output is the input's data file", ["ext/model.onnx", "--stats", "stats.npz", "-o", "ext/model.onnx.data"],
     "is the input"),
    ("renamed model, output named after its data", ["ext/renamed.onnx", "--stats", "stats.npz", "-o", "ext/model.onnx"],
     "external data of output"),
    ("output data is a hard link to the input's", ["ext/renamed.onnx", "--stats", "stats.npz", "-o", "other/hard.onnx"],
     "is the input"),
    ("output data is a symlink to the input's", ["ext/renamed.onnx", "--stats", "stats.npz", "-o", "other/soft.onnx"],
     "is the input"),
    ("output is a symlink to the input's data", ["ext/model.onnx", "--stats", "stats.npz", "-o", "other/to-data"],
     "is the input"),
    ("one-step harden onto the input's data", ["ext/renamed.onnx", "--data", "calib.npz", "-o", "ext/model.onnx"],
     "is the input"),
    ("saved stats onto the input's data", ["ext/model.onnx", "--data", "calib.npz", "--save-stats",
                                           "ext/model.onnx.data", "-o", "o.onnx"], "is the input"),
    ("calibrate onto the input's data", ["calibrate", "ext/model.onnx", "--data", "calib.npz", "-o",
                                         "ext/model.onnx.data"], "is the input"),
    ("predictions onto the input's data", ["run", "ext/model.onnx", "--data", "calib.npz", "-o",
                                           "ext/model.onnx.data"], "is the input"),
]


@pytest.mark.parametrize("argv,words", [c[1:] for c in EXTERNAL], ids=[c[0] for c in EXTERNAL])
def test_external_data_is_an_input(w, monkeypatch, argv, words):
    _links(w)
    monkeypatch.chdir(w)
    refused(w, argv, 6, words)


API_EXTERNAL = [("harden, renamed model", "harden"), ("calibrate_and_harden, renamed model", "one-step")]


@pytest.mark.parametrize("how", [c[1] for c in API_EXTERNAL], ids=[c[0] for c in API_EXTERNAL])
def test_api_refuses_the_input_data(w, how):
    before = snapshot(w)
    with pytest.raises(OutputError, match="is the input"):
        if how == "harden":
            mst.harden(w / "ext" / "renamed.onnx", w / "stats.npz", output=w / "ext" / "model.onnx")
        else:
            mst.calibrate_and_harden(w / "ext" / "renamed.onnx", w / "calib.npz", output=w / "ext" / "model.onnx",
                                     stats_output=w / "s.npz")
    assert snapshot(w) == before


def test_references_list_every_external_file(w):
    from mstransform.passes.references import model_references, with_references

    import onnx_ir as ir

    data = w / "ext" / "model.onnx.data"
    assert [p.resolve() for p in model_references(w / "ext" / "renamed.onnx")] == [data]
    assert [Path(p).resolve() for p in model_references(ir.load(str(w / "ext" / "model.onnx")))] == [data]
    assert model_references(w / "model.onnx") == [] and model_references(w / "calib.npz") == []
    assert with_references(None, w / "ext" / "model.onnx")[1].resolve() == data


# -- 2. OS errors, each in its class -------------------------------------------------------------
def test_closed_pipe_exits_quietly(w):
    """`mstransform sites m.onnx | head -c 1`: status 141 (128 + SIGPIPE, as a shell reports for ls or git), no line."""
    r, wr = os.pipe()
    os.close(r)  # the reader has gone before the first write: deterministic
    try:
        p = subprocess.run([*CLI, "sites", str(w / "model.onnx")], stdout=wr, stderr=subprocess.PIPE, text=True,
                           timeout=60)
    finally:
        os.close(wr)
    assert p.returncode == 141 and p.stderr == "", (p.returncode, p.stderr)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_stdout_on_full_device(w):
    with open("/dev/full", "w") as full:
        p = subprocess.run([*CLI, "sites", str(w / "model.onnx")], stdout=full, stderr=subprocess.PIPE, text=True,
                           timeout=60)
    one_error(p.returncode, p.stderr, 6, "standard output")


def test_file_size_limit_while_writing_stats(w):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    before = snapshot(w)
    p = subprocess.run([*CLI, "calibrate", "model.onnx", "--data", "calib.npz", "--limit", "64", "-o", "s.npz"],
                       cwd=w, capture_output=True, text=True, timeout=60, preexec_fn=limit)
    one_error(p.returncode, p.stderr, 6, "file-size limit")
    assert snapshot(w) == before


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


