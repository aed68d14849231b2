"""The ``hardened`` fixture: the zoo's exports calibrated on random inputs and hardened at alpha 0.2, once per
test module (``hardened(name, label, formulation="where")`` gives the file); shared by the TensorRT check and
engine tests, which import it by name."""
from __future__ import annotations

import pytest
from helpers import exported, random_inputs

import mstransform as mst

@pytest.fixture(scope="module")
def hardened(export_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("hardened")
    cache = {}

    def get(name, label, formulation="where"):
        key = (name, label, formulation)
        if key not in cache:
            src = exported(name, label, export_dir)
            stats = mst.calibrate(src, {"input": random_inputs(name, 16)}, progress=False)
            out = d / f"{name}-{label}-{formulation}.onnx"
            mst.harden(src, stats, alpha=0.2, output=out, formulation=formulation)
            cache[key] = out
        return cache[key]

    return get
