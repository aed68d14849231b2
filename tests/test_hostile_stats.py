"""Hostile stats files, field by field: every key of the stats format (docs/stats-format.md) with a
wrong type, rank or bound must be refused on load with one line naming the key (exit 4), before
anything is allocated from it, with nothing written and the inputs intact. The same fields reach the
library through ``harden(model, mapping_of_arrays, out)``, which must refuse them alike."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import EXAMPLE, bad_input_cases, check_bad_input

MODEL = EXAMPLE / "model.onnx"


def _inputs(**change) -> np.ndarray:
    """The ``inputs`` record of the example (one input, [1, 1, 28, 28], batch axis 0), with ``change`` applied."""
    entry = {"name": "input", "dtype": "float32", "shape": [1, 1, 28, 28], "batch_axis": 0, **change}
    return np.array(json.dumps([entry]))


# (label, key -> new value (None deletes the key), exit code, the words the one line must hold)
FIELD_CASES = [
    ("sample shape of 10^12 elements", {"inputs": _inputs(shape=[1, 1, 10**6, 10**6])}, 4, "inputs"),
    ("sample shape with a negative dim", {"inputs": _inputs(shape=[1, -1, 28, 28])}, 4, "inputs"),
    ("sample shape of rank 1000", {"inputs": _inputs(shape=[1] * 1000)}, 4, "inputs"),
    ("batch axis true", {"inputs": _inputs(batch_axis=True)}, 4, "inputs"),
    ("batch axis a string", {"inputs": _inputs(batch_axis="0")}, 4, "inputs"),
    ("input dtype object", {"inputs": _inputs(dtype="object")}, 4, "inputs"),
    ("input dtype unknown", {"inputs": _inputs(dtype="float99")}, 4, "inputs"),
    ("input name a number", {"inputs": _inputs(name=7)}, 4, "inputs"),
    ("input shape a string", {"inputs": _inputs(shape="1x1x28x28")}, 4, "inputs"),
    ("inputs a mapping", {"inputs": np.array(json.dumps({"input": [1, 28, 28]}))}, 4, "inputs"),
    ("inputs an array of strings", {"inputs": np.array(["[]", "[]"])}, 4, "inputs"),
    ("input_value a string", {"inputs": _inputs(batch_axis=None), "input_value/0": np.array("sixteen thousand")},
     4, "input_value/0"),
    ("input_value too big", {"inputs": _inputs(batch_axis=None, shape=[4096]),
                             "input_value/0": np.zeros(4096, np.float32)}, 4, "input_value/0"),
    ("input_value of another shape", {"inputs": _inputs(batch_axis=None),
                                      "input_value/0": np.zeros(3, np.float32)}, 4, "input_value/0"),
    ("input_value for a batched input", {"input_value/0": np.zeros((1, 1, 28, 28), np.float32)}, 4,
     "input_value/0"),
    ("samples an array", {"samples": np.arange(3)}, 4, "samples"),
    ("samples a string", {"samples": np.array("512")}, 4, "samples"),
    ("samples negative", {"samples": np.array(-5, np.int64)}, 4, "samples"),
    ("samples a float", {"samples": np.array(512.5)}, 4, "samples"),
    ("format an array", {"format": np.array(["mstransform.stats"] * 2)}, 4, "format"),
    ("fingerprint an array", {"fingerprint": np.arange(4)}, 4, "fingerprint"),
    ("weights a number", {"weights": np.array(3.0)}, 4, "weights"),
    ("placement an array", {"placement": np.array(["activations", "activations"])}, 4, "placement"),
    ("selection an array", {"selection": np.array(["{}", "{}"])}, 4, "selection"),
    ("selection a number", {"selection": np.array(3)}, 4, "selection"),
    ("site_names of rank 2", {"site_names": "RANK2"}, 4, "site_names"),
    ("site_names numbers", {"site_names": "NUMBERS"}, 4, "site_names"),
    ("site_feeds numbers", {"site_feeds": "NUMBERS"}, 4, "site_feeds"),
    ("site_kinds of rank 0", {"site_kinds": np.array("Relu")}, 4, "site_kinds"),
    ("site_axes floats", {"site_axes": "FLOATS"}, 4, "site_axes"),
    ("site_ranks strings", {"site_ranks": "STRINGS"}, 4, "site_ranks"),
    ("site_ranks huge", {"site_ranks": "HUGE"}, 4, "site_ranks"),
    ("site_counts floats", {"site_counts": "FLOATS"}, 4, "site_counts"),
    ("site_dtypes numbers", {"site_dtypes": "NUMBERS"}, 4, "site_dtypes"),
    ("site_unreached numbers", {"site_unreached": np.arange(2)}, 4, "site_unreached"),
    ("site_unreached of rank 2", {"site_unreached": np.array([["a"]])}, 4, "site_unreached"),
    ("mean strings", {"mean/0": "STRINGS"}, 4, "mean/0"),
    ("var complex", {"var/0": "COMPLEX"}, 4, "var/0"),
    ("absmax booleans", {"absmax/0": "BOOLS"}, 4, "absmax/0"),
    ("mean empty", {"mean/0": np.zeros(0), "var/0": np.zeros(0)}, 4, "mean/0"),
    ("version a string", {"version": np.array("2")}, 4, "version"),
]


def _mutated(arrays: dict, change: dict) -> dict:
    out = dict(arrays)
    for key, value in change.items():
        if isinstance(value, str):  # a transformation of the key's own column
            old = arrays[key]
            value = {"RANK2": lambda: old.reshape(1, -1), "NUMBERS": lambda: np.arange(len(old)),
                     "FLOATS": lambda: old.astype(np.float64) + 0.5, "STRINGS": lambda: old.astype(str),
                     "HUGE": lambda: np.full(len(old), 10**9, np.int64),
                     "COMPLEX": lambda: old.astype(np.complex128),
                     "BOOLS": lambda: np.ones(len(old), bool)}[value]()
        out[key] = value
    return out


@pytest.fixture(scope="module")
def crafted(tmp_path_factory, example_hardened):
    """Each case's stats file, built from the session's example stats; ``folder`` must gain no file."""
    from mstransform.core.stats import load_stats

    arrays = load_stats(example_hardened.stats).to_arrays()
    arrays["absmax/0"] = np.abs(arrays["mean/0"])  # so that the absmax key has a case of its own
    folder = tmp_path_factory.mktemp("crafted-stats")
    files = {}
    for label, change, _, _ in FIELD_CASES:
        path = folder / (label.replace(" ", "-") + ".npz")
        np.savez(path, **_mutated(arrays, change))
        files[label] = path
    return folder, files, arrays


@bad_input_cases(FIELD_CASES)
def test_crafted_stats_field_is_one_line_naming_the_key(label, argv, code, words, crafted, tmp_path):
    folder, files, _ = crafted
    stats = files[label]
    for command in (["stats", "inspect", stats], [MODEL, "--stats", stats, "-o", folder / "out.onnx"]):
        check_bad_input(label, command, code, words, folder, [MODEL, stats])


@bad_input_cases(FIELD_CASES)
def test_crafted_stats_mapping_is_refused_by_the_api(label, argv, code, words, crafted, tmp_path):
    """The same fields as a mapping of arrays passed to ``harden``: StatsError naming the key."""
    import mstransform as mst
    from mstransform.core.errors import StatsError

    _, _, arrays = crafted
    with pytest.raises(StatsError) as e:
        mst.harden(MODEL, _mutated(arrays, argv), tmp_path / "out.onnx")
    assert words in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []

