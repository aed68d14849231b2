"""Evaluation at dataset scale: shards merged equal one process image by image, an interrupted run
resumes to the report an uninterrupted one gives, and torchrun ranks give the same merged report."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest
from helpers import EXAMPLE

from mstransform.robustness import attacks

MODEL = EXAMPLE / "model.onnx"
N, BATCH = 24, 8  # three chunks
ARGS = ["--data", EXAMPLE / "test.npz", "-n", N, "--batch-size", BATCH, "--eps", "0.02", "--apgd-iters", "2",
        "--square-queries", "5", "--attacks", "apgd-ce,square,bpda"]


def _verdicts(path):
    """Per model: the per-image verdicts and accuracies, and n (seconds and twin timing excluded)."""
    doc = json.loads(path.read_text())
    return [(r["label"], r["n"], r["verdicts"], r["accuracy"]) for r in doc["results"]]


def _clean_reference(n):
    """Clean verdicts straight from ONNX Runtime: 1 where the argmax is the label."""
    test = np.load(EXAMPLE / "test.npz")
    x, y = (test["input"][:n] / 255).astype(np.float32), test["labels"][:n]
    logits = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    return "".join("1" if c else "0" for c in logits.argmax(1) == y)


@pytest.fixture(scope="module")
def single(tmp_path_factory, example_hardened):
    """The reference: one uninterrupted process over every image, base and hardened model."""
    from helpers import run_cli

    out = tmp_path_factory.mktemp("single") / "one.json"
    r = run_cli("eval", MODEL, example_hardened.hardened, *ARGS, "--json", out)
    assert r.code == 0, r.err
    assert not out.with_name("one.json.parts").exists()  # the kept chunks go once the report is written
    return out


def test_single_run_verdicts_are_per_image(single):
    (label, n, verdicts, acc), (_, _, hard, _) = _verdicts(single)
    assert n == N and all(len(v) == N and set(v) <= {"0", "1"} for v in [*verdicts.values(), *hard.values()])
    assert verdicts["clean"] == _clean_reference(N)
    assert acc["clean"] == pytest.approx(100 * verdicts["clean"].count("1") / N)
    for k, v in verdicts.items():  # an attack never turns a wrong image right; worst-case is the AND
        assert all(c <= cl for c, cl in zip(v, verdicts["clean"]))
    worst = "".join(min(cs) for cs in zip(*(verdicts[k] for k in ("clean", "apgd-ce", "square", "bpda"))))
    assert verdicts["worst-case"] == worst


def test_two_shards_merged_equal_one_process(cli, single, example_hardened, tmp_path):
    for i in (0, 1):
        r = cli("eval", MODEL, example_hardened.hardened, *ARGS, "--shard", f"{i}/2", "--json", tmp_path / f"s{i}.json")
        assert r.code == 0, r.err
        assert f"shard {i}/2" in r.out
    # chunks of BATCH images alternate between the shards: 0 and 2 in shard 0, 1 in shard 1
    s0 = _verdicts(tmp_path / "s0.json")[0][2]["clean"]
    assert s0[8:16] == "." * 8 and "." not in s0[:8] + s0[16:]
    r = cli("eval", "merge", tmp_path / "s1.json", tmp_path / "s0.json", "-o", tmp_path / "m.json")
    assert r.code == 0, r.err
    assert _verdicts(tmp_path / "m.json") == _verdicts(single)


def test_merge_refuses_missing_or_foreign_shards(cli, example_hardened, tmp_path):
    r = cli("eval", MODEL, *ARGS, "--shard", "0/2", "--json", tmp_path / "s0.json")
    assert r.code == 0, r.err
    r = cli("eval", "merge", tmp_path / "s0.json", "-o", tmp_path / "m.json")
    assert r.code == 2 and "unevaluated" in r.err and not (tmp_path / "m.json").exists()
    args = [str(a) for a in ARGS]
    args[args.index("0.02")] = "0.03"
    r = cli("eval", MODEL, *args, "--shard", "1/2", "--json", tmp_path / "s1.json")
    assert r.code == 0, r.err
    r = cli("eval", "merge", tmp_path / "s0.json", tmp_path / "s1.json", "-o", tmp_path / "m.json")
    assert r.code == 2 and "another evaluation" in r.err and not (tmp_path / "m.json").exists()
    r = cli("eval", MODEL, *ARGS, "--shard", "0/2")
    assert r.code == 2 and "--shard needs --json" in r.err


def test_interrupted_run_resumes_to_the_uninterrupted_report(cli, single, example_hardened, tmp_path, monkeypatch):
    real, calls = attacks._attack_chunk, []

    def interrupted_after_two(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    out = tmp_path / "r.json"
    monkeypatch.setattr(attacks, "_attack_chunk", interrupted_after_two)
    r = cli("eval", MODEL, example_hardened.hardened, *ARGS, "--json", out)
    assert r.code == 130 and not out.exists()  # nothing partial is presented as a report
    kept = sorted(p.name for p in (tmp_path / "r.json.parts").iterdir())
    assert kept == ["manifest.json", "model0-000000000.json", "model0-000000008.json"]

    calls.clear()
    monkeypatch.setattr(attacks, "_attack_chunk", lambda *a, **k: calls.append(1) or real(*a, **k))
    r = cli("eval", MODEL, example_hardened.hardened, *ARGS, "--json", out)
    assert r.code == 0, r.err
    assert len(calls) == 6 - 2  # two models of three chunks, two of them kept
    assert _verdicts(out) == _verdicts(single)
    assert not (tmp_path / "r.json.parts").exists()


def test_fresh_starts_over_and_other_settings_are_refused(cli, tmp_path, monkeypatch):
    real, calls = attacks._attack_chunk, []

    def failing_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("planted failure")
        return real(*a, **k)

    out = tmp_path / "r.json"
    monkeypatch.setattr(attacks, "_attack_chunk", failing_second)
    assert cli("eval", MODEL, *ARGS, "--json", out).code != 0 and not out.exists()
    args = [str(a) for a in ARGS]
    args[args.index("0.02")] = "0.03"
    r = cli("eval", MODEL, *args, "--json", out)
    assert r.code == 2 and "--fresh" in r.err and not out.exists()
    calls.clear()
    monkeypatch.setattr(attacks, "_attack_chunk", lambda *a, **k: calls.append(1) or real(*a, **k))
    r = cli("eval", MODEL, *ARGS, "--json", out, "--fresh")
    assert r.code == 0, r.err
    assert len(calls) == 3  # every chunk again


def test_sigterm_mid_run_then_resume(single, example_hardened, tmp_path):
    """A real process killed by SIGTERM once its first chunk is kept exits 130 with no report; the same
    command then ends with the uninterrupted run's report."""
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "mstransform", "eval", MODEL, example_hardened.hardened, *ARGS, "--json", out]
    cmd = [str(c) for c in cmd]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    parts = tmp_path / "r.json.parts"
    kept = False
    while proc.poll() is None and not kept:
        kept = parts.is_dir() and any(p.name.startswith("model") for p in parts.iterdir())
        time.sleep(0.05)
    proc.terminate()
    _, err = proc.communicate(timeout=300)
    assert kept, f"the run ended without keeping a chunk in {parts}: {err[-2000:]}"
    if proc.returncode == 0:
        pytest.skip("the run ended between its first kept chunk and the signal")
    assert proc.returncode == 130, err
    assert not out.exists()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _verdicts(out) == _verdicts(single)


def test_torchrun_two_ranks_give_the_single_report(single, example_hardened, tmp_path):
    """Two gloo ranks under torchrun, each attacking every other chunk; rank 0 writes the merged report."""
    pytest.importorskip("torch.distributed.run")
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "OMP"))}
    out = tmp_path / "ranks.json"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port,
                        "-m", "mstransform", "eval", str(MODEL), str(example_hardened.hardened),
                        *[str(a) for a in ARGS], "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0 and "rendezvous" in r.stderr.lower() and not out.exists():
        pytest.skip(f"torchrun could not start here: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("worst-case") == 1  # rank 0 alone prints the table
    assert _verdicts(out) == _verdicts(single)
    assert not (tmp_path / "ranks.json.parts").exists()


SWEEP = ["--data", EXAMPLE / "val.npz", "--alphas", "0.2", "-n", 16, "--batch-size", 8, "--apgd-iters", "2",
         "--eps", "0.02"]


def test_sweep_shards_merged_equal_one_sweep(cli, example_hardened, tmp_path):
    stats = ["--stats", example_hardened.stats]
    r = cli("sweep", MODEL, *stats, *SWEEP, "--json", tmp_path / "one.json")
    assert r.code == 0, r.err
    for i in (0, 1):
        r = cli("sweep", MODEL, *stats, *SWEEP, "--shard", f"{i}/2", "--json", tmp_path / f"s{i}.json")
        assert r.code == 0, r.err
        assert "none yet" in r.out and "apply:" not in r.out  # a shard chooses no alpha
    r = cli("eval", "merge", tmp_path / "s0.json", tmp_path / "s1.json", "-o", tmp_path / "m.json")
    assert r.code == 0, r.err
    one, merged = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "m.json"))
    assert merged["rows"] == one["rows"] and merged["chosen_alpha"] == one["chosen_alpha"]
    assert [r["verdicts"] for r in merged["results"]] == [r["verdicts"] for r in one["results"]]
    # the clean column recomputed independently: ONNX Runtime on the base model's first 16 images
    val = np.load(EXAMPLE / "val.npz")
    x, y = (val["input"][:16] / 255).astype(np.float32), val["labels"][:16]
    logits = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert merged["rows"][0]["clean"] == pytest.approx(100 * np.mean(logits.argmax(1) == y))
