"""Shared test helpers: zoo models exported from PyTorch (cached per session), the shipped example
calibrated and hardened once per session (read-only), the teacher-forced comparison of a hardened
model with the paper's operator, tiny hand-built ONNX models, a CLI runner and the bad-input checks.

``tests/`` is on ``sys.path`` through pytest's ``pythonpath`` setting (pyproject.toml), so test files
import ``conftest``, ``zoo`` and ``realmodels`` by name."""
from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
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


# -- a hardened model against the paper's operator, split at its operators -----------------------
#
# The operator is discontinuous at its band edge |x - c| = t: where two implementations round a
# value near the edge differently (another CPU, vector width, thread count, fused kernel), one
# replaces it and the other keeps it, and the output moves by up to a threshold. No tolerance on
# the outputs tells that from a bug, so the comparison is split at the operators (teacher forcing,
# as robustness/twin_check.py does for the differentiable twin):
#
# 1. the implementation under test runs with every operator's input x and output y exposed;
# 2. the reference (the torch model with the paper's operator hooked in, tests/support/zoo.py) runs with
#    each operator's *output* forced to the implementation's y, so every segment between two
#    operators is a continuous function of identical inputs, and records each operator's input;
# 3. per operator: (a) the inputs agree within REL_TOL of the tensor's scale; (b) the
#    implementation's y is the paper's operator on its own x with its own constants, bit for bit;
#    its constants are the paper's (float32 rounding aside); (c) where the reference's decision on
#    its x differs from the implementation's on its x, the value lies within rounding distance of
#    the band edge; (d) the final outputs agree within REL_TOL of their scale.
#
# REL_TOL: between operators the two sides compute the same float32 ops in other orders (ORT's
# folded BatchNorm and fused Conv+Add, oneDNN or Inductor kernels, ORT's LayerNorm, Erf and Tanh
# against torch's). Re-associating a length-K float32 sum moves it by at most K*u of the sum of the
# magnitudes of its terms (u = 2^-24), and in practice by about sqrt(K)*u (Higham & Mary 2019,
# probabilistic rounding error analysis); the zoo's longest reductions have K <= 288 (3x3 convs
# over 8 channels, 2d-wide MLPs, 16-token attention) and a segment chains at most a handful of them,
# so the differences stay near 1e-6 of the tensor's largest value. 1e-5 keeps a margin of 10 over
# that; every real defect the checks exist for (a wrong weight, a missing or extra operator, a
# wrong op, a wrong constant) moves a segment by 1e-3 of its scale or more.
REL_TOL = 1e-5


@dataclass
class OperatorValues:
    """One sparsify operator as an implementation ran it: its input and output, and its own constants
    (pre-shaped for broadcasting against ``x``)."""

    x: np.ndarray
    y: np.ndarray
    center: np.ndarray
    threshold: np.ndarray


@dataclass
class ForcedReport:
    operators: int = 0
    values: int = 0
    replaced: int = 0  # values the implementation's operators replaced
    flips: int = 0  # decisions that differ from the reference's, all within rounding distance of the edge
    max_rel_diff: float = 0.0  # the continuous parts, relative to each tensor's scale


def onnx_operator_values(path, x: np.ndarray) -> tuple[np.ndarray, list[OperatorValues]]:
    """ONNX Runtime (CPU) on the model at ``path`` with every sparsify operator's x and y exposed.

    Operators are found by their structure (``find_sparsify_ops``), not their names; the constants
    are those stored in the file."""
    import onnx_ir as ir
    import onnxruntime as ort

    from mstransform.passes.graph.expose import exposed
    from mstransform.passes.onnx.recognise import find_sparsify_ops

    model = ir.external_data.load_to_model(ir.load(str(path)))  # weights in memory: the session reads bytes
    ops = find_sparsify_ops(model.graph)
    values = [v for op in ops for v in (op.x, op.y)]
    with exposed(model, values) as seen:
        names = [model.graph.outputs[0].name] + [seen.names[v.name] for v in values]
        proto = ir.to_proto(model).SerializeToString()
    session = ort.InferenceSession(proto, providers=["CPUExecutionProvider"])
    out, *got = session.run(names, {session.get_inputs()[0].name: x})
    return out, [OperatorValues(got[2 * i], got[2 * i + 1], np.asarray(op.center), np.asarray(op.threshold))
                 for i, op in enumerate(ops)]


def torch_operator_values(module, x: np.ndarray) -> tuple[np.ndarray, list[OperatorValues]]:
    """A torch module holding MeanSparse operators (the FX pass's output) run eagerly on ``x``, each
    operator's input and output recorded by a forward hook, in module order (the pass's site order)."""
    import torch

    from mstransform.passes.fx.module import MeanSparse

    ops = [m for m in module.modules() if isinstance(m, MeanSparse)]
    seen: dict[int, tuple] = {}

    def keep(i):
        def hook(mod, args, out):
            assert i not in seen, "an operator ran twice in one forward pass"
            seen[i] = (args[0].detach().clone(), out.detach().clone())
        return hook

    handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(ops)]
    try:
        with torch.no_grad():
            out = module(torch.from_numpy(x)).numpy()
    finally:
        for h in handles:
            h.remove()
    return out, [OperatorValues(seen[i][0].numpy(), seen[i][1].numpy(), m.center.to(seen[i][0].dtype).numpy(),
                                m.threshold.to(seen[i][0].dtype).numpy()) for i, m in enumerate(ops)]


def forced_reference(name: str, params: list[tuple], x: np.ndarray, forced: dict[int, np.ndarray]):
    """The zoo model ``name`` with the paper's operator at each site, each operator's output in ``forced``
    replaced by the given array. Returns (output, {site index: (x entering the operator, its decision)})."""
    import torch

    import zoo

    model = zoo.build(name)
    record: dict = {}
    zoo.with_reference_operator(model, name, params, forced={i: torch.from_numpy(y) for i, y in forced.items()},
                                record=record)
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    return out, {i: (a.numpy(), m.numpy()) for i, (a, m) in record.items()}


def _scale(a: np.ndarray) -> float:
    return max(float(np.max(np.abs(a))) if a.size else 0.0, 1e-6)


def check_operators(out: np.ndarray, ops: list[OperatorValues], ref_out: np.ndarray, ref: dict, params: list[tuple],
                    rel_tol: float = REL_TOL) -> ForcedReport:
    """Checks (a)-(d) above on the implementation's ``out``/``ops`` and the forced reference's
    ``ref_out``/``ref`` (see :func:`forced_reference`). Raises AssertionError naming every failed check."""
    active = [i for i, (_, t, _) in enumerate(params) if np.any(np.asarray(t, np.float32) > 0)]  # t = 0: no operator
    if len(ops) != len(active):
        raise AssertionError(f"the implementation runs {len(ops)} sparsify operator(s) where the reference has "
                             f"{len(active)}")
    failures: list[str] = []
    report = ForcedReport(operators=len(ops))
    for i, op in zip(active, ops):
        center, threshold, axis = params[i]
        x_ref, decided_ref = ref[i]
        where = f"operator {i}"
        if x_ref.shape != op.x.shape or op.y.shape != op.x.shape:
            failures.append(f"{where}: shapes x {op.x.shape}, y {op.y.shape}, reference x {x_ref.shape}")
            continue
        shape = [1] * op.x.ndim
        shape[axis] = -1
        c_ref = np.asarray(center, np.float64).astype(op.x.dtype).reshape(shape)  # what the reference runs with
        t_ref = np.asarray(threshold, np.float64).astype(op.x.dtype).reshape(shape)
        c, t = op.center.astype(op.x.dtype), op.threshold.astype(op.x.dtype)
        # the constants: the paper's, rounded to float32 (a product rounded in another order differs by a
        # few units of roundoff: 6u covers rounding each of center, sigma, alpha and their product)
        u = float(np.finfo(op.x.dtype).eps) / 2
        for label, mine, theirs in (("center", c, c_ref), ("threshold", t, t_ref)):
            if mine.shape != theirs.shape or np.any(np.abs(mine.astype(np.float64) - theirs) >
                                                      6 * u * np.abs(theirs.astype(np.float64))):
                failures.append(f"{where}: its {label} is not the paper's ({mine.ravel()[:4]} vs {theirs.ravel()[:4]})")
        # (b) the operator itself, on its own input, bit for bit
        decided = np.abs(op.x - c) < t
        expect = np.where(decided, np.broadcast_to(c, op.x.shape), op.x)
        if not np.array_equal(op.y, expect):
            bad = int(np.sum(op.y != expect))
            failures.append(f"{where}: its output differs from where(|x - c| < t, c, x) on {bad} of {op.y.size} "
                            "values of its own input")
        # (a) the continuous part before the operator
        diff = float(np.max(np.abs(x_ref.astype(np.float64) - op.x.astype(np.float64)))) if op.x.size else 0.0
        rel = diff / _scale(op.x)
        report.max_rel_diff = max(report.max_rel_diff, rel)
        if rel > rel_tol:
            failures.append(f"{where}: its input differs from the reference's by {rel:.2g} of its scale "
                            f"(> {rel_tol:g})")
        # (c) decisions: a differing one only within rounding distance of the band edge. x_ref and x lie within
        # diff of each other, so a value on the other side of the edge is at most diff from it; computing
        # |x - c| in float32 and the constants' rounding add a few units of roundoff of the values involved
        flips = (decided_ref != decided) & ~((x_ref == c_ref) & (op.x == c))  # both at the center: same value
        if flips.any():
            x64 = op.x.astype(np.float64)
            c64 = np.broadcast_to(c_ref, op.x.shape).astype(np.float64)
            t64 = np.broadcast_to(t_ref, op.x.shape).astype(np.float64)
            edge = np.abs(np.abs(x64 - c64) - t64)[flips]
            limit = (2 * diff + 4 * float(np.spacing(np.float32(_scale(op.x))))
                     + 6 * u * (np.abs(c64) + t64)[flips])
            far = edge > limit
            if far.any():
                failures.append(f"{where}: decides {int(far.sum())} value(s) differently from the paper's operator "
                                f"up to {float(edge[far].max()):.2g} away from the band edge (rounding allows "
                                f"{float(limit[far].max()):.2g})")
            report.flips += int(flips.sum())
        report.values += op.x.size
        report.replaced += int(np.sum(decided & (op.x != c)))
    # (d) the continuous part after the last operator
    if out.shape != ref_out.shape:
        failures.append(f"output shape {out.shape} vs the reference's {ref_out.shape}")
    else:
        rel = float(np.max(np.abs(out.astype(np.float64) - ref_out.astype(np.float64)))) / _scale(ref_out)
        report.max_rel_diff = max(report.max_rel_diff, rel)
        if rel > rel_tol:
            failures.append(f"the output differs from the reference's by {rel:.2g} of its scale (> {rel_tol:g})")
    if report.operators and not report.replaced:
        failures.append("no operator replaced any value: the comparison could not tell a no-op from the operator")
    if failures:
        raise AssertionError("hardened model vs the paper's operator:\n  " + "\n  ".join(failures))
    return report


def assert_matches_reference(out: np.ndarray, ops: list[OperatorValues], name: str, params: list[tuple],
                             x: np.ndarray, rel_tol: float = REL_TOL) -> ForcedReport:
    """An implementation's ``out``/``ops`` on ``x`` (:func:`onnx_operator_values`, :func:`torch_operator_values`)
    against zoo model ``name`` with the paper's operator, ``params`` = (center, threshold, axis) per site."""
    active = [i for i, (_, t, _) in enumerate(params) if np.any(np.asarray(t, np.float32) > 0)]
    forced = {i: op.y for i, op in zip(active, ops)}
    ref_out, ref = forced_reference(name, params, x, forced)
    return check_operators(out, ops, ref_out, ref, params, rel_tol)


def assert_onnx_matches_reference(path, name: str, params: list[tuple], x: np.ndarray) -> ForcedReport:
    """ONNX Runtime on the hardened file at ``path`` against the paper's operator (see above)."""
    out, ops = onnx_operator_values(path, x)
    return assert_matches_reference(out, ops, name, params, x)


def numpy_moments(x: np.ndarray, axis: int, shift=None):
    """float64 moments of one batch, through the shifted-sums constructor the calibration uses."""
    from mstransform.core.moments import Moments

    x = np.moveaxis(np.asarray(x, np.float64), axis, -1).reshape(-1, x.shape[axis])
    c = np.zeros(x.shape[1]) if shift is None else np.asarray(shift, np.float64)
    d = x - c
    if len(x) == 0:
        return Moments.empty(x.shape[1])
    return Moments.of_shifted_sums(len(x), c, d.sum(0), (d * d).sum(0), x.max(0), x.min(0))


def tiny_model(nodes, inputs, outputs, consts: dict | None = None, opset: int = 17):
    """A small ONNX model from ``onnx.helper`` nodes: ``inputs``/``outputs`` are ``(name, shape)`` pairs of
    float tensors (a shape of None: unknown) or ready ValueInfoProtos, ``consts`` name -> array initializers."""
    import onnx
    import onnx.helper as oh
    import onnx.numpy_helper as onh

    def info(v):
        if isinstance(v, onnx.ValueInfoProto):
            return v
        name, shape = v
        return oh.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)

    inits = [onh.from_array(np.asarray(a), name) for name, a in (consts or {}).items()]
    graph = oh.make_graph(list(nodes), "tiny", [info(v) for v in inputs], [info(v) for v in outputs], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=8)


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


def check_bad_input(label: str, argv: list, code: int, words: str, folder: Path, protected: list[Path]) -> None:
    """One bad input must fail with its exit code and one line naming the problem, leave no new file in
    ``folder`` and every ``protected`` file as it was."""
    before = {p: p.read_bytes() for p in protected}
    listing = set(os.listdir(folder))
    r = run_cli(*argv)
    assert r.code == code, f"{label}: exit {r.code}, stderr {r.err!r}"
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mstransform: error:"), f"{label}: {r.err!r}"
    assert words.lower() in lines[0].lower(), f"{label}: {lines[0]!r}"
    assert "Traceback" not in r.err
    assert set(os.listdir(folder)) == listing, f"{label}: left files {set(os.listdir(folder)) - listing}"
    assert [p for p, b in before.items() if p.read_bytes() != b] == [], f"{label}: an input file was modified"


def bad_input_cases(cases):
    """``@pytest.mark.parametrize`` over ``(label, argv, code, words)`` rows, one test id per label, so one
    failing case never hides the others. ``argv`` is a function of the test's prepared files (the rows
    are collected before any file exists)."""
    return pytest.mark.parametrize("label, argv, code, words",
                                   [pytest.param(*c, id=c[0].replace(" ", "-")) for c in cases])


# -- the shipped example, calibrated and hardened once per session -----------------------------

class ExampleFiles(NamedTuple):
    stats: Path  # examples/fashion_mnist/model.onnx calibrated on the first EXAMPLE_LIMIT samples of calib.npz
    hardened: Path  # the model hardened with those stats at EXAMPLE_ALPHA


EXAMPLE_LIMIT, EXAMPLE_ALPHA = 512, 0.3


@pytest.fixture(scope="session")
def example_hardened(tmp_path_factory) -> ExampleFiles:
    """(stats path, hardened path) of the shipped example, in a folder of their own that no test may
    change: files and folder are read-only, and since permissions do not bind every user (root), the
    fixture also checks at the end of the session that the folder holds the same two files, unchanged."""
    import mstransform as mst

    d = tmp_path_factory.mktemp("example")
    files = ExampleFiles(d / "stats.npz", d / "hard.onnx")
    stats = mst.calibrate(EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", limit=EXAMPLE_LIMIT, progress=False)
    stats.save(files.stats)
    mst.harden(EXAMPLE / "model.onnx", stats, alpha=EXAMPLE_ALPHA, output=files.hardened)
    for p in files:
        os.chmod(p, 0o444)
    os.chmod(d, 0o555)
    before, names = {p: p.read_bytes() for p in files}, sorted(os.listdir(d))
    yield files
    os.chmod(d, 0o755)  # pytest removes old temporary folders
    assert sorted(os.listdir(d)) == names, f"a test wrote into {d}: {sorted(set(os.listdir(d)) - set(names))}"
    assert [p.name for p in files if p.read_bytes() != before[p]] == [], "a test modified the shared example files"
