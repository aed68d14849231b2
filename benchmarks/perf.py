"""Performance of hardening, measured side by side in one run (see README, *Performance*).

    python benchmarks/perf.py [--quick]

1. inference overhead: hardened / base latency in ONNX Runtime CPU (both formulations of the
   operator) and OpenVINO CPU (2 threads each, median of interleaved repeats of the same ONNX
   files) for ResNet-50 at 224 (batch 1 and 8), ViT-B/16 (batch 1) and the shipped example;
2. calibration: time for N images / plain ONNX Runtime inference over the same batches, end to
   end (load, session, every batch) and warm (both sessions made and run once, then each batch
   through both, alternating), and peak RSS for N and 4N images (separate processes);
3. transform: time and peak Python memory to harden a ~100M-parameter model (load and save
   excluded), and a >2 GB model with external data hardened and loaded in ONNX Runtime;
4. scale-out: calibration sharded over processes (``--shard`` + ``stats merge``) and with
   ``torchrun`` on gloo, against one process.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXAMPLE = REPO / "examples" / "fashion_mnist"
sys.path.insert(0, str(HERE))


def export(model, x, path):
    import torch

    logging.disable(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    return path


def session(path, threads=2):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def interleaved(sessions: dict, feed, runs: int, rounds: int = 3) -> dict[str, float]:
    for s in sessions.values():
        s.run(None, feed)
    times = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            for _ in range(runs):
                t0 = time.perf_counter()
                s.run(None, feed)
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def section_overhead(tmp: Path, quick: bool) -> list[str]:
    import torch
    from models import ResNet50, ViTB16, randomize_bn

    import mstransform as mst

    from mstransform.runtime.openvino_session import OpenVinoSession

    rows = ["| model | batch | ORT base ms | ORT hardened (where) | ratio | ORT hardened (float) | ratio | "
            "OpenVINO base ms | OpenVINO hardened (where) | ratio | sites |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    cases = [("ResNet-50 224", lambda: randomize_bn(ResNet50()), (3, 224, 224), [1, 8]),
             ("ViT-B/16 224", lambda: ViTB16().eval(), (3, 224, 224), [1]),
             ("example (Fashion-MNIST)", None, (1, 28, 28), [1, 64])]
    for label, build, shape, batches in cases:
        torch.manual_seed(0)
        if build is None:
            path = EXAMPLE / "model.onnx"
        else:
            path = export(build(), torch.randn(1, *shape), tmp / f"{label.split()[0].replace('/', '_')}.onnx")
        calib = np.random.default_rng(0).standard_normal((8, *shape)).astype(np.float32)
        stats = mst.calibrate(path, {"input": calib}, batch_size=4, progress=False)
        outs = {}
        for form in ("where", "float"):
            outs[form] = tmp / f"{path.stem}.{form}.onnx"
            mst.harden(path, stats, alpha=0.2, output=outs[form], formulation=form,
                       probe={"input": calib[:1]})
        for b in batches:
            feed = {"input": np.random.default_rng(1).standard_normal((b, *shape)).astype(np.float32)}
            runs = 3 if quick else (15 if b == 1 else 5)
            t = interleaved({"base": session(path), "where": session(outs["where"]),
                             "float": session(outs["float"]), "ov base": OpenVinoSession(path, threads=2),
                             "ov where": OpenVinoSession(outs["where"], threads=2)}, feed, runs)
            rows.append(f"| {label} | {b} | {1e3 * t['base']:.2f} | {1e3 * t['where']:.2f} | "
                        f"{t['where'] / t['base']:.3f}x | {1e3 * t['float']:.2f} | {t['float'] / t['base']:.3f}x | "
                        f"{1e3 * t['ov base']:.2f} | {1e3 * t['ov where']:.2f} | {t['ov where'] / t['ov base']:.3f}x | "
                        f"{len(stats)} |")
            print(rows[-1], flush=True)
    return rows


CAL_SCRIPT = """
import sys, time, numpy as np
import mstransform as mst
from mstransform.passes.sites.onnx_finder import find_sites
from mstransform.runtime.calibrate import ReducedRun, site_layout
from mstransform.runtime.data import DataSource
from mstransform.runtime.inputs import input_specs
from mstransform.runtime.session import make_session
model, data, n, bs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
# end to end, as a user sees it: load, session, every batch
t0 = time.perf_counter()
stats = mst.calibrate(model, data, batch_size=bs, limit=n, progress=False, threads=2)
t_cal = time.perf_counter() - t0
rss_cal = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))  # kB, this process only
t0 = time.perf_counter()
s = make_session(model, threads=2)
batches = [b.inputs for b in DataSource(data, input_specs(mst.load_model(model)), batch_size=bs, limit=n)]
for b in batches:
    s.run(None, b)
t_inf = time.perf_counter() - t0
# steady state: both sessions warm, then each batch through both, alternating (drift hits both alike)
m = mst.load_model(model)
table = find_sites(m)
run = ReducedRun(m, table, site_layout(m, table, batches[0]), threads=2, extent=False)  # as calibrate()
run.add(batches[0], 0)
plain, red = [], []
for b in batches:
    t0 = time.perf_counter(); s.run(None, b); plain.append(time.perf_counter() - t0)
    t0 = time.perf_counter(); run.add(b, 0); red.append(time.perf_counter() - t0)
t_plain, t_red = sum(plain), sum(red)
q1, q3 = np.quantile(np.array(red) / np.array(plain), [0.25, 0.75])
print(f"{t_cal} {t_inf} {rss_cal} {t_red / t_plain} {q1} {q3}")
"""


def section_calibration(tmp: Path, quick: bool, images: int = 256) -> list[str]:
    import torch
    from models import ResNet50, ViTB16, randomize_bn

    with np.load(EXAMPLE / "calib.npz") as z:
        base = z["input"]
    n = 2000 if quick else 4000
    data = tmp / "calib4n.npz"
    np.savez(data, input=np.concatenate([base] * (4 * n // len(base) + 1))[: 4 * n])
    rows = ["| model | images | batch | calibration s | plain inference s | ratio | warm ratio | warm, per batch (IQR) "
            "| peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|"]
    cases = [("example", EXAMPLE / "model.onnx", data, n, 64), ("example", EXAMPLE / "model.onnx", data, 4 * n, 64)]
    if not quick:
        img = tmp / "img224.npz"
        np.savez(img, input=np.random.default_rng(0).standard_normal((images, 3, 224, 224)).astype(np.float32))
        for label, build, count in (("ResNet-50 224", lambda: randomize_bn(ResNet50()), images),
                                    ("ViT-B/16 224", lambda: ViTB16().eval(), images // 4)):
            path = tmp / f"{label.split()[0].replace('/', '')}.onnx"
            if not path.exists():
                export(build(), torch.randn(1, 3, 224, 224), path)
            cases.append((label, path, img, count, 32))
    for label, model, source, count, bs in cases:
        out = subprocess.run([sys.executable, "-c", CAL_SCRIPT, str(model), str(source), str(count), str(bs)],
                             capture_output=True, text=True, check=True).stdout.split()
        t_cal, t_inf, rss, warm, q1, q3 = float(out[0]), float(out[1]), int(out[2]) / 1024, *map(float, out[3:6])
        rows.append(f"| {label} | {count} | {bs} | {t_cal:.2f} | {t_inf:.2f} | {t_cal / t_inf:.2f}x | {warm:.2f}x | "
                    f"{q1:.2f}-{q3:.2f}x | {rss:.0f} |")
        print(rows[-1], flush=True)
    return rows


def mlp_model(path: Path, layers: int, d: int, external: bool):
    """A Gemm/Relu stack built directly with onnx_ir (random weights)."""
    import onnx_ir as ir

    rng = np.random.default_rng(0)
    x = ir.Value(name="input", shape=ir.Shape(["batch", d]), type=ir.TensorType(ir.DataType.FLOAT))
    nodes, inits, cur = [], [], x
    for i in range(layers):
        w = ir.Value(name=f"w{i}", const_value=ir.tensor((rng.standard_normal((d, d), dtype=np.float32) / np.float32(np.sqrt(d))),
                                                         name=f"w{i}"))
        w.shape, w.type = ir.Shape([d, d]), ir.TensorType(ir.DataType.FLOAT)
        inits.append(w)
        gemm = ir.node("Gemm", [cur, w], name=f"fc{i}")
        relu = ir.node("Relu", [gemm.outputs[0]], name=f"relu{i}")
        gemm.outputs[0].name, relu.outputs[0].name = f"h{i}", f"a{i}"
        nodes += [gemm, relu]
        cur = relu.outputs[0]
    cur.shape, cur.type = ir.Shape(["batch", d]), ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph([x], [cur], nodes=nodes, initializers=inits, opset_imports={"": 17}, name="mlp")
    model = ir.Model(graph, ir_version=9)
    if external:
        ir.save(model, path, external_data=path.name + ".data")
    else:
        ir.save(model, path)
    return path, sum(int(np.prod(w.const_value.shape)) for w in inits)


def section_transform(tmp: Path, quick: bool) -> list[str]:
    import onnxruntime as ort

    import mstransform as mst
    from mstransform.tools.api import load_model

    rows = ["| model | params | size MB | transform s | transform peak MiB | peak / size |", "|---|---|---|---|---|---|"]
    path, params = mlp_model(tmp / "mlp100m.onnx", 10, 3136, external=False)
    x = np.random.default_rng(0).standard_normal((4, 3136)).astype(np.float32)
    stats = mst.calibrate(path, {"input": x}, progress=False)
    model = load_model(path)
    tracemalloc.start()
    t0 = time.perf_counter()
    mst.harden_model(model, stats, alpha=0.2)  # find sites, plan, insert: the whole pass manager
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    size = path.stat().st_size
    rows.append(f"| MLP 10x3136^2 | {params / 1e6:.0f}M | {size / 1e6:.0f} | {dt:.3f} | {peak / 2**20:.1f} | "
                f"{peak / size:.3f}x |")
    print(rows[-1], flush=True)
    if not quick:
        big, bparams = mlp_model(tmp / "big.onnx", 22, 5120, external=True)
        xb = np.random.default_rng(0).standard_normal((2, 5120)).astype(np.float32)
        t0 = time.perf_counter()
        bstats = mst.calibrate(big, {"input": xb}, progress=False)
        out = tmp / "big.hard.onnx"
        rep = mst.harden(big, bstats, alpha=0.2, output=out, probe={"input": xb})
        total = time.perf_counter() - t0
        data = out.parent / (out.name + ".data")
        s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        y = s.run(None, {"input": xb})[0]
        rows.append(f"| MLP 22x5120^2, external data | {bparams / 1e6:.0f}M | {data.stat().st_size / 1e6:.0f} | "
                    f"(calibrate+harden+save+verify {total:.1f} s) | - | - |")
        rows.append(f"|  > 2 GB check | hardened {len(rep.sites)} sites, max diff vs numpy {rep.max_abs_diff:g}, "
                    f"ORT output {tuple(y.shape)} | | | | |")
        print(rows[-2], rows[-1], sep="\n", flush=True)
    return rows


def section_scaleout(tmp: Path, quick: bool) -> list[str]:
    import mstransform as mst
    from mstransform.core.stats import Stats

    with np.load(EXAMPLE / "calib.npz") as z:
        base = z["input"]
    n = 4000 if quick else 32000
    data = tmp / "scale.npz"
    np.savez(data, input=np.concatenate([base] * (n // len(base) + 1))[:n])
    model = str(EXAMPLE / "model.onnx")
    cli = [sys.executable, "-m", "mstransform", "--threads", "1", "calibrate", model, "--data", str(data)]
    rows = ["| processes | method | wall s | max rel diff vs 1 process |", "|---|---|---|---|"]
    t0 = time.perf_counter()
    subprocess.run([*cli, "-o", str(tmp / "one.npz")], check=True, capture_output=True)
    rows.append(f"| 1 | single process | {time.perf_counter() - t0:.2f} | 0 |")
    one = Stats.load(tmp / "one.npz")

    def diff(other: Stats) -> float:
        d = 0.0
        for k, s in one.sites.items():
            o = other.sites[k].moments
            d = max(d, float(np.max(np.abs(o.mean - s.moments.mean) / (np.abs(s.moments.mean) + 1e-30))),
                    float(np.max(np.abs(o.var - s.moments.var) / s.moments.var.clip(1e-30))))
        return d

    t0 = time.perf_counter()
    procs = [subprocess.Popen([*cli, "--shard", f"{i}/2", "-o", str(tmp / f"s{i}.npz")], stdout=subprocess.DEVNULL)
             for i in range(2)]
    for p in procs:
        assert p.wait() == 0
    subprocess.run([sys.executable, "-m", "mstransform", "stats", "merge", str(tmp / "s0.npz"),
                    str(tmp / "s1.npz"), "-o", str(tmp / "merged.npz")], check=True, capture_output=True)
    rows.append(f"| 2 | --shard + stats merge | {time.perf_counter() - t0:.2f} | {diff(Stats.load(tmp / 'merged.npz')):.1e} |")
    torchrun = Path(sys.executable).parent / "torchrun"
    t0 = time.perf_counter()
    r = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", "29531", "-m", *cli[2:],
                        "-o", str(tmp / "dist.npz")],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode == 0:
        rows.append(f"| 2 | torchrun (gloo) | {time.perf_counter() - t0:.2f} | {diff(Stats.load(tmp / 'dist.npz')):.1e} |")
    else:
        rows.append(f"| 2 | torchrun (gloo) | failed: {r.stderr.strip().splitlines()[-1][:80]} | |")
    for row in rows[2:]:
        print(row, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes")
    ap.add_argument("--only", choices=["overhead", "calibration", "transform", "scaleout"])
    ap.add_argument("--images", type=int, default=256,
                    help="calibration: ResNet-50 images (ViT-B/16 gets a quarter); 1024 for the at-scale rows")
    a = ap.parse_args()
    import onnxruntime

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; onnxruntime "
          f"{onnxruntime.__version__} CPU, 2 intra-op threads; python {platform.python_version()}")
    sections = {"overhead": section_overhead, "calibration": section_calibration,
                "transform": section_transform, "scaleout": section_scaleout}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for name, fn in sections.items():
            if a.only and name != a.only:
                continue
            print(f"\n## {name}")
            rows = fn(Path(d), a.quick, a.images) if name == "calibration" else fn(Path(d), a.quick)
            print("\n".join(rows[:2]))
    print(f"\nbench wall time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
