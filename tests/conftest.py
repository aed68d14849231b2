"""Shared fixtures: real models exported from PyTorch (cached per session) and a CLI runner."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "fashion_mnist"

# (label, exporter, opset, keep_bn): the legacy exporter folds BatchNorm unless constant folding is off;
# the dynamo exporter folds it in its default optimizer.
EXPORTS = [
    ("legacy-17-folded", False, 17, False),
    ("legacy-17-bn", False, 17, True),
    ("legacy-20-folded", False, 20, False),
    ("dynamo-18-folded", True, 18, False),
    ("dynamo-20-folded", True, 20, False),
]


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")


_CACHE: dict = {}


def exported(name: str, label: str, export_dir: Path) -> Path:
    """Export zoo model ``name`` with export setting ``label`` once per session."""
    import torch  # noqa: F401  (import cost paid once)
    import zoo

    key = (name, label)
    if key not in _CACHE:
        _, dynamo, opset, keep_bn = next(e for e in EXPORTS if e[0] == label)
        path = export_dir / f"{name}-{label}.onnx"
        logging.disable(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            zoo.export(zoo.build(name), name, path, dynamo=dynamo, opset=opset, keep_bn=keep_bn)
        logging.disable(logging.NOTSET)
        os.chmod(path, 0o444)  # tests must never modify their inputs
        _CACHE[key] = path
    return _CACHE[key]


def random_inputs(name: str, n: int, seed: int = 0) -> np.ndarray:
    import zoo

    return np.random.default_rng(seed).standard_normal((n, *zoo.INPUT_SHAPES[name])).astype(np.float32)


U32 = 2.0**-24  # float32 unit roundoff


def ingraph_tolerance(shape, axis: int, batch: int) -> tuple[float, float]:
    """The bound of docs/method.md (*Numerical guarantee*) for in-graph statistics of a site of ``shape``.

    With K elements per channel inside one sample and batches of N, a float32 sum spans at most
    L = K + N terms: |mean error| <= 1.2 L u sigma and |var error| <= 5.5 L u var (u = 2^-24).
    Returned as the factors (1.2 L u, 5.5 L u).
    """
    inner = int(np.prod([d for i, d in enumerate(shape) if i not in (0, axis)], dtype=np.int64))
    span = inner + batch
    return 1.2 * span * U32, 5.5 * span * U32


def assert_close_but_for_edge_flips(got, ref, atol: float = 1e-5, min_fraction: float = 0.75) -> None:
    """Outputs of a hardened model against a reference, per sample.

    The operator is discontinuous at its band edge: where two implementations round a value
    near ``|x - c| = t`` differently (another CPU, vector width, thread count, fused kernel), one
    replaces it and the other keeps it, and that sample's output moves by up to a threshold. No
    tolerance tells that from a bug, so samples are compared one by one within ``atol`` and a rare
    differing sample is allowed; a wrong pass moves every sample and still fails.
    """
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    same = np.all(np.abs(got - ref).reshape(len(got), -1) <= atol, axis=1)
    assert same.mean() >= min_fraction, f"{int((~same).sum())} of {len(same)} samples differ by more than {atol}"


def numpy_moments(x: np.ndarray, axis: int, shift=None):
    """float64 moments of one batch, through the shifted-sums constructor the calibration uses."""
    from mstransform.core.moments import Moments

    x = np.moveaxis(np.asarray(x, np.float64), axis, -1).reshape(-1, x.shape[axis])
    c = np.zeros(x.shape[1]) if shift is None else np.asarray(shift, np.float64)
    d = x - c
    if len(x) == 0:
        return Moments.empty(x.shape[1])
    return Moments.of_shifted_sums(len(x), c, d.sum(0), (d * d).sum(0), x.max(0), x.min(0))


class CLIResult:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err


def run_cli(*args) -> CLIResult:
    from mstransform.tools.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return CLIResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    return run_cli


def check_bad_inputs(cases, folder: Path, protected: list[Path]) -> None:
    """Each case must fail with its exit code and one line naming the problem, leaving no file and inputs intact."""
    before = {p: p.read_bytes() for p in protected}
    for label, argv, code, words in cases:
        listing = set(os.listdir(folder))
        r = run_cli(*argv)
        assert r.code == code, f"{label}: exit {r.code}, stderr {r.err!r}"
        lines = r.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mstransform: error:"), f"{label}: {r.err!r}"
        assert words.lower() in lines[0].lower(), f"{label}: {lines[0]!r}"
        assert "Traceback" not in r.err
        assert set(os.listdir(folder)) == listing, f"{label}: left files {set(os.listdir(folder)) - listing}"
    assert all(p.read_bytes() == b for p, b in before.items()), "an input file was modified"
