"""Hostile outputs: an output that is one of the inputs (by name, by hard or symbolic link, through a model's
external data), a device, a folder or in a folder that does not exist; a failure after work has begun,
which leaves no file; two runs racing to one output; and the mode of what is written. Each refusal gives
one line, its exit code, no new file, inputs intact."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from helpers import EXAMPLE, bad_input_cases, check_bad_input, run_cli
from os_cases import CLI, refused, stats_bytes, w  # noqa: F401 (w and stats_bytes are fixtures)

import mstransform as mst
from mstransform.core import fileio, guards
from mstransform.core.errors import OutputError

MODEL, CALIB, TEST = EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", EXAMPLE / "test.npz"


@pytest.fixture(scope="module")
def bad(tmp_path_factory, example_hardened):
    """A copy of the example model, a hard link to the session's stats (another name, the same inode) and
    the outputs of the table below; ``folder`` must gain no file from any case."""
    tmp = tmp_path_factory.mktemp("hostile-outputs")
    shutil.copy(MODEL, tmp / "model.onnx")
    os.link(example_hardened.stats, tmp / "stats-link.npz")
    return SimpleNamespace(tmp=tmp, m=tmp / "model.onnx", s=example_hardened.stats, link=tmp / "stats-link.npz",
                           out=tmp / "o.onnx", folder=tmp,
                           protected=[MODEL, CALIB, TEST, tmp / "model.onnx", example_hardened.stats])


# (label, argv of the prepared files, exit code, words in the message)
OUTPUT_CASES = [
    # an output that is an input, by name or by inode
    ("output equals input", lambda f: [f.m, "--stats", f.s, "-o", f.m], 6, "is the input"),
    ("harden output = stats", lambda f: [MODEL, "--stats", f.s, "-o", f.s], 6, "is the input"),
    ("harden output = stats via hard link", lambda f: [MODEL, "--stats", f.s, "-o", f.link], 6, "is the input"),
    ("stats output equals data", lambda f: ["calibrate", MODEL, "--data", CALIB, "-o", CALIB], 6, "is the input"),
    ("save-stats = eval data", lambda f: [MODEL, "--data", CALIB, "--save-stats", TEST, "--eval", TEST, "-o", f.out],
     6, "is the input"),
    ("model output = save-stats", lambda f: [MODEL, "--data", CALIB, "--save-stats", f.out, "-o", f.out], 6,
     "same file"),
    ("merge output = a shard", lambda f: ["stats", "merge", f.s, f.link, "-o", f.s], 6, "is the input"),
    ("eval json = model", lambda f: ["eval", MODEL, "--data", TEST, "--json", MODEL], 6, "is the input"),
    # an output that cannot be a file
    ("output is a device", lambda f: [MODEL, "--stats", f.s, "-o", "/dev/null"], 6, "not a regular file"),
    ("predictions to a device", lambda f: ["run", MODEL, "--data", TEST, "-o", "/dev/full"], 6, "not a regular file"),
    ("output folder missing", lambda f: [f.m, "--stats", f.s, "-o", f.tmp / "no" / "dir" / "x.onnx"], 6,
     "does not exist"),
    # a failure after calibration leaves neither file
    ("one-step failing late", lambda f: [MODEL, "--data", CALIB, "--alpha", "nosuch=0.1", "-o", f.out], 2,
     "matches no site"),
]


@bad_input_cases(OUTPUT_CASES)
def test_hostile_output(label, argv, code, words, bad):
    check_bad_input(label, argv(bad), code, words, bad.folder, bad.protected)


# -- an input destroyed through its external data ---------------------------------------------
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


def test_references_list_every_external_file(w):
    from mstransform.passes.graph.external_data import model_references, with_references

    import onnx_ir as ir

    data = w / "ext" / "model.onnx.data"
    assert [p.resolve() for p in model_references(w / "ext" / "renamed.onnx")] == [data]
    assert [Path(p).resolve() for p in model_references(ir.load(str(w / "ext" / "model.onnx")))] == [data]
    assert model_references(w / "model.onnx") == [] and model_references(w / "calib.npz") == []
    assert with_references(None, w / "ext" / "model.onnx")[1].resolve() == data


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


# -- output names and modes ----------------------------------------------------------------
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


# -- two runs to one output ----------------------------------------------------------------
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
