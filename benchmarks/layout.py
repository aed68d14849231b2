"""What the CPU runtimes make of a hardened model: layout conversions, unfused kernels, latency.

    python benchmarks/layout.py [--quick] [--models resnet50,mobilenet,vit,example]
                                [--runtimes openvino,onnxruntime] [--formulations where,bounds,float]

Per model, formulation and runtime, base vs hardened, in one run (docs/cpu-layout.md):

* OpenVINO CPU, f32, 2 threads, compiled two ways: ``dynamic`` (the file as it is, batch axis
  dynamic: what ``OpenVinoSession`` does) and ``static`` (reshaped to the feed's shape before
  compiling). Counted from ``compiled.get_runtime_model()`` (each layer's ``layerType`` rt_info):
  ``Reorder`` on activations (input not a constant: executed every inference), ``Reorder`` of
  constants (OpenVINO runs constant nodes once, at compile: docs/cpu-layout.md),
  stand-alone ``Eltwise`` and ``Subgraph`` (Snippets) kernels, and how many operator nodes were
  fused into a ``Convolution`` (its ``originalLayersNames``).
* ONNX Runtime CPU, ORT_ENABLE_ALL, 2 intra-op threads: counted from the optimized graph it
  writes (``optimized_model_filepath``): ``ReorderInput``/``ReorderOutput`` (NCHWc), Conv nodes
  with a fused activation, nodes in all.

Latency: base and hardened ms are medians of interleaved rounds (every file once per round, the
order rotated), the ratio is the median over rounds of hardened / base within the round.
Models have random weights and BatchNorm folded at export; statistics from a few random images.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mstransform.runtime.openvino_session import layer_counts

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
EXAMPLE = HERE.parent / "examples" / "fashion_mnist" / "model.onnx"
FORMULATIONS = ("where", "bounds", "float")


def mobilenet_v2():
    """MobileNetV2 layout (inverted residuals, depthwise 3x3, ReLU6; 35 activation sites), by hand."""
    import torch.nn as nn

    def cbr(cin, cout, k=1, s=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return layers + ([nn.ReLU6()] if act else [])

    class Inverted(nn.Module):
        def __init__(self, cin, cout, s, t):
            super().__init__()
            hid = cin * t
            self.res = s == 1 and cin == cout
            layers = (cbr(cin, hid) if t != 1 else []) + cbr(hid, hid, 3, s, hid) + cbr(hid, cout, act=False)
            self.body = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.body(x) if self.res else self.body(x)

    class MobileNetV2(nn.Module):
        def __init__(self, classes=1000):
            super().__init__()
            cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                   (6, 320, 1, 1)]
            layers, cin = cbr(3, 32, 3, 2), 32
            for t, c, n, s in cfg:
                for i in range(n):
                    layers.append(Inverted(cin, c, s if i == 0 else 1, t))
                    cin = c
            layers += cbr(cin, 1280)
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(1280, classes)

        def forward(self, x):
            return self.fc(self.features(x).mean((2, 3)))

    return MobileNetV2()


def build(name: str, tmp: Path) -> tuple[Path, tuple[int, ...]]:
    import torch
    from models import ResNet50, ViTB16, randomize_bn
    from perf import export

    if name == "example":
        return EXAMPLE, (1, 28, 28)
    torch.manual_seed(0)
    model = {"resnet50": lambda: randomize_bn(ResNet50()), "mobilenet": lambda: randomize_bn(mobilenet_v2()),
             "vit": lambda: ViTB16().eval()}[name]()
    return export(model, torch.randn(1, 3, 224, 224), tmp / f"{name}.onnx"), (3, 224, 224)


def harden_all(path: Path, shape, formulations, tmp: Path) -> tuple[dict[str, Path], int]:
    import mstransform as mst

    calib = np.random.default_rng(0).standard_normal((8, *shape)).astype(np.float32)
    stats = mst.calibrate(path, {"input": calib}, batch_size=4, progress=False)
    out = {}
    for form in formulations:
        out[form] = tmp / f"{path.stem}.{form}.onnx"
        mst.harden(path, stats, alpha=0.2, output=out[form], formulation=form, probe={"input": calib[:1]})
    return out, len(stats)


# ---------------------------------------------------------------- OpenVINO

def ov_compile(path: Path, shape=None, threads: int = 2):
    """Compiled model; ``shape`` reshapes the input to it first (static), else the file's shapes."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    if shape is not None:
        model.reshape({model.inputs[0].get_any_name(): list(shape)})
    return core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})


def ov_counts(compiled) -> collections.Counter:
    """Layer types of OpenVINO's runtime model; reorders split into activation / constant ones."""
    counts = layer_counts(compiled)
    counts["op fused in conv"] = counts.pop("fused", 0)
    return counts


def ov_runner(compiled, feed):
    request = compiled.create_infer_request()
    x = feed["input"]
    return lambda: request.infer({0: x})


# ---------------------------------------------------------------- ONNX Runtime

def ort_session(path: Path, optimized: Path | None = None, threads: int = 2):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
    o.log_severity_level = 3
    if optimized is not None:
        o.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def ort_counts(path: Path, tmp: Path) -> collections.Counter:
    import onnx

    opt = tmp / (path.stem + ".ort-optimized.onnx")
    ort_session(path, opt)
    graph = onnx.load(str(opt), load_external_data=False).graph
    counts = collections.Counter(nodes=len(graph.node))
    for n in graph.node:
        if n.op_type in ("ReorderInput", "ReorderOutput"):
            counts["Reorder"] += 1
        if any(a.name == "activation" for a in n.attribute):
            counts["conv+activation"] += 1
    return counts


def interleaved(runners: dict, rounds: int, key: str = "base") -> tuple[dict[str, float], dict[str, float]]:
    """Median ms per runner, and the median over rounds of each runner's time / ``key``'s time in
    that round. Each round runs every runner once, in an order rotated per round, so load that
    drifts on a shared machine hits all alike; the per-round ratio pairs runs taken moments apart."""
    for r in runners.values():
        r()
    names = list(runners)
    times = {k: [] for k in names}
    for i in range(rounds):
        for k in names[i % len(names):] + names[:i % len(names)]:
            t0 = time.perf_counter()
            runners[k]()
            times[k].append(time.perf_counter() - t0)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    ratio = {k: statistics.median(a / b for a, b in zip(times[k], times[key])) for k in names}
    return ms, ratio


OV_COLS = ("Reorder", "Reorder(const)", "Eltwise", "Subgraph", "op fused in conv")
ORT_COLS = ("Reorder", "conv+activation", "nodes")


def fmt(base: collections.Counter, hard: collections.Counter, cols) -> str:
    return " | ".join(f"{base[c]} -> {hard[c]}" for c in cols)


def run_model(name: str, a, tmp: Path) -> list[str]:
    path, shape = build(name, tmp)
    hardened, sites = harden_all(path, shape, a.formulations, tmp)
    files = {"base": path, **hardened}
    rows = []
    batches = a.batches or ([1, 64] if name == "example" else [1, 8])
    for batch in batches:
        feed = {"input": np.random.default_rng(1).standard_normal((batch, *shape)).astype(np.float32)}
        rounds = 3 if a.quick else (a.rounds or (40 if batch == 1 else 12))
        if "openvino" in a.runtimes:
            for mode in ("dynamic", "static"):
                compiled = {k: ov_compile(p, (batch, *shape) if mode == "static" else None) for k, p in files.items()}
                counts = {k: ov_counts(c) for k, c in compiled.items()}
                t, ratio = interleaved({k: ov_runner(c, feed) for k, c in compiled.items()}, rounds)
                for form in a.formulations:
                    rows.append(f"| OpenVINO {mode} | {name} | {batch} | {form} | {t['base']:.2f} | {t[form]:.2f} | "
                                f"{ratio[form]:.3f}x | {fmt(counts['base'], counts[form], OV_COLS)} | {sites} |")
                    print(rows[-1], flush=True)
                del compiled
        if "onnxruntime" in a.runtimes:
            counts = {k: ort_counts(p, tmp) for k, p in files.items()}
            sessions = {k: ort_session(p) for k, p in files.items()}
            t, ratio = interleaved({k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}, rounds)
            for form in a.formulations:
                rows.append(f"| ONNX Runtime | {name} | {batch} | {form} | {t['base']:.2f} | {t[form]:.2f} | "
                            f"{ratio[form]:.3f}x | {fmt(counts['base'], counts[form], ORT_COLS)} | {sites} |")
                print(rows[-1], flush=True)
            del sessions
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run; ratios are noise)")
    ap.add_argument("--models", default="resnet50,mobilenet,vit,example")
    ap.add_argument("--runtimes", default="openvino,onnxruntime")
    ap.add_argument("--formulations", default=",".join(FORMULATIONS))
    ap.add_argument("--batches", default="", help="comma-separated; default 1,8 (example: 1,64)")
    ap.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default 40 at batch 1, 12 above)")
    a = ap.parse_args()
    a.models, a.runtimes = a.models.split(","), a.runtimes.split(",")
    a.formulations = a.formulations.split(",")
    a.batches = [int(b) for b in a.batches.split(",") if b]
    import onnxruntime
    import openvino

    logging.disable(logging.WARNING)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared: ratios move "
          f"+-10% between runs); OpenVINO {openvino.get_version().split('-')[0]} CPU and ONNX Runtime "
          f"{onnxruntime.__version__} CPU, f32, 2 threads; medians of interleaved rounds, ratio = median of "
          "per-round hardened/base")
    print("counts are base -> hardened. OpenVINO: Reorder (activations) | Reorder (constants, run once) | Eltwise | "
          "Subgraph | operator nodes fused in a Convolution. ONNX Runtime: ReorderInput+ReorderOutput | "
          "Conv with fused activation | nodes")
    print("| runtime | model | batch | formulation | base ms | hardened ms | ratio | counts | sites |")
    print("|---|---|---|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for name in a.models:
            with contextlib.redirect_stderr(io.StringIO()):
                run_model(name, a, Path(d))
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
