"""Hostile stats files (exit 4): a file that is not a stats file, stats of another model or of other
weights, missing sites or channels, NaN, Inf, negative or overflowing values, shards that cannot be
merged, and every key of the stats format (docs/stats-format.md) with a wrong type, rank or bound,
refused on load with one line naming the key before anything is allocated from it. Each gives one
line, its exit code, no new file, inputs intact. The same fields reach the library through
``harden(model, mapping_of_arrays, out)``, which must refuse them alike."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from helpers import EXAMPLE, bad_input_cases, check_bad_input, run_cli
from onnx import numpy_helper as nh

import mstransform as mst
from mstransform.core.stats import Stats

MODEL, CALIB = EXAMPLE / "model.onnx", EXAMPLE / "calib.npz"


def _stats_arrays(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _retrained(tmp):
    """The example's architecture with other weights: a second training of the same graph."""
    m = onnx.load(str(MODEL))
    for init in m.graph.initializer:
        a = nh.to_array(init)
        if a.dtype == np.float32 and a.size > 1:
            init.CopyFrom(nh.from_array((a * np.float32(1.01)).astype(np.float32), init.name))
    onnx.save(m, str(tmp / "retrained.onnx"))
    return tmp / "retrained.onnx"


@pytest.fixture(scope="module")
def bad(tmp_path_factory, example_hardened):
    """The hostile stats files of the table below, built once from the session's example stats;
    ``folder`` must gain no file from any case."""
    tmp = tmp_path_factory.mktemp("hostile-stats")
    stats = example_hardened.stats
    arr = _stats_arrays(stats)
    sites = ("site_names", "site_feeds", "site_kinds", "site_axes", "site_ranks", "site_dtypes", "site_counts")
    missing = {k: v for k, v in arr.items() if not k.endswith("/6")}
    missing.update({k: arr[k][:6] for k in sites})
    extra = dict(arr, **{k: np.append(arr[k], v) for k, v in zip(sites, ("ghost", "g", "Relu", 1, 4, "float32", 10))},
                 **{"mean/7": arr["mean/0"], "var/7": arr["var/0"]})
    files = {
        "other": dict(arr, fingerprint=np.array("0123456789abcdef")), "missing": missing, "extra": extra,
        "ch": dict(arr, **{"mean/0": arr["mean/0"][:3], "var/0": arr["var/0"][:3]}),
        "nanstats": dict(arr, **{"var/2": np.full_like(arr["var/2"], np.nan)}),
        "neg": dict(arr, **{"var/1": -arr["var/1"]}),
        "inf": dict(arr, **{"mean/3": np.full_like(arr["mean/3"], np.inf)}),
        "v9": dict(arr, version=np.array(9)), "version-string": dict(arr, version=np.array("2")),
        "axis-beyond-rank": dict(arr, site_axes=np.full(7, 9, np.int64)),
        "deep-selection": dict(arr, selection=np.array("[" * 100_000 + "]" * 100_000)),
        "variance-1e80": dict(arr, **{"var/0": np.full(16, 1e80)}),
        "fp16-center-7e4": dict(arr, **{"mean/0": np.full(16, 7e4)}),
    }
    for name, arrays in files.items():
        np.savez(tmp / f"{name}.npz", **arrays)
    np.savez(tmp / "pickled.npz", a=np.array([{"x": 1}], dtype=object))
    (tmp / "text.npz").write_text("not a zip")
    _retrained(tmp)
    mst.calibrate(tmp / "retrained.onnx", CALIB, limit=128, progress=False).save(tmp / "retrained.npz")
    return SimpleNamespace(tmp=tmp, stats=stats, out=tmp / "o.onnx", s=tmp / "s.npz", folder=tmp,
                           protected=[MODEL, CALIB, stats])


# (label, argv of the prepared files, exit code, words in the message)
STATS_CASES = [
    # not a stats file
    ("stats file missing", lambda f: [MODEL, "--stats", f.tmp / "none.npz", "-o", f.out], 4, "does not exist"),
    ("stats not a zip", lambda f: [MODEL, "--stats", f.tmp / "text.npz", "-o", f.out], 4, "not a readable"),
    ("pickled stats", lambda f: [MODEL, "--stats", f.tmp / "pickled.npz", "-o", f.out], 4, "object arrays"),
    ("stats version", lambda f: [MODEL, "--stats", f.tmp / "v9.npz", "-o", f.out], 4, "version '9'"),
    ("version string", lambda f: [MODEL, "--stats", f.tmp / "version-string.npz", "-o", f.out], 4, "version"),
    ("deep selection", lambda f: [MODEL, "--stats", f.tmp / "deep-selection.npz", "-o", f.out], 4,
     "selection record"),
    # stats of another model, other weights, other sites or channels
    ("stats of another model", lambda f: [MODEL, "--stats", f.tmp / "other.npz", "-o", f.out], 4, "another model"),
    ("retrained weights", lambda f: [f.tmp / "retrained.onnx", "--stats", f.stats, "-o", f.out], 4, "other weights"),
    ("missing site", lambda f: [MODEL, "--stats", f.tmp / "missing.npz", "-o", f.out], 4, "no statistics"),
    ("extra site in stats", lambda f: [MODEL, "--stats", f.tmp / "extra.npz", "-o", f.out], 4, "lacks"),
    ("channel-count mismatch", lambda f: [MODEL, "--stats", f.tmp / "ch.npz", "-o", f.out], 4, "channels"),
    ("axis beyond rank", lambda f: [MODEL, "--stats", f.tmp / "axis-beyond-rank.npz", "-o", f.out], 4,
     "outside its rank"),
    # values
    ("NaN in stats", lambda f: [MODEL, "--stats", f.tmp / "nanstats.npz", "-o", f.out], 4, "NaN"),
    ("Inf in stats", lambda f: [MODEL, "--stats", f.tmp / "inf.npz", "-o", f.out], 4, "Inf"),
    ("negative variance", lambda f: [MODEL, "--stats", f.tmp / "neg.npz", "-o", f.out], 4, "negative variance"),
    ("variance 1e80", lambda f: [MODEL, "--stats", f.tmp / "variance-1e80.npz", "-o", f.out], 4,
     "not finite in float32"),
    ("fp16 center 7e4", lambda f: [MODEL, "--stats", f.tmp / "fp16-center-7e4.npz", "--precision", "fp16", "-o",
                                   f.out], 4, "not finite in float16"),
    # shards that cannot be merged
    ("merge stats of two models", lambda f: ["stats", "merge", f.stats, f.tmp / "inf.npz", "-o", f.s], 4,
     "NaN or Inf"),
    ("merge retrained", lambda f: ["stats", "merge", f.stats, f.tmp / "retrained.npz", "-o", f.tmp / "m.npz"], 4,
     "different weights"),
    ("merge a shard with itself", lambda f: ["stats", "merge", f.stats, f.stats, "-o", f.tmp / "m.npz"], 4,
     "identical"),
]


@bad_input_cases(STATS_CASES)
def test_hostile_stats_file(label, argv, code, words, bad):
    check_bad_input(label, argv(bad), code, words, bad.folder, bad.protected)


def test_retrained_weights_pass_with_ignore_fingerprint(example_hardened, tmp_path):
    r = run_cli(_retrained(tmp_path), "--stats", example_hardened.stats, "--ignore-fingerprint", "-o",
                tmp_path / "o.onnx")
    assert r.code == 0, r.err


def test_stats_record_the_weights_digest(example_hardened):
    z = np.load(example_hardened.stats)
    assert len(str(z["weights"])) == 16 and json.loads(str(z["inputs"]))[0]["name"] == "input"
    assert Stats.load(example_hardened.stats).weights == str(z["weights"])


# -- field by field -----------------------------------------------------------------------------------------


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
    ("selection axis Infinity", {"selection": np.array('{"axes": {"Relu_0": Infinity}}')}, 4, "selection"),
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
    ("var overflowing its sample count", {"var/0": "VAST"}, 4, "variance too large"),
    ("version a string", {"version": np.array("2")}, 4, "version"),
]


def _mutated(arrays: dict, change: dict) -> dict:
    out = dict(arrays)
    for key, value in change.items():
        if isinstance(value, str):  # a transformation of the key's own column
            old = arrays[key]
            value = {"RANK2": lambda: old.reshape(1, -1), "NUMBERS": lambda: np.arange(len(old)),
                     "FLOATS": lambda: old.astype(np.float64) + 0.5, "STRINGS": lambda: old.astype(str),
                     "HUGE": lambda: np.full(len(old), 10**9, np.int64), "VAST": lambda: np.full(len(old), 1e308),
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

