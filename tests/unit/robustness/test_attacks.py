"""Robustness evaluation: the differentiable twin, BPDA gradients, alpha selection, eval and sweep end to end."""
from __future__ import annotations

import contextlib
import csv
import io
import json

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnxruntime as ort
import pytest
import torch
from helpers import EXAMPLE, tiny_model

import mstransform as mst
from mstransform.core.errors import UsageError, VerificationError
from mstransform.robustness.alpha_rule import SweepRow, choose_alpha
from mstransform.robustness.twin import OnnxTwin, Unit
from mstransform.robustness.twin_check import check_twin

MODEL = EXAMPLE / "model.onnx"


def _test_images(n):
    return (np.load(EXAMPLE / "test.npz")["input"][:n] / 255).astype(np.float32)


def test_twin_is_the_deployed_model(example_hardened):
    for path, ops in ((MODEL, 0), (example_hardened.hardened, 7)):
        report = check_twin(OnnxTwin(path), path, _test_images(64))
        assert report.operators == ops and report.max_rel_diff <= 1e-4
    assert len(OnnxTwin(example_hardened.hardened).units) == 7


def _plant(twin: OnnxTwin, error: str) -> None:
    unit = twin.units[2]
    if error == "weights":
        with torch.no_grad():
            next(iter(twin.weights.values())).mul_(1.01)
    elif error == "center":
        unit.center = unit.center + unit.threshold  # shifts the band by a whole threshold
    elif error == "threshold":
        unit.threshold = unit.threshold * 1.5
    elif error == "dropped":
        i = twin.program.index(unit)
        twin.program[i] = Unit(unit.x, unit.y, unit.center, torch.zeros_like(unit.threshold))  # never replaces
    elif error == "axis":  # per-channel constants applied to the wrong channels
        unit.center = unit.center.flip(1)
        unit.threshold = unit.threshold.flip(1)


@pytest.mark.parametrize("error", ["weights", "center", "threshold", "dropped", "axis"])
def test_twin_check_refuses_planted_errors(example_hardened, error):
    path = example_hardened.hardened
    twin = OnnxTwin(path)
    _plant(twin, error)
    with pytest.raises(VerificationError, match="twin"):
        check_twin(twin, path, _test_images(32))


def test_twin_check_counts_a_flip_at_the_band_edge(tmp_path):
    """A value one rounding step from the edge may be decided either way: reported, not refused."""
    t = np.float32(0.5)
    below = np.nextafter(t, np.float32(0))  # the largest float32 below t: replaced by ORT
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 1, 4])
    consts = [onnx.numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w"),
              onnx.numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.float32), "c"),
              onnx.numpy_helper.from_array(np.full((1, 1, 1, 1), t, np.float32), "t")]
    nodes = [onnx.helper.make_node("Conv", ["x", "w"], ["h"]), onnx.helper.make_node("Sub", ["h", "c"], ["d"]),
             onnx.helper.make_node("Abs", ["d"], ["a"]), onnx.helper.make_node("Less", ["a", "t"], ["m"]),
             onnx.helper.make_node("Where", ["m", "c", "h"], ["s"]), onnx.helper.make_node("Relu", ["s"], ["y"])]
    graph = onnx.helper.make_graph(nodes, "edge", [x], [y], consts)
    path = tmp_path / "edge.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8), str(path))
    twin = OnnxTwin(path)
    with torch.no_grad():
        next(iter(twin.weights.values())).mul_(1 + 2.0**-22)  # a rounding-sized difference before the operator
    inp = np.array([[[[below, 0.1, 0.9, -2.0]]]], np.float32)
    report = check_twin(twin, path, inp)
    assert report.flips == 1 and report.max_rel_diff < 1e-6


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


@pytest.mark.parametrize("shape", [[1, 1], [1, 2, 5], [1]], ids=["one-class", "rank-3", "rank-1"])
def test_eval_refuses_a_first_output_without_class_scores(shape):
    """Class scores are decided by runtime.accuracy.is_class_scores, as for accuracy and ``run``."""
    from mstransform.core.errors import DataError
    from mstransform.robustness.attacks import check_classifier

    k = int(np.prod(shape))
    proto = tiny_model([onnx.helper.make_node("Reshape", ["x", "shape"], ["y"])], [("x", [1, k])], [("y", shape)],
                       consts={"shape": np.array(shape, np.int64)})
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x, y = np.zeros((4, k), np.float32), np.zeros(4, np.int64)
    with pytest.raises(DataError, match="not \\(batch, classes\\)") as e:
        check_classifier(session, x, y)
    assert "\n" not in str(e.value)


def test_an_attack_that_leaves_the_threat_model_is_a_verification_error():
    from mstransform.robustness.attacks import AttackConfig, _check_budget

    x = np.full((2, 4), 0.5, np.float32)
    _check_budget(x + 0.1, x, AttackConfig(eps=0.1), "square")  # on the boundary: counts
    with pytest.raises(VerificationError, match="left the threat model"):
        _check_budget(x + 0.2, x, AttackConfig(eps=0.1), "square")


def test_eval_end_to_end(cli, example_hardened, tmp_path):
    r = cli("eval", MODEL, example_hardened.hardened, "--data", EXAMPLE / "test.npz", "-n", "64", "--batch-size", "64",
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
        assert res["twin_max_rel_diff"] <= 1e-4
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert len(rows) == 2 and float(rows[0]["clean"]) > 80


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


def test_sweep_plot_draws_the_rows():
    from mstransform.robustness.plots import sweep_figure

    rows = [SweepRow(0.0, 90.0, 10.0, 10.0), SweepRow(0.1, 89.0, 30.0, 12.0), SweepRow(0.3, 80.0, 50.0, 5.0)]
    fig = sweep_figure(rows)
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    for label, field in (("clean", "clean"), ("APGD-CE (standard gradient)", "standard"),
                         ("APGD-CE straight-through (BPDA)", "bpda")):
        assert list(lines[label].get_xdata()) == [r.alpha for r in rows]
        assert list(lines[label].get_ydata()) == [getattr(r, field) for r in rows]


def test_plot_histogram(cli, example_hardened, tmp_path):
    r = cli("plot", MODEL, "--stats", example_hardened.stats, "--data", EXAMPLE / "calib.npz", "--site",
            "/block1/Relu_1", "--channel", "2", "--limit", "64", "-o", tmp_path / "h.png")
    assert r.code == 0, r.err
    frac = float(r.out.split("; ")[1].split("%")[0])
    assert 0 < frac < 100 and (tmp_path / "h.png").stat().st_size > 1000


def test_eval_and_sweep_results_print_serialise_and_save_alike(example_hardened, tmp_path, monkeypatch):
    """Every result has format() for people and to_dict() for machines; a report's save() writes that dict;
    ``progress`` is a bool (the bar) and ``log`` hears the lines, as in calibrate. The sweep opens the base
    model's session for the self-check once, whatever the number of alphas."""
    from mstransform.robustness.attacks import AttackConfig
    from mstransform.tools import sweep as sweep_module

    opened, real = [], sweep_module.base_session
    monkeypatch.setattr(sweep_module, "base_session", lambda *a: opened.append(a) or real(*a))

    cfg = AttackConfig(n=8, batch_size=8, apgd_iters=1, attacks=("apgd-ce",))
    heard = []
    report = mst.evaluate([MODEL], EXAMPLE / "test.npz", cfg, progress=False, log=heard.append)
    assert heard[0].startswith("work ahead") and any(line.startswith("model: apgd-ce") for line in heard)
    assert "eps=0.1, 8 images" in report.format() and report.format().splitlines()[1].split()[:2] == ["model", "n"]
    report.save(json_path=tmp_path / "e.json", csv_path=tmp_path / "e.csv")
    assert json.loads((tmp_path / "e.json").read_text()) == json.loads(json.dumps(report.to_dict()))
    assert [r["model"] for r in csv.DictReader(open(tmp_path / "e.csv"))] == ["model"]

    stats = mst.load_stats(example_hardened.stats)
    heard.clear()
    swept = mst.sweep(MODEL, stats, EXAMPLE / "val.npz", [0.1, 0.2], cfg, progress=False, log=heard.append)
    assert [line.split(":")[0] for line in heard if line.startswith("alpha ")] == ["alpha 0", "alpha 0.1", "alpha 0.2"]
    assert len(opened) == 1
    assert "chosen:" in swept.format() and swept.to_dict()["chosen_alpha"] == swept.alpha
    swept.save(json_path=tmp_path / "s.json", csv_path=tmp_path / "s.csv")
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads(json.dumps(swept.to_dict()))

    twin = check_twin(OnnxTwin(MODEL), MODEL, _test_images(8))
    assert twin.format().startswith("twin = deployed model") and twin.to_dict()["operators"] == 0


def test_progress_log_and_runtime_mean_one_thing_in_every_function():
    """``progress`` is a bool (a bar), ``log`` a callable taking lines, ``runtime`` defaults to ONNX Runtime."""
    import inspect

    from mstransform.core.typed import hints_of

    for fn in (mst.calibrate, mst.evaluate, mst.sweep):
        params = inspect.signature(fn).parameters
        assert params["progress"].default is True and hints_of(fn)["progress"] is bool, fn.__name__
        assert params["log"].default is None, fn.__name__
    for fn in (mst.calibrate, mst.evaluate, mst.sweep, mst.run, mst.harden, mst.compare_accuracy):
        assert inspect.signature(fn).parameters["runtime"].default is mst.Runtime.ONNXRUNTIME, fn.__name__
