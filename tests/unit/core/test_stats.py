"""The statistics file (``core.stats``): what a calibration writes reads back with its schema, an older
version still loads, and a pickled payload is refused."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import exported, random_inputs

import mstransform as mst
from mstransform.core.errors import StatsError
from mstransform.core.stats import Stats


def test_stats_file_round_trip_and_schema(export_dir, tmp_path):
    path = exported("silu", "legacy-17-folded", export_dir)
    stats = mst.calibrate(path, {"input": random_inputs("silu", 8)}, progress=False)
    f = tmp_path / "s.npz"
    stats.save(f)
    with np.load(f, allow_pickle=False) as z:
        assert str(z["format"]) == "mstransform.stats" and int(z["version"]) == 2
        assert list(z["site_names"]) == list(stats.sites)
        # one calibration sample as fed: batch axis sized 1, the model's own input type
        assert json.loads(str(z["inputs"])) == [{"name": "input", "dtype": "float32",
                                                  "shape": [1, *random_inputs("silu", 1).shape[1:]], "batch_axis": 0}]
        v1 = {k: z[k] for k in z.files if k != "inputs"}
    again = Stats.load(f)
    assert again.sha256() == stats.sha256() and again.fingerprint == stats.fingerprint
    v1["version"] = np.array(1, dtype=np.int64)  # a version-1 file (no inputs record) still loads
    old = Stats.from_arrays(v1)
    assert old.inputs == () and list(old.sites) == list(stats.sites)


def test_pickled_stats_are_refused(tmp_path):
    f = tmp_path / "evil.npz"
    np.savez(f, format=np.array("mstransform.stats"), payload=np.array([{"a": 1}], dtype=object))
    with pytest.raises(StatsError, match="object arrays"):
        Stats.load(f)
