"""AOTInductor packages on CPU: hardened vs base latency of the same model, side by side.

    python benchmarks/aoti_overhead.py [--batch 8] [--runs 20]

ResNet-50 (224, random weights, 49 sites) is calibrated on random images, hardened with
``mst.package_torch`` and packaged; the base model is packaged the same way. Both packages are
loaded in this process and timed alternately (median of ``--runs``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from models import ResNet50, randomize_bn  # noqa: E402

import mstransform as mst  # noqa: E402
from mstransform.deploy.aoti import load_package, package_module  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = randomize_bn(ResNet50()).eval()
    example = (torch.randn(2, 3, 224, 224),)
    stats = mst.calibrate(model, torch.randn(32, 3, 224, 224), batch_size=16,
                          progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        base = load_package(package_module(model, example, Path(tmp) / "base.pt2"))
        t_base = time.perf_counter() - t0
        t0 = time.perf_counter()
        hard = load_package(mst.package_torch(model, stats, example, Path(tmp) / "hard.pt2", alpha=0.2))
        t_hard = time.perf_counter() - t0
        x = torch.randn(a.batch, 3, 224, 224)
        times = {"base": [], "hard": []}
        with torch.no_grad():
            for f in (base, hard):
                f(x)
            for _ in range(a.runs):
                for k, f in (("base", base), ("hard", hard)):
                    t0 = time.perf_counter()
                    f(x)
                    times[k].append(time.perf_counter() - t0)
    b, h = statistics.median(times["base"]), statistics.median(times["hard"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; package build {t_base:.0f} s base, "
          f"{t_hard:.0f} s hardened")
    print("| model | batch | AOTI base ms | AOTI hardened ms | ratio | sites |")
    print("|---|---|---|---|---|---|")
    print(f"| ResNet-50 224 | {a.batch} | {1e3 * b:.2f} | {1e3 * h:.2f} | {h / b:.3f}x | {len(stats)} |")


if __name__ == "__main__":
    main()
