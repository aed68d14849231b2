"""Robustness evaluation: the differentiable twin, BPDA gradients, alpha selection, eval and sweep end to end."""
from __future__ import annotations

import contextlib
import csv
import io
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import EXAMPLE

import mstransform as mst
from mstransform.errors import UsageError, VerificationError
from mstransform.runtime.robustness import SweepRow, choose_alpha
from mstransform.runtime.twin import OnnxTwin, check_twin

MODEL = EXAMPLE / "model.onnx"


@pytest.fixture(scope="module")
def hardened(tmp_path_factory):
    d = tmp_path_factory.mktemp("rob")
    stats = mst.calibrate(MODEL, EXAMPLE / "calib.npz", limit=512, progress=False)
    stats.save(d / "stats.npz")
    mst.harden(MODEL, stats, alpha=0.3, output=d / "hard.onnx")
    return d


def test_twin_matches_onnx_runtime(hardened):
    x = (np.load(EXAMPLE / "test.npz")["input"][:64] / 255).astype(np.float32)
    for path in (MODEL, hardened / "hard.onnx"):
        diff = check_twin(OnnxTwin(path), ort.InferenceSession(str(path)), x)
        assert diff <= 1e-5
    assert len(OnnxTwin(hardened / "hard.onnx").sparsify_inputs) == 7


def test_twin_mismatch_fails_loudly(hardened):
    twin = OnnxTwin(MODEL)
    with torch.no_grad():
        next(iter(twin.weights.values())).mul_(1.01)
    x = (np.load(EXAMPLE / "test.npz")["input"][:8] / 255).astype(np.float32)
    with pytest.raises(VerificationError, match="twin differs"):
        check_twin(twin, ort.InferenceSession(str(MODEL)), x)


def test_bpda_gradient_is_identity_where_plain_gradient_is_zero(tmp_path):
    path = tmp_path / "relu.onnx"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(torch.nn.ReLU(), (torch.zeros(1, 2, 3, 3),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    x = (np.random.default_rng(0).standard_normal((32, 2, 3, 3)) + 2).astype(np.float32)
    mst.harden(path, mst.calibrate(path, {"input": x}, progress=False), alpha=1.0, output=tmp_path / "h.onnx")
    twin = OnnxTwin(tmp_path / "h.onnx")
    xt = torch.from_numpy(x[:4]).requires_grad_(True)
    (plain,) = torch.autograd.grad(twin(xt).sum(), xt)
    twin.straight_through = True
    y_st = twin(xt)
    (bpda,) = torch.autograd.grad(y_st.sum(), xt)
    replaced = (plain == 0) & (xt.detach() > 0)  # zero gradient on a positive input: the operator replaced it
    assert replaced.any() and (~replaced).any()
    assert torch.all(bpda[replaced] == 1)  # the replaced values are the (positive) means: ReLU passes them
    assert torch.all(bpda[~replaced] == plain[~replaced])
    twin.straight_through = False
    assert torch.equal(y_st, twin(xt))  # forward values unchanged by the switch


def test_alpha_selection_rule():
    rows = [SweepRow(0.0, 90.0, 40.0, 40.0), SweepRow(0.1, 89.8, 44.0, 41.0), SweepRow(0.2, 89.6, 50.0, 42.5),
            SweepRow(0.3, 88.0, 60.0, 45.0)]
    alpha, reason = choose_alpha(rows, max_clean_drop=0.5)
    assert alpha == 0.2 and "+2.50" in reason  # 0.3 is over the clean budget; gain is judged on min(std, BPDA)
    assert choose_alpha(rows, max_clean_drop=5.0)[0] == 0.3
    masked = [SweepRow(0.0, 90.0, 40.0, 40.0), SweepRow(0.2, 89.9, 60.0, 38.0)]  # gain only under masking
    assert choose_alpha(masked)[0] == 0.0
    with pytest.raises(UsageError):
        choose_alpha([SweepRow(0.2, 1, 1, 1)])


def test_eval_end_to_end(cli, hardened, tmp_path):
    r = cli("eval", MODEL, hardened / "hard.onnx", "--data", EXAMPLE / "test.npz", "-n", "64", "--batch-size", "64",
            "--apgd-iters", "5", "--pgd-steps", "3", "--square-queries", "20", "--json", tmp_path / "r.json",
            "--csv", tmp_path / "r.csv")
    assert r.code == 0, r.err
    head = r.out.splitlines()[1].split()
    assert head[:4] == ["model", "n", "clean", "apgd-ce"] and "bpda" in head and "square" in head
    data = json.loads((tmp_path / "r.json").read_text())
    assert [x["sites"] for x in data["results"]] == [0, 7]
    for res in data["results"]:
        acc = res["accuracy"]
        assert acc["worst-case"] <= min(v for k, v in acc.items() if k != "worst-case")
        assert res["twin_max_abs_diff"] <= 1e-5
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert len(rows) == 2 and float(rows[0]["clean"]) > 80


def test_sweep_end_to_end(cli, hardened, tmp_path):
    r = cli("sweep", MODEL, "--stats", hardened / "stats.npz", "--data", EXAMPLE / "val.npz", "--alphas", "0.2",
            "-n", "32", "--batch-size", "32", "--apgd-iters", "3", "--plot", tmp_path / "s.png", "--json",
            tmp_path / "s.json")
    assert r.code == 0, r.err
    assert "chosen:" in r.out and (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    rows = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert [row["alpha"] for row in rows] == [0.0, 0.2]


def test_plot_histogram(cli, hardened, tmp_path):
    r = cli("plot", MODEL, "--stats", hardened / "stats.npz", "--data", EXAMPLE / "calib.npz", "--site",
            "/block1/Relu_1", "--channel", "2", "--limit", "64", "-o", tmp_path / "h.png")
    assert r.code == 0, r.err
    frac = float(r.out.split("; ")[1].split("%")[0])
    assert 0 < frac < 100 and (tmp_path / "h.png").stat().st_size > 1000
