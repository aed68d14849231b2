"""Hostile inputs by class (aliasing, special files, unbounded values, library crashes, leftovers,
silent wrong results): each must give one line, its exit code, no new file, inputs intact."""
from __future__ import annotations

import os
import zipfile
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from conftest import EXAMPLE, bad_input_cases, check_bad_input, run_cli


MODEL, CALIB, TEST = EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", EXAMPLE / "test.npz"


@pytest.fixture(scope="module")
def work(tmp_path_factory, example_hardened):
    """The session's stats and hardened example, and a hard link to the stats: another name, the same inode."""
    d = tmp_path_factory.mktemp("hostile")
    os.link(example_hardened.stats, d / "stats-link.npz")
    return SimpleNamespace(stats=example_hardened.stats, hard=example_hardened.hardened, link=d / "stats-link.npz")


def _absurd_npz(path):
    """A valid zip whose array header announces 10^12 samples but holds 16 bytes."""
    header = {"descr": "|u1", "fortran_order": False, "shape": (10**12, 1, 28, 28)}
    with zipfile.ZipFile(path, "w") as z, z.open("input.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 16)


@pytest.fixture(scope="module")
def hostile(work, tmp_path_factory):
    """The hostile files of the table below, built once per module; ``folder`` must gain no file from any case."""
    tmp = tmp_path_factory.mktemp("hostile-files")
    (tmp / "loop.onnx").symlink_to(tmp / "loop.onnx")
    _absurd_npz(tmp / "absurd.npz")
    x = (np.load(TEST)["input"][:8])
    np.savez(tmp / "labels99.npz", input=x, labels=np.full(8, 99))
    np.savez(tmp / "labelsf.npz", input=x, labels=np.full(8, 0.5))
    ext = onnx.load(str(MODEL))
    onnx.save(ext, str(tmp / "ext.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    ext = onnx.load(str(tmp / "ext.onnx"), load_external_data=False)
    for init in ext.graph.initializer:  # point the data outside the folder, as a hostile file would
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "../outside.bin"
    (tmp / "ext.onnx").write_bytes(ext.SerializeToString())
    (tmp / "w.bin").unlink()
    return SimpleNamespace(tmp=tmp, s=work.stats, link=work.link, hard=work.hard, out=tmp / "o.onnx", folder=tmp,
                           protected=[MODEL, CALIB, TEST, work.stats, work.hard])


# (label, argv of the prepared files, exit code, words in the message)
HOSTILE_CASES = [
    # aliasing: an output that is any input, by name or by inode
    ("harden output = stats", lambda f: [MODEL, "--stats", f.s, "-o", f.s], 6, "is the input"),
    ("harden output = stats via hard link", lambda f: [MODEL, "--stats", f.s, "-o", f.link], 6, "is the input"),
    ("save-stats = eval data", lambda f: [MODEL, "--data", CALIB, "--save-stats", TEST, "--eval", TEST, "-o", f.out],
     6, "is the input"),
    ("model output = save-stats", lambda f: [MODEL, "--data", CALIB, "--save-stats", f.out, "-o", f.out], 6,
     "same file"),
    ("merge output = a shard", lambda f: ["stats", "merge", f.s, f.link, "-o", f.s], 6, "is the input"),
    ("merge a shard with itself", lambda f: ["stats", "merge", f.s, f.s, "-o", f.tmp / "m.npz"], 4, "identical"),
    ("eval json = model", lambda f: ["eval", MODEL, "--data", TEST, "--json", MODEL], 6, "is the input"),
    # special files
    ("output is a device", lambda f: [MODEL, "--stats", f.s, "-o", "/dev/null"], 6, "not a regular file"),
    ("predictions to a device", lambda f: ["run", MODEL, "--data", TEST, "-o", "/dev/full"], 6, "not a regular file"),
    # unbounded values, refused before work (an absurd --threads: test_absurd_threads_... below)
    ("absurd batch", lambda f: ["calibrate", MODEL, "--data", CALIB, "--batch-size", "1000000000", "-o",
                                f.tmp / "x.npz"], 2, "--batch-size"),
    ("eps out of the box", lambda f: ["eval", MODEL, "--data", TEST, "--eps", "1e9"], 2, "--eps"),
    ("zero images", lambda f: ["eval", MODEL, "--data", TEST, "-n", "0"], 2, "-n/--images"),
    ("absurd queries", lambda f: ["eval", MODEL, "--data", TEST, "--square-queries", "10000000000"], 2,
     "--square-queries"),
    ("negative budget", lambda f: ["sweep", MODEL, "--stats", f.s, "--data", TEST, "--max-clean-drop", "-1"], 2,
     "--max-clean-drop"),
    # crashes inside libraries, caught at their source
    ("symlink loop", lambda f: ["sites", f.tmp / "loop.onnx"], 3, "cannot be read"),
    ("invalid regex", lambda f: ["sites", MODEL, "--include", "("], 2, "--include"),
    ("absurd array header", lambda f: ["calibrate", MODEL, "--data", f.tmp / "absurd.npz", "-o", f.tmp / "x.npz"], 5,
     "announces"),
    ("labels beyond the classes", lambda f: ["eval", MODEL, "--data", f.tmp / "labels99.npz", "-n", "8"], 5,
     "classes"),
    ("labels not integers", lambda f: ["eval", MODEL, "--data", f.tmp / "labelsf.npz", "-n", "8"], 5, "integers"),
    ("accuracy on foreign labels", lambda f: [MODEL, "--stats", f.s, "-o", f.out, "--eval", f.tmp / "labels99.npz"], 5,
     "labels"),
    ("external data outside the folder", lambda f: ["sites", f.tmp / "ext.onnx"], 3, "outside the model's folder"),
    ("hardened model hardened again", lambda f: [f.hard, "--stats", f.s, "--ignore-fingerprint", "-o", f.out], 2,
     "already"),
    # leftovers: a failure after calibration leaves neither file
    ("one-step failing late", lambda f: [MODEL, "--data", CALIB, "--alpha", "nosuch=0.1", "-o", f.out], 2,
     "matches no site"),
]


@bad_input_cases(HOSTILE_CASES)
def test_hostile_input(label, argv, code, words, hostile):
    check_bad_input(label, argv(hostile), code, words, hostile.folder, hostile.protected)


def test_absurd_threads_pass_where_no_session_opens(hostile):
    """`sites` opens no session: the bound applies where threads are used (next test)."""
    r = run_cli("--threads", "100000", "sites", MODEL)
    assert r.code == 0, r.err


def test_thread_bound_is_checked_before_work(work, tmp_path):
    r = run_cli("--threads", "100000", "calibrate", MODEL, "--data", CALIB, "-o", tmp_path / "s.npz")
    assert r.code == 2 and "--threads" in r.err and len(r.err.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_second_model_with_other_inputs_is_refused_before_attacks(work, tmp_path):
    import torch

    path = tmp_path / "other.onnx"
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), str(path), dynamo=False, input_names=["input"])
    r = run_cli("eval", MODEL, path, "--data", TEST, "-n", "8")
    assert r.code == 5 and "takes inputs" in r.err and "apgd" not in r.err


def test_default_attacks_import_from_declared_extras():
    """Every default attack's module is importable from what the `eval` extra declares (nothing installed here)."""
    import importlib
    import tomllib
    from pathlib import Path

    from mstransform.robustness.attacks import DEFAULT_ATTACKS

    extra = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["eval"]
    declared = {e.split("=")[0].split(">")[0].strip().replace("-", "_").lower() for e in extra}
    modules = {"apgd-ce": "pyautoattack.autopgd_base", "apgd-dlr": "pyautoattack.autopgd_base",
               "square": "pyautoattack.square", "bpda": "pyautoattack.autopgd_base"}
    for attack in DEFAULT_ATTACKS:
        module = modules[attack]
        assert module.split(".")[0] in declared, f"{attack}: {module} is not in the eval extra {sorted(declared)}"
        importlib.import_module(module)
