"""``mstransform sweep`` end to end (``tools.sweep``): the rows, the plot and the chosen alpha, with clean
accuracies recomputed here from ONNX Runtime."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from helpers import EXAMPLE

import mstransform as mst
from mstransform.robustness.alpha_rule import SweepRow, choose_alpha

MODEL = EXAMPLE / "model.onnx"


def test_sweep_end_to_end(cli, example_hardened, tmp_path):
    r = cli("sweep", MODEL, "--stats", example_hardened.stats, "--data", EXAMPLE / "val.npz", "--alphas", "0.2",
            "-n", "32", "--batch-size", "32", "--apgd-iters", "3", "--plot", tmp_path / "s.png", "--json",
            tmp_path / "s.json")
    assert r.code == 0, r.err
    assert "chosen:" in r.out and (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((tmp_path / "s.json").read_text())
    rows = report["rows"]
    assert [row["alpha"] for row in rows] == [0.0, 0.2]
    # clean accuracies recomputed here, independently: ONNX Runtime on the first 32 held-out images
    val = np.load(EXAMPLE / "val.npz")
    x, y = (val["input"][:32] / 255).astype(np.float32), val["labels"][:32]
    mst.harden(MODEL, mst.load_stats(example_hardened.stats), alpha=0.2, output=tmp_path / "a.onnx")
    for row, path in zip(rows, (MODEL, tmp_path / "a.onnx")):
        logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        assert row["clean"] == pytest.approx(100 * np.mean(logits.argmax(1) == y))
        assert row["standard"] <= row["clean"] and row["bpda"] <= row["clean"]
    assert report["chosen_alpha"] == choose_alpha([SweepRow(**r) for r in rows], report["max_clean_drop"])[0]
