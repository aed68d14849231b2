"""Hostile inputs through the operating system, part 2: one line on stderr, special files refused before
they are opened, two runs racing to one output, and output names and modes."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli
from os_cases import (CALIB, CLI, LONG, MODEL, PROGRESS, _Hang, cli_env, one_error, refused, run_bounded,  # noqa: F401
                      snapshot, stats_bytes, w)  # w and stats_bytes are fixtures

import mstransform as mst
from mstransform.core import fileio, guards
from mstransform.core.errors import DataError, OutputError, one_line


# -- 3. one line on stderr --------------------------------------------------------------------
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


# -- 4. special files are refused before they are opened --------------------------------------
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

    from mstransform.passes.prepare import load_model

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


# -- 5. two runs to one output ----------------------------------------------------------------
def _arrays(path: Path) -> dict:
    """Every initializer of the model at ``path``, external data read from beside it."""
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


RACES = [("inline weights", "model.onnx", []), ("external data", "ext/model.onnx", ["out.onnx.data"])]


@pytest.mark.parametrize("model,extra", [c[1:] for c in RACES], ids=[c[0] for c in RACES])
def test_two_runs_race_to_one_output(w, model, extra):
    """Two runs (alpha 0.1 and 0.3) to one -o, three rounds: both verify their own file and exit 0; what is
    left is one of the two whole (model, metadata and external data from the same run), and nothing else."""
    refs = {}
    for a in ("0.1", "0.3"):
        mst.harden(w / model, w / "stats.npz", alpha=float(a), output=w / "other" / f"ref{a}.onnx", verify=False)
        refs[a] = _arrays(w / "other" / f"ref{a}.onnx")
    listing = sorted([*os.listdir(w), "out.onnx", *extra])
    out = w / "out.onnx"
    for _ in range(3):
        procs = [subprocess.Popen([*CLI, model, "--stats", "stats.npz", "--alpha", a, "-o", "out.onnx"],
                                  cwd=w, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for a in ("0.1", "0.3")]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        for p in procs:
            p.stderr.close()
        assert [code for code, _ in results] == [0, 0], results
        onnx.checker.check_model(str(out), full_check=True)
        alpha = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}[
            "mstransform.alpha"]
        got, want = _arrays(out), refs[alpha]
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want), alpha
        assert sorted(os.listdir(w)) == listing


def test_publishing_keeps_what_another_run_published(tmp_path):
    """The primitive, interleaved by hand: A and B write one output, B publishes, A fails."""
    out = tmp_path / "o.bin"
    out.write_bytes(b"old")
    with fileio.publishing(out) as b:
        with pytest.raises(RuntimeError):
            with fileio.publishing(out) as a:
                a.path.write_bytes(b"A")
                (a.path.parent / "o.bin.data").write_bytes(b"A data")
                raise RuntimeError("A's verification failed")
        assert out.read_bytes() == b"old"  # A removed only its own files
        b.path.write_bytes(b"B")
        (b.path.parent / "o.bin.data").write_bytes(b"B data")
    assert out.read_bytes() == b"B" and (tmp_path / "o.bin.data").read_bytes() == b"B data"
    assert sorted(os.listdir(tmp_path)) == ["o.bin", "o.bin.data"]
    with fileio.publishing(out) as c:
        c.path.write_bytes(b"C")
    c.retract()
    assert sorted(os.listdir(tmp_path)) == ["o.bin.data"]  # its own file, and nothing else, retracted


# -- 6. output names and modes ----------------------------------------------------------------
FOLDERS = [("model into a missing folder/", ["model.onnx", "--stats", "stats.npz", "-o", "newdir/"], "names a folder"),
           ("model onto out/.", ["model.onnx", "--stats", "stats.npz", "-o", "other/."], "folder"),
           ("model onto a folder", ["model.onnx", "--stats", "stats.npz", "-o", "other"], "folder"),
           ("stats into a missing folder/", ["calibrate", "model.onnx", "--data", "calib.npz", "-o", "newdir/"],
            "names a folder"),
           ("predictions into a folder/", ["run", "model.onnx", "--data", "calib.npz", "-o", "other/"],
            "names a folder")]


@pytest.mark.parametrize("argv,words", [c[1:] for c in FOLDERS], ids=[c[0] for c in FOLDERS])
def test_output_names_a_folder(w, monkeypatch, argv, words):
    monkeypatch.chdir(w)
    refused(w, argv, 6, words)
    assert not (w / "newdir").exists()


MODES = [("stats", ["calibrate", "model.onnx", "--data", "calib.npz", "--limit", "64", "-o", "out"]),
         ("predictions", ["run", "model.onnx", "--data", "calib.npz", "--limit", "64", "-o", "out"]),
         ("model", ["model.onnx", "--stats", "stats.npz", "--no-verify", "-o", "out"])]


@pytest.mark.parametrize("umask", [0o002, 0o077], ids=["umask 002", "umask 077"])
@pytest.mark.parametrize("argv", [c[1] for c in MODES], ids=[c[0] for c in MODES])
def test_output_mode_follows_umask(w, monkeypatch, argv, umask):
    monkeypatch.chdir(w)
    old = os.umask(umask)
    try:
        r = run_cli(*argv)
    finally:
        os.umask(old)
    assert r.code == 0, r.err
    assert stat.S_IMODE(os.stat(w / "out").st_mode) == 0o666 & ~umask
    assert not [p for p in os.listdir(w) if p.startswith(".")]


def test_output_check_is_by_inode(tmp_path):
    a = tmp_path / "a"
    a.write_bytes(b"x")
    os.link(a, tmp_path / "b")
    (tmp_path / "c").symlink_to(a)
    for out in ("b", "c"):
        with pytest.raises(OutputError, match="is the input"):
            guards.check_outputs([tmp_path / out], [a])
    with pytest.raises(OutputError, match="external data of output"):
        guards.check_outputs([tmp_path / "m.onnx"], [tmp_path / "m.onnx.data"], models=[tmp_path / "m.onnx"])
