"""The command line on the shipped example, as a new user runs it (bad input: tests/test_hostile_*.py)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import EXAMPLE


MODEL = EXAMPLE / "model.onnx"
CALIB = EXAMPLE / "calib.npz"
TEST = EXAMPLE / "test.npz"


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def work(tmp_path_factory, example_hardened):
    """A folder of the user's own with a copy of the example model and its stats (the session's)."""
    d = tmp_path_factory.mktemp("cli")
    shutil.copy(MODEL, d / "model.onnx")
    shutil.copyfile(example_hardened.stats, d / "stats.npz")
    return d


def test_the_users_exact_command(work):
    """`mstransform model.onnx --stats stats.npz --alpha 0.2`, run as a program, in the model's folder."""
    exe = shutil.which("mstransform") or str(Path(sys.executable).parent / "mstransform")
    before = sha(work / "model.onnx")
    out = work / "model.meansparse.onnx"
    out.unlink(missing_ok=True)
    r = subprocess.run([exe, "model.onnx", "--stats", "stats.npz", "--alpha", "0.2"], cwd=work,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "inserted 7 sparsify operator(s)" in r.stdout
    assert "max |diff| = 0" in r.stdout
    assert out.is_file() and sha(work / "model.onnx") == before
    assert not [p for p in os.listdir(work) if p.startswith(".")], "temporary files left behind"


def test_one_step_form_with_accuracy(cli, tmp_path):
    out = tmp_path / "hard.onnx"
    r = cli(MODEL, "--data", CALIB, "--limit", "256", "--alpha", "0.2", "-o", out, "--eval", TEST,
            "--json", tmp_path / "hard.json")
    assert r.code == 0, r.err
    assert (tmp_path / "hard.stats.npz").is_file()
    # the command prints the one-step result's format() and writes its to_dict(), with both accuracies
    lines = r.out.splitlines()
    assert lines[0].startswith("calibrated 7 site(s) on 256 sample(s) in ") and lines[0].endswith(
        f"; wrote {tmp_path / 'hard.stats.npz'}")
    assert lines[1:3] == ["inserted 7 sparsify operator(s)", f"wrote {out}"]
    document = json.loads((tmp_path / "hard.json").read_text())
    assert document["stats_file"] == str(tmp_path / "hard.stats.npz") and document["output"] == str(out)
    assert set(document["clean_accuracy"]) == {"base", "hardened"}
    assert set(document["clean_accuracy"]["base"]) == {"correct", "total", "percent"}
    base = float(r.out.split("clean accuracy base")[1].split("%")[0])
    hard = float(r.out.split("clean accuracy hardened")[1].split("%")[0])
    assert base > 85 and abs(base - hard) < 5


def test_calibrate_inspect_merge_and_per_site_alpha(cli, tmp_path):
    a, b, m = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "m.npz"
    assert cli("calibrate", MODEL, "--data", CALIB, "--limit", "300", "--shard", "0/2", "-o", a).code == 0
    assert cli("calibrate", MODEL, "--data", CALIB, "--limit", "300", "--shard", "1/2", "-o", b).code == 0
    r = cli("stats", "merge", a, b, "-o", m)
    assert r.code == 0 and "300 sample(s)" in r.out
    r = cli("stats", "inspect", m)
    assert r.code == 0 and "/block2/Relu_1" in r.out
    out = tmp_path / "h.onnx"
    r = cli(MODEL, "--stats", m, "--alpha", "0.2", "--alpha", "/block2/.*=0", "-o", out)
    assert r.code == 0, r.err
    assert "inserted 5" in r.out and "2 site(s) left as identity" in r.out


def test_forged_mode(cli, tmp_path):
    r = cli(MODEL, "--data", CALIB, "--limit", "128", "--mode", "forged", "--alpha", "0.0078125",
            "-o", tmp_path / "f.onnx")
    assert r.code == 0, r.err
    # linear-inputs: 5 convs after the stem (which reads the raw image) and the 2 Gemms
    assert "inserted 7 sparsify" in r.out


@pytest.mark.parametrize("center", ["zero", "global"])
def test_centers_match_the_papers_ablation(cli, center, export_dir, tmp_path):
    """--center zero/global: ONNX Runtime on the result vs the torch model with the paper's operator,
    its constants read straight from the stats file (0, or the mean over all channels; alpha * sigma_c)."""
    import onnxruntime as ort
    from helpers import assert_onnx_matches_reference, exported, random_inputs

    path, alpha = exported("resnet", "legacy-17-folded", export_dir), 0.5
    np.save(tmp_path / "calib.npy", random_inputs("resnet", 48, seed=2))
    assert cli("calibrate", path, "--data", tmp_path / "calib.npy", "-o", tmp_path / "s.npz").code == 0
    r = cli(path, "--stats", tmp_path / "s.npz", "--alpha", alpha, "--center", center, "-o", tmp_path / "h.onnx")
    assert r.code == 0, r.err
    raw = _stats_arrays(tmp_path / "s.npz")
    params = []
    for i, axis in enumerate(raw["site_axes"]):
        mean, var = raw[f"mean/{i}"], raw[f"var/{i}"]
        c = np.zeros_like(mean) if center == "zero" else np.full_like(mean, mean.mean())
        params.append((c, alpha * np.sqrt(var), int(axis)))
    x = random_inputs("resnet", 4, seed=5)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]  # noqa: E731
    assert np.max(np.abs(run(tmp_path / "h.onnx") - run(path))) > 1e-3  # the operator moved the output
    assert_onnx_matches_reference(tmp_path / "h.onnx", "resnet", params, x)


def _stats_arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_debug_shows_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mstransform.tools.entry", "--debug", "sites", str(tmp_path / "x.onnx")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Traceback" in r.stderr


def _parsers(parser, prefix=""):
    """Every command's parser (and its sub-commands'), by the words that name it."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub
                yield from _parsers(sub, f"{prefix}{name} ")


def test_every_path_flag_has_its_role():
    """A flag that names a file -- a positional, a FILE/NPZ/PNG/PATH/DATA value, a help that says file, JSON,
    CSV or PNG -- has its role in the one table the command line checks every path by before a command runs."""
    import re

    from mstransform.tools.arguments import ROLES
    from mstransform.tools.cli_parser import build_parser

    missing = []
    for name, parser in _parsers(build_parser()):
        for a in parser._actions:
            if a.dest == "help" or a.nargs == 0 or a.choices or a.type in (int, float):
                continue
            named = not a.option_strings or a.metavar in ("FILE", "NPZ", "PNG", "PATH", "DATA") or \
                re.search(r"\bfile\b|\b(JSON|CSV|PNG)\b", a.help or "")
            if named and a.dest not in ROLES:
                missing.append(f"{name} {a.dest}")
    assert not missing, f"path flags without a role in tools.arguments.ROLES: {missing}"


def test_commands_own_path_arguments_are_checked_before_they_run(tmp_path):
    """bench's two models and eval merge's reports go through the common check, like every other path: a FIFO
    is refused unopened (the command would block on it), an output that is an input is refused."""
    fifo = tmp_path / "f.onnx"
    os.mkfifo(fifo)
    report = tmp_path / "r.json"
    report.write_text("{}")
    cases = [(["bench", fifo, MODEL], 3, "not a regular file"), (["bench", MODEL, fifo], 3, "not a regular file"),
             (["bench", MODEL, MODEL, "--json", MODEL], 6, "is the input"),
             (["eval", "merge", fifo, "-o", tmp_path / "m.json"], 5, "not a regular file"),
             (["eval", "merge", report, "-o", report], 6, "is the input")]
    for argv, code, words in cases:
        r = subprocess.run([sys.executable, "-m", "mstransform", *map(str, argv)], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == code and words in r.stderr and r.stderr.count("\n") == 1, (argv, r.stderr)
    assert report.read_text() == "{}" and not (tmp_path / "m.json").exists()


def test_axis_flags_share_one_parser(cli, tmp_path):
    """--axis SITE=AXIS and --batch-axis NAME=AXIS are read by one parser: a name given two axes is refused
    under the flag that gave them; only an input's batch axis may be none."""
    r = cli("sites", MODEL, "--axis", "/Relu=1", "--axis", "/Relu=2")
    assert r.code == 2 and r.err.startswith("mstransform: error: --axis '/Relu=2' conflicts with /Relu=1"), r.err
    r = cli("sites", MODEL, "--axis", "/Relu=none")
    assert r.code == 2 and "mstransform: error: --axis '/Relu=none': expected SITE=AXIS with an integer axis" in r.err, r.err
    r = cli("sites", MODEL, "--axis", "/Relu")
    assert r.code == 2 and r.err.startswith("mstransform: error: --axis '/Relu': expected SITE=AXIS\n"), r.err
    r = cli("calibrate", MODEL, "--data", CALIB, "-o", tmp_path / "s.npz", "--batch-axis", "input")
    assert r.code == 2 and "--batch-axis 'input': expected NAME=AXIS or NAME=none" in r.err, r.err
    assert not (tmp_path / "s.npz").exists()


def test_calibrate_under_torchrun_takes_no_shard(cli, tmp_path, monkeypatch):
    """Under torchrun each rank calibrates its own batches: a --shard as well is refused before any work."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = cli("calibrate", MODEL, "--data", CALIB, "--shard", "0/2", "-o", tmp_path / "s.npz")
    assert r.code == 2 and r.err.startswith("mstransform: error: --shard under torchrun"), r.err
    assert not (tmp_path / "s.npz").exists()


def test_commands_print_the_results_format(cli, example_hardened):
    """check-trt prints the check's format() (each finding, then the verdict); the in-memory hardening and
    its written report say the same first line, and give to_dict() for machines."""
    import mstransform as mst

    r = cli("check-trt", example_hardened.hardened, "--fp16")
    assert r.code == 0, r.err
    check = mst.check_trt(example_hardened.hardened, fp16=True)
    assert r.out == check.format() + "\n" and check.format().splitlines()[-1].startswith("ok: compatible with")
    done = mst.harden_model(MODEL, example_hardened.stats, alpha=0.2)
    assert done.format() == "inserted 7 sparsify operator(s)"
    assert json.loads(json.dumps(done.to_dict()))["sites"] == done.sites and len(done.to_dict()["alphas"]) == 7
