"""Cheaper graphs for the sparsify operator in ONNX Runtime? Two attempts, measured side by side.

    python benchmarks/ort_variants.py      # about a minute

* ``bounds``: ``And(Greater(x, c - t), Less(x, c + t))`` instead of ``Less(Abs(Sub(x, c)), t)``
  (3 comparisons on x, constants folded). Not adopted: in floating point the two masks differ on
  values at the band's edge, so outputs are not provably equal (the max difference is printed).
* ``ORT_ENABLE_EXTENDED``: the same graphs without ORT's blocked-layout (NCHWc) transformer.

ResNet-50 at 224x224, batch 1, 2 intra-op threads, median of interleaved repeats.
"""
from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).parent))
from models import ResNet50, randomize_bn  # noqa: E402
from perf import export  # noqa: E402

import mstransform as mst  # noqa: E402


def to_bounds(src: Path, dst: Path) -> None:
    m = ir.load(src)
    g = m.graph
    by_name = {n.name: n for n in g}
    for node in list(g):
        if not (node.name.startswith("mstransform/") and node.name.endswith("/Less")):
            continue
        prefix = node.name[: -len("/Less")]
        sub, ab = by_name[prefix + "/Sub"], by_name[prefix + "/Abs"]
        x, c = sub.inputs
        cn, tn = c.const_value.numpy(), node.inputs[1].const_value.numpy()
        lo = ir.Value(name=prefix + "/lo", const_value=ir.tensor(cn - tn))
        hi = ir.Value(name=prefix + "/hi", const_value=ir.tensor(cn + tn))
        g.register_initializer(lo)
        g.register_initializer(hi)
        gt = ir.node("Greater", [x, lo], name=prefix + "/Gt")
        lt = ir.node("Less", [x, hi], name=prefix + "/Lt")
        both = ir.node("And", [gt.outputs[0], lt.outputs[0]], name=prefix + "/And")
        g.insert_before(node, [gt, lt, both])
        node.outputs[0].replace_all_uses_with(both.outputs[0])
        thr = node.inputs[1]
        g.remove([node, ab, sub], safe=True)
        g.initializers.pop(thr.name, None)
    ir.save(m, dst)


def session(path: Path, level) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = 2, 1
    o.graph_optimization_level = level
    o.log_severity_level = 3
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        base = export(randomize_bn(ResNet50()), torch.randn(1, 3, 224, 224), d / "r50.onnx")
        x = np.random.default_rng(0).standard_normal((16, 3, 224, 224)).astype(np.float32)
        stats = mst.calibrate(base, {"input": x}, batch_size=4, progress=False)
        mst.harden(base, stats, alpha=0.2, output=d / "where.onnx", probe={"input": x[:1]})
        to_bounds(d / "where.onnx", d / "bounds.onnx")
        paths = {"base": base, "where": d / "where.onnx", "bounds": d / "bounds.onnx"}
        feed = {"input": x[:1]}
        for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED):
            sessions = {k: session(p, level) for k, p in paths.items()}
            times = {k: [] for k in sessions}
            for s in sessions.values():
                s.run(None, feed)
            for _ in range(3):
                for k, s in sessions.items():
                    for _ in range(10):
                        t0 = time.perf_counter()
                        s.run(None, feed)
                        times[k].append(time.perf_counter() - t0)
            med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
            print(f"{level.name:22s} " + "  ".join(f"{k} {v:.1f} ms ({v / med['base']:.2f}x)" for k, v in med.items()))
        with contextlib.suppress(Exception):
            lvl = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            a = session(paths["where"], lvl).run(None, {"input": x[:4]})[0]
            b = session(paths["bounds"], lvl).run(None, {"input": x[:4]})[0]
            print(f"bounds vs where: max |output difference| = {float(np.abs(a - b).max()):.3g} (not equal: not adopted)")


if __name__ == "__main__":
    main()
