"""FX path on a device: calibration vs plain inference, and hardened vs base (eager and compiled),
measured side by side in one run over the same images and batch size.

    python benchmarks/fx_device.py --device cuda --images 512 --batch 64
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from models import ResNet50, ViTB16, randomize_bn  # noqa: E402

import mstransform as mst  # noqa: E402


def timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--models", default="resnet50,vit")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="e.g. float32 alone on a CPU, where bf16 is slow")
    a = ap.parse_args()
    print(f"device {a.device} ({torch.cuda.get_device_name() if a.device == 'cuda' else 'cpu'}), torch {torch.__version__}, "
          f"{a.images} images, batch {a.batch}")
    for name in a.models.split(","):
        for dtype in (getattr(torch, t) for t in a.dtypes.split(",")):
            model = (randomize_bn(ResNet50()) if name == "resnet50" else ViTB16()).eval().to(a.device, dtype)
            data = torch.randn(a.images, 3, 224, 224, device=a.device, dtype=dtype)
            batches = list(data.split(a.batch))
            ep = torch.export.export(model, (batches[0],))

            def infer(m=model):
                with torch.no_grad():
                    for x in batches:
                        m(x)

            holder = {}

            def calib():
                holder["stats"] = mst.calibrate(ep, batches, progress=False)

            t_inf, t_cal = timed(infer), timed(calib, repeat=2)
            hard = mst.harden_torch(ep, holder["stats"], alpha=0.2)
            base_c, hard_c = torch.compile(ep.module()), torch.compile(hard)
            t_hard = timed(lambda: infer(hard))
            t_base_c, t_hard_c = timed(lambda: infer(base_c)), timed(lambda: infer(hard_c))
            print(f"{name:9s} {str(dtype)[6:]:9s} sites {len(holder['stats']):3d}  calibration/inference "
                  f"{t_cal / t_inf:5.2f}x ({t_cal:.3f} s vs {t_inf:.3f} s)  eager hardened/base {t_hard / t_inf:5.2f}x  "
                  f"compiled hardened/base {t_hard_c / t_base_c:5.3f}x ({t_hard_c * 1e3:.1f} vs {t_base_c * 1e3:.1f} ms)",
                  flush=True)


if __name__ == "__main__":
    main()
