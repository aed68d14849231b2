"""The Python API's conventions (``tools.api``): every result prints with format(), serialises with to_dict()
and saves alike; ``progress``, ``log`` and ``runtime`` mean one thing in every function."""
from __future__ import annotations

import csv
import json

from example_data import example_images
from helpers import EXAMPLE

import mstransform as mst
from mstransform.robustness.twin import OnnxTwin
from mstransform.robustness.twin_check import check_twin

MODEL = EXAMPLE / "model.onnx"


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

    twin = check_twin(OnnxTwin(MODEL), MODEL, example_images(8))
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
