"""Hostile inputs by class (aliasing, special files, unbounded values, library crashes, leftovers,
silent wrong results): each must give one line, its exit code, no new file, inputs intact."""
from __future__ import annotations

import os
import zipfile

import numpy as np
import onnx
import pytest
from conftest import EXAMPLE, check_bad_inputs, run_cli

import mstransform as mst

MODEL, CALIB, TEST = EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", EXAMPLE / "test.npz"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    stats = mst.calibrate(MODEL, CALIB, limit=256, progress=False)
    stats.save(d / "stats.npz")
    mst.harden(MODEL, stats, alpha=0.2, output=d / "hard.onnx")
    os.link(d / "stats.npz", d / "stats-link.npz")  # a hard link: another name, the same inode
    return d


def _absurd_npz(path):
    """A valid zip whose array header announces 10^12 samples but holds 16 bytes."""
    header = {"descr": "|u1", "fortran_order": False, "shape": (10**12, 1, 28, 28)}
    with zipfile.ZipFile(path, "w") as z, z.open("input.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 16)


def _cases(w, tmp):
    s, hard, out = w / "stats.npz", w / "hard.onnx", tmp / "o.onnx"
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
    return [
        # aliasing: an output that is any input, by name or by inode
        ("harden output = stats", [MODEL, "--stats", s, "-o", s], 6, "is the input"),
        ("harden output = stats via hard link", [MODEL, "--stats", s, "-o", w / "stats-link.npz"], 6, "is the input"),
        ("save-stats = eval data", [MODEL, "--data", CALIB, "--save-stats", TEST, "--eval", TEST, "-o", out], 6,
         "is the input"),
        ("model output = save-stats", [MODEL, "--data", CALIB, "--save-stats", out, "-o", out], 6, "same file"),
        ("merge output = a shard", ["stats", "merge", s, w / "stats-link.npz", "-o", s], 6, "is the input"),
        ("merge a shard with itself", ["stats", "merge", s, s, "-o", tmp / "m.npz"], 4, "identical"),
        ("eval json = model", ["eval", MODEL, "--data", TEST, "--json", MODEL], 6, "is the input"),
        # special files
        ("output is a device", [MODEL, "--stats", s, "-o", "/dev/null"], 6, "not a regular file"),
        ("predictions to a device", ["run", MODEL, "--data", TEST, "-o", "/dev/full"], 6, "not a regular file"),
        # unbounded values, refused before work
        ("absurd threads", ["--threads", "100000", "sites", MODEL], 0, ""),
        ("absurd batch", ["calibrate", MODEL, "--data", CALIB, "--batch-size", "1000000000", "-o", tmp / "x.npz"], 2,
         "--batch-size"),
        ("eps out of the box", ["eval", MODEL, "--data", TEST, "--eps", "1e9"], 2, "--eps"),
        ("zero images", ["eval", MODEL, "--data", TEST, "-n", "0"], 2, "-n/--images"),
        ("absurd queries", ["eval", MODEL, "--data", TEST, "--square-queries", "10000000000"], 2, "--square-queries"),
        ("negative budget", ["sweep", MODEL, "--stats", s, "--data", TEST, "--max-clean-drop", "-1"], 2,
         "--max-clean-drop"),
        # crashes inside libraries, caught at their source
        ("symlink loop", ["sites", tmp / "loop.onnx"], 3, "cannot be read"),
        ("invalid regex", ["sites", MODEL, "--include", "("], 2, "--include"),
        ("absurd array header", ["calibrate", MODEL, "--data", tmp / "absurd.npz", "-o", tmp / "x.npz"], 5, "announces"),
        ("labels beyond the classes", ["eval", MODEL, "--data", tmp / "labels99.npz", "-n", "8"], 5, "classes"),
        ("labels not integers", ["eval", MODEL, "--data", tmp / "labelsf.npz", "-n", "8"], 5, "integers"),
        ("accuracy on foreign labels", [MODEL, "--stats", s, "-o", out, "--eval", tmp / "labels99.npz"], 5, "labels"),
        ("external data outside the folder", ["sites", tmp / "ext.onnx"], 3, "outside the model's folder"),
        ("hardened model hardened again", [hard, "--stats", s, "--ignore-fingerprint", "-o", out], 2, "already"),
        # leftovers: a failure after calibration leaves neither file
        ("one-step failing late", [MODEL, "--data", CALIB, "--alpha", "nosuch=0.1", "-o", out], 2, "matches no site"),
    ]


def test_hostile_inputs(work, tmp_path):
    cases = _cases(work, tmp_path)
    threads = [c for c in cases if c[0] == "absurd threads"][0]
    r = run_cli(*threads[1])  # `sites` opens no session: the bound applies where threads are used
    assert r.code == 0
    check_bad_inputs([c for c in cases if c[0] != "absurd threads"], tmp_path,
                     [MODEL, CALIB, TEST, work / "stats.npz", work / "hard.onnx"])


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
