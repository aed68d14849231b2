"""Dataset-scale speed, measured side by side in one run (docs/robustness.md, docs/performance.md).

    python benchmarks/scale.py [--only attack|calibration|floor] [--rounds 3] [--device cpu|cuda]

1. attack: APGD-CE images per second on the twin (the torch interpreter of the exported ONNX
   graph, what ``eval`` attacks) against the same attack on the native torch model it was exported
   from, for a ResNet-style and a ViT-style network; also against the native model with its
   BatchNorms folded into the convolutions, as the export folds them (the same arithmetic as the
   twin). Labels are the model's own predictions, so every image is attacked for every iteration.
   Rounds alternate which side runs first; the ratio is twin time / native time per round, and the
   median over rounds is printed (target <= 1.2x), in wall time and in this process's CPU time (less
   moved by other jobs on a shared machine). ``--compile`` adds the twin under ``torch.compile``.
2. calibration: ``mstransform.calibrate`` end to end (load, session, every batch) against plain
   ONNX Runtime inference over the same images and batches (a session made from the file, every
   batch run), each in a fresh process, rounds alternating which runs first; median ratio (target
   <= 1.10x), and the calibrating process's peak RSS at half and all the images (flat in N).
3. floor: the least any in-graph calibration can cost on ResNet-50: every site also read by one
   per-channel mean (and by sums of x and x*x), per batch against plain inference, in one process.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def machine() -> str:
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "; no GPU"
    return (f"machine: {cpu}, {os.cpu_count()} cores{gpu}; python {platform.python_version()}, torch "
            f"{torch.__version__}, onnxruntime {onnxruntime.__version__}")


def attack_models():
    import torch
    from models import ResNet50, ViTB16, randomize_bn

    torch.manual_seed(0)
    return [("ResNet-style (bottlenecks 1-1-1-1, 64x64)", randomize_bn(ResNet50(classes=10, blocks=(1, 1, 1, 1)))),
            ("ViT-style (4 blocks, width 192, 64x64, patch 8)",
             ViTB16(depth=4, d=192, heads=3, classes=10, image=64, patch=8).eval())]


def folded(model):
    """A copy of ``model`` with each Conv2d+BatchNorm2d pair folded (what the ONNX export does)."""
    import copy

    import torch.nn as nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model)
    for parent in model.modules():
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                parent._modules[a], parent._modules[b] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    return model


def apgd_seconds(model, x, y, iters: int, device: str) -> tuple[float, float]:
    """Wall and CPU seconds (this process's, all threads) of one APGD-CE run."""
    import torch
    from pyautoattack.autopgd_base import APGDAttack

    atk = APGDAttack(model, n_iter=iters, norm="Linf", eps=8 / 255, seed=0, loss="ce", device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    atk.perturb(x, y)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def section_attack(tmp: Path, a) -> list[str]:
    import torch

    from perf import export

    from mstransform.robustness.twin import OnnxTwin

    torch.set_num_threads(a.threads)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # as eval runs the twin
    rows = ["| model | device | batch | APGD-CE iters | native img/s | native, BN folded img/s | twin img/s | "
            "twin / native | per round | twin / native, CPU time | twin / folded |"
            + (" compiled twin img/s | compiled / native |" if a.compile else ""),
            "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if a.compile else "")]
    print("\n".join(rows), flush=True)
    for label, model in attack_models():
        path = export(model, torch.randn(1, 3, 64, 64), tmp / "m.onnx")
        sides = {"native": model, "folded": folded(model), "twin": OnnxTwin(path).eval()}
        if a.compile:
            sides["compiled"] = torch.compile(OnnxTwin(path).eval())
        sides = {k: m.to(a.device) for k, m in sides.items()}
        x = torch.rand(a.batch, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(a.device)
        with torch.no_grad():
            y = sides["native"](x).argmax(1)
            assert torch.equal(sides["twin"](x).argmax(1), y), "the twin predicts other classes than the model"
        for m in sides.values():  # warm-up (and, for the compiled twin, compilation)
            apgd_seconds(m, x, y, 2, a.device)
        times, cpu = {k: [] for k in sides}, {k: [] for k in sides}
        for r in range(a.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for k in order:
                wall, used = apgd_seconds(sides[k], x, y, a.iters, a.device)
                times[k].append(wall)
                cpu[k].append(used)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = statistics.median(t / n for t, n in zip(times["twin"], times["native"]))
        ratio_f = statistics.median(t / n for t, n in zip(times["twin"], times["folded"]))
        row = (f"| {label} | {a.device} | {a.batch} | {a.iters} | {a.batch / med['native']:.1f} | "
               f"{a.batch / med['folded']:.1f} | {a.batch / med['twin']:.1f} | {ratio:.2f}x | "
               + ", ".join(f"{t / n:.2f}" for t, n in zip(times["twin"], times["native"]))
               + f" | {statistics.median(t / n for t, n in zip(cpu['twin'], cpu['native'])):.2f}x | {ratio_f:.2f}x |")
        if a.compile:
            ratio_c = statistics.median(t / n for t, n in zip(times["compiled"], times["native"]))
            row += f" {a.batch / med['compiled']:.1f} | {ratio_c:.2f}x |"
        rows.append(row)
        print(row, flush=True)
    return rows


CAL = """
import sys, time
t0 = time.perf_counter()
import mstransform as mst
mode, model, data, n, bs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if mode == "calibrate":
    mst.calibrate(model, data, batch_size=bs, limit=n, progress=False, threads=2)
else:
    from mstransform.runtime.data import DataSource
    from mstransform.runtime.inputs import input_specs
    from mstransform.runtime.session import make_session
    s = make_session(model, threads=2, providers=["CPUExecutionProvider"])
    for b in DataSource(data, input_specs(mst.load_model(model)), batch_size=bs, limit=n):
        s.run(None, b.inputs)
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(time.perf_counter() - t0, rss)
"""


def _timed(mode, model, data, n, bs) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", CAL, mode, str(model), str(data), str(n), str(bs)],
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), int(out[1]) / 1024


def section_calibration(tmp: Path, a) -> list[str]:
    import torch
    from models import ResNet50, randomize_bn
    from perf import export

    torch.manual_seed(0)
    model = export(randomize_bn(ResNet50()), torch.randn(1, 3, 224, 224), tmp / "resnet50.onnx")
    data = tmp / "img224.npz"
    np.savez(data, input=np.random.default_rng(0).random((a.images, 3, 224, 224), dtype=np.float32))
    times = {"calibrate": [], "infer": []}
    rss = {}
    for r in range(a.rounds):
        for mode in (("calibrate", "infer") if r % 2 == 0 else ("infer", "calibrate")):
            t, peak = _timed(mode, model, data, a.images, 32)
            times[mode].append(t)
            rss[mode] = max(rss.get(mode, 0), peak)
    _, half = _timed("calibrate", model, data, a.images // 2, 32)
    print(f"ResNet-50 224, {a.images} images, batch 32, ONNX Runtime CPU, 2 threads, {a.rounds} rounds", flush=True)
    ratio = statistics.median(c / i for c, i in zip(times["calibrate"], times["infer"]))
    rows = ["| model | images | batch | calibration s | plain inference s | ratio (median of rounds) | per round | "
            f"peak RSS MiB, calibration at {a.images // 2} / {a.images} images | plain inference peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| ResNet-50 224 | {a.images} | 32 | {statistics.median(times['calibrate']):.2f} | "
            f"{statistics.median(times['infer']):.2f} | {ratio:.3f}x | "
            + ", ".join(f"{c / i:.2f}" for c, i in zip(times["calibrate"], times["infer"]))
            + f" | {half:.0f} / {rss['calibrate']:.0f} | {rss['infer']:.0f} |"]
    print("\n".join(rows), flush=True)
    return rows


def section_floor(tmp: Path, a) -> list[str]:
    """What any in-graph calibration must cost on ResNet-50 in ONNX Runtime CPU: the same network with
    every site (each Relu's input) also read by one GlobalAveragePool (a per-channel mean: the least a
    reduction can read, in the blocked layout) and by GlobalAveragePool of its square (sums without a
    shift), against plain inference; per-batch times in one process, interleaved, medians."""
    import onnx
    import onnxruntime as ort
    import torch
    from models import ResNet50, randomize_bn
    from perf import export, session

    torch.manual_seed(0)
    base = export(randomize_bn(ResNet50()), torch.randn(1, 3, 224, 224), tmp / "resnet50-floor.onnx")
    feeds = [n.input[0] for n in onnx.load(str(base)).graph.node if n.op_type == "Relu"]

    def reading(kind: str) -> Path:
        m = onnx.load(str(base))
        for i, x in enumerate(feeds):
            m.graph.node.append(onnx.helper.make_node("GlobalAveragePool", [x], [f"mean{i}"]))
            m.graph.output.append(onnx.helper.make_tensor_value_info(f"mean{i}", onnx.TensorProto.FLOAT, None))
            if kind == "sums":
                m.graph.node.append(onnx.helper.make_node("Mul", [x, x], [f"sq{i}"]))
                m.graph.node.append(onnx.helper.make_node("GlobalAveragePool", [f"sq{i}"], [f"msq{i}"]))
                m.graph.output.append(onnx.helper.make_tensor_value_info(f"msq{i}", onnx.TensorProto.FLOAT, None))
        onnx.save(m, str(tmp / f"{kind}.onnx"))
        return tmp / f"{kind}.onnx"

    sessions = {"plain": session(base), "mean only": session(reading("mean")), "sum and sum of squares":
                session(reading("sums"))}
    x = {"input": np.random.default_rng(0).random((32, 3, 224, 224), dtype=np.float32)}
    for s in sessions.values():
        s.run(None, x)
    times = {k: [] for k in sessions}
    for r in range(a.rounds * 4):
        for k in (list(sessions) if r % 2 == 0 else list(sessions)[::-1]):
            t = time.perf_counter()
            sessions[k].run(None, x)
            times[k].append(time.perf_counter() - t)
    print(f"ResNet-50 224, {len(feeds)} sites, batch 32, ONNX Runtime {ort.__version__} CPU, 2 threads, "
          f"{len(times['plain'])} interleaved runs", flush=True)
    rows = ["| graph | s per batch (median) | ratio to plain (median of runs) | runs' ratios, min-max |", "|---|---|---|---|"]
    for k, v in times.items():
        ratios = [t / p for t, p in zip(v, times["plain"])]
        rows.append(f"| {k} | {statistics.median(v):.3f} | {statistics.median(ratios):.3f}x | "
                    f"{min(ratios):.2f}-{max(ratios):.2f} |")
    print("\n".join(rows), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["attack", "calibration", "floor"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="attack section only")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (attack section)")
    ap.add_argument("--batch", type=int, default=32, help="attack batch")
    ap.add_argument("--iters", type=int, default=5, help="APGD-CE iterations")
    ap.add_argument("--compile", action="store_true", help="also the twin under torch.compile")
    ap.add_argument("--images", type=int, default=512, help="calibration images (ResNet-50 224)")
    a = ap.parse_args()
    print(machine(), flush=True)
    print(f"command: python benchmarks/scale.py {' '.join(sys.argv[1:])}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for name, fn in (("attack", section_attack), ("calibration", section_calibration), ("floor", section_floor)):
            if a.only and name != a.only:
                continue
            print(f"\n## {name}", flush=True)
            fn(Path(d), a)
    print(f"\nbench wall time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
