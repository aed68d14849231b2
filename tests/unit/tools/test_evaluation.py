"""``mstransform eval`` end to end (``tools.evaluation``): the side-by-side table, its JSON and CSV files, the
worst case no better than any attack, and the twin proven equal to each model."""
from __future__ import annotations

import csv
import json

from helpers import EXAMPLE

MODEL = EXAMPLE / "model.onnx"


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
