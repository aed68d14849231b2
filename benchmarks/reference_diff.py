"""Measured max |hardened ONNX - PyTorch reference| for every test model and export setting.

    python benchmarks/reference_diff.py

The reference is the PyTorch model with the paper's operator attached by hooks
(``tests/support/zoo.py``), the same comparison ``tests/e2e/test_numerics.py`` asserts within 1e-5;
this prints the actual differences, and each operator's difference from numpy.
"""
import contextlib
import io
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
import zoo  # noqa: E402
from helpers import EXPORTS, random_inputs  # noqa: E402

import mstransform as mst  # noqa: E402

ALPHA = 0.25


def main() -> None:
    logging.disable(logging.WARNING)
    worst = 0.0
    with tempfile.TemporaryDirectory() as d:
        for name in zoo.EXPECTED:
            for label, dynamo, opset, keep_bn in EXPORTS:
                src, out = f"{d}/{name}-{label}.onnx", f"{d}/{name}-{label}.hard.onnx"
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    zoo.export(zoo.build(name), name, src, dynamo=dynamo, opset=opset, keep_bn=keep_bn)
                stats = mst.calibrate(src, {"input": random_inputs(name, 64, seed=1)}, batch_size=16, progress=False)
                report = mst.harden(src, stats, alpha=ALPHA, output=out)
                x = random_inputs(name, 4, seed=7)
                got = ort.InferenceSession(out).run(None, {"input": x})[0]
                model = zoo.build(name)
                zoo.with_reference_operator(
                    model, name, [(s.moments.mean, ALPHA * np.sqrt(s.moments.var), s.axis) for s in stats.sites.values()])
                with torch.no_grad():
                    diff = float(np.abs(got - model(torch.from_numpy(x)).numpy()).max())
                worst = max(worst, diff)
                print(f"{name:10s} {label:17s} sites {len(report.sites)}  vs torch reference {diff:.2e}  "
                      f"operators vs numpy {report.max_abs_diff:g}")
    print(f"max over all: {worst:.3g}")


if __name__ == "__main__":
    main()
