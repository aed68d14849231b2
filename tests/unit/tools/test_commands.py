"""The commands (``tools.commands``): ``--json FILE`` on sites, calibrate, harden, run and check-trt, each
checked against what the files say on their own."""
from __future__ import annotations

import numpy as np
from helpers import EXAMPLE, run_cli

MODEL, CALIB = EXAMPLE / "model.onnx", EXAMPLE / "calib.npz"


def test_json_results_of_sites_calibrate_harden_run_and_check_trt(tmp_path):
    """``--json FILE`` on the five commands that had none, each checked against what the files say on their own."""
    import json

    import onnx
    import onnxruntime as ort

    j = {name: tmp_path / f"{name}.json" for name in ("sites", "calibrate", "harden", "run", "trt")}
    stats, hard = tmp_path / "s.npz", tmp_path / "h.onnx"
    for argv in (["sites", MODEL], ["calibrate", MODEL, "--data", CALIB, "--limit", 128, "-o", stats],
                 [MODEL, "--stats", stats, "-o", hard], ["run", MODEL, "--data", EXAMPLE / "test.npz", "--limit", 32],
                 ["check-trt", hard]):
        key = {"sites": "sites", "calibrate": "calibrate", "run": "run", "check-trt": "trt"}.get(str(argv[0]), "harden")
        r = run_cli(*argv, "--json", j[key])
        assert r.code == 0, r.err
    doc = {k: json.loads(p.read_text()) for k, p in j.items()}
    assert doc["sites"]["command"] == "sites" and len(doc["sites"]["sites"]) == 7
    with np.load(stats) as z:  # the stats file read as plain arrays
        assert doc["calibrate"]["samples"] == int(z["samples"]) == 128
    assert set(doc["calibrate"]["sites"]) == {s["name"] for s in doc["sites"]["sites"]}
    wheres = sum(n.op_type == "Where" for n in onnx.load(str(hard)).graph.node)
    assert len(doc["harden"]["sites"]) == wheres == 7 and doc["harden"]["max_abs_diff"] == 0
    with np.load(EXAMPLE / "test.npz") as z:
        x, labels = z["input"][:32].astype(np.float32) / 255, z["labels"][:32]
    logits = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    out = doc["run"]["outputs"]
    assert list(out) == ["logits"] and out["logits"]["shape"] == list(logits.shape)
    assert doc["run"]["accuracy"]["correct"] == int((logits.argmax(1) == labels).sum())
    assert doc["trt"]["ok"] is True and doc["trt"]["command"] == "check-trt"


def test_calibrate_writes_its_stats_where_rank_is_set_without_a_launcher(tmp_path, monkeypatch):
    """``RANK`` alone (no ``WORLD_SIZE``: no torchrun) is one process: it calibrates every batch and writes -o."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    r = run_cli("calibrate", EXAMPLE / "model.onnx", "--data", EXAMPLE / "calib.npz", "-o", tmp_path / "s.npz",
                "--limit", "64")
    assert r.code == 0 and (tmp_path / "s.npz").is_file() and "wrote" in r.out, r.err
