"""The command line on the shipped example, as a new user runs it, and on bad input."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import EXAMPLE, bad_input_cases, check_bad_input


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
    r = cli(MODEL, "--data", CALIB, "--limit", "256", "--alpha", "0.2", "-o", out, "--eval", TEST)
    assert r.code == 0, r.err
    assert (tmp_path / "hard.stats.npz").is_file()
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
    from conftest import assert_onnx_matches_reference, exported, random_inputs

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


def _write(path, arrays):
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def bad(work, tmp_path_factory):
    """The bad files of the table below, written once; ``folder`` must gain no file from any case."""
    tmp = tmp_path_factory.mktemp("cli-bad")
    good = work / "stats.npz"
    arr = _stats_arrays(good)
    other = dict(arr, fingerprint=np.array("0123456789abcdef"))
    missing = {k: v for k, v in arr.items() if not k.endswith("/6")}
    missing.update(site_names=arr["site_names"][:6], site_feeds=arr["site_feeds"][:6], site_kinds=arr["site_kinds"][:6],
                   site_axes=arr["site_axes"][:6], site_ranks=arr["site_ranks"][:6], site_dtypes=arr["site_dtypes"][:6],
                   site_counts=arr["site_counts"][:6])
    channels = dict(arr, **{"mean/0": arr["mean/0"][:3], "var/0": arr["var/0"][:3]})
    nan = dict(arr, **{"var/2": np.full_like(arr["var/2"], np.nan)})
    neg = dict(arr, **{"var/1": -arr["var/1"]})
    for name, arrays in (("other", other), ("missing", missing), ("ch", channels), ("nanstats", nan), ("neg", neg)):
        _write(tmp / f"{name}.npz", arrays)
    (tmp / "notonnx.onnx").write_text("this is not a model\n")
    (tmp / "garbage.npz").write_bytes(b"PK\x03\x04garbage")
    np.savez(tmp / "flat.npz", input=np.zeros((4, 28, 28), np.uint8))
    np.savez(tmp / "nan.npz", input=np.full((4, 1, 28, 28), np.nan, np.float32))
    np.savez(tmp / "empty.npz", input=np.zeros((0, 1, 28, 28), np.uint8))
    np.savez(tmp / "pickled.npz", a=np.array([{"x": 1}], dtype=object))
    return SimpleNamespace(tmp=tmp, good=good, m=work / "model.onnx", out=tmp / "out.onnx", stats_out=tmp / "s.npz",
                           folder=tmp, protected=[work / "model.onnx", good])


# (label, argv of the prepared files, expected exit code, words the message must contain)
BAD_CASES = [
    ("not an ONNX file", lambda f: [f.tmp / "notonnx.onnx", "--stats", f.good, "-o", f.out], 3, "not an ONNX model"),
    ("model missing", lambda f: [f.tmp / "nope.onnx", "--stats", f.good, "-o", f.out], 3, "does not exist"),
    ("stats of another model", lambda f: [f.m, "--stats", f.tmp / "other.npz", "-o", f.out], 4, "another model"),
    ("missing site", lambda f: [f.m, "--stats", f.tmp / "missing.npz", "-o", f.out], 4, "no statistics"),
    ("channel-count mismatch", lambda f: [f.m, "--stats", f.tmp / "ch.npz", "-o", f.out], 4, "channels"),
    ("NaN in stats", lambda f: [f.m, "--stats", f.tmp / "nanstats.npz", "-o", f.out], 4, "NaN"),
    ("negative variance", lambda f: [f.m, "--stats", f.tmp / "neg.npz", "-o", f.out], 4, "negative variance"),
    ("pickled stats", lambda f: [f.m, "--stats", f.tmp / "pickled.npz", "-o", f.out], 4, "object arrays"),
    ("stats file missing", lambda f: [f.m, "--stats", f.tmp / "none.npz", "-o", f.out], 4, "does not exist"),
    ("negative alpha", lambda f: [f.m, "--stats", f.good, "--alpha", "-0.1", "-o", f.out], 2, ">= 0"),
    ("NaN alpha", lambda f: [f.m, "--stats", f.good, "--alpha", "nan", "-o", f.out], 2, "finite"),
    ("absurd alpha", lambda f: [f.m, "--stats", f.good, "--alpha", "1e9", "-o", f.out], 2, "below 100"),
    ("alpha for unknown site", lambda f: [f.m, "--stats", f.good, "--alpha", "nosuch=0.1", "-o", f.out], 2,
     "matches no site"),
    ("output equals input", lambda f: [f.m, "--stats", f.good, "-o", f.m], 6, "is the input"),
    ("output folder missing", lambda f: [f.m, "--stats", f.good, "-o", f.tmp / "no" / "dir" / "x.onnx"], 6,
     "does not exist"),
    ("unreadable data", lambda f: ["calibrate", f.m, "--data", f.tmp / "garbage.npz", "-o", f.stats_out], 5,
     "cannot read"),
    ("wrong input shape", lambda f: ["calibrate", f.m, "--data", f.tmp / "flat.npz", "-o", f.stats_out], 5,
     "expects shape"),
    ("NaN in data", lambda f: ["calibrate", f.m, "--data", f.tmp / "nan.npz", "-o", f.stats_out], 5, "NaN"),
    ("empty data", lambda f: ["calibrate", f.m, "--data", f.tmp / "empty.npz", "-o", f.stats_out], 5, "no samples"),
    ("neither stats nor data", lambda f: [f.m, "-o", f.out], 2, "--stats"),
    ("unknown option", lambda f: [f.m, "--stats", f.good, "--frobnicate"], 2, "unrecognized"),
]


@bad_input_cases(BAD_CASES)
def test_bad_input_one_line_no_output(label, argv, code, words, bad):
    check_bad_input(label, argv(bad), code, words, bad.folder, bad.protected)


def test_missing_external_data(cli, tmp_path):
    import onnx

    m = onnx.load(str(MODEL))
    onnx.save(m, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    (tmp_path / "ext.onnx.data").unlink()
    r = cli("sites", tmp_path / "ext.onnx")
    assert r.code == 3 and "external data" in r.err
