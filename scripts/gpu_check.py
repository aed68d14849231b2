"""The GPU checks in one call, for whoever holds a CUDA machine; prints one table.

    python scripts/gpu_check.py [--quick] [--images N]

Installs nothing from outside the machine and reaches nothing outside it: it runs what is there (the
project, installed from this checkout with ``pip --no-index --no-deps`` where it is not installed yet, torch with CUDA, onnxruntime and, where present,
onnxruntime-gpu; docs/deployment.md says how to bring the latter). In order:

1. the CUDA tests (``tests/unit/runtime/test_fx_calibrate.py``, in a subprocess);
2. the FX path on CUDA: ResNet-50 (``benchmarks/models.py``, 49 sites) calibrated on the device and
   hardened, its output against the base model's;
3. hardened / base latency in eager mode and under ``torch.compile`` (Inductor), batch 1 and 64;
4. ONNX Runtime's CUDA provider, where this onnxruntime build has it: ``mst.bench`` on the exported
   ResNet-50 pair (batch 1 and 64);
5. calibration time over plain inference time on the same images: the FX path and (with the CUDA
   provider) the ONNX path.

Each step that fails is a row saying why; the others still run. Without CUDA it prints one line,
``gpu_check: no CUDA here ...``, and exits 0. ``--quick`` uses ResNet-50 at 64x64, 64 images and
fewer rounds (a smoke run of the script itself).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str]] = []

    def add(self, check: str, result: str, detail: str = "") -> None:
        self.rows.append((check, result, detail))
        print(f"  {check}: {result} {detail}".rstrip(), file=sys.stderr, flush=True)

    def step(self, check: str):
        """A context that records a failure of the step as its row, and lets the next step run."""
        table = self

        class _Step(contextlib.AbstractContextManager):
            def __exit__(self, kind, value, tb):
                if value is not None and not isinstance(value, KeyboardInterrupt):
                    table.add(check, "FAILED", f"{type(value).__name__}: {_first_line(value)}")
                    return True
                return False

        return _Step()

    def format(self) -> str:
        lines = ["| check | result | detail |", "|---|---|---|"]
        return "\n".join(lines + [f"| {c} | {r} | {d} |" for c, r, d in self.rows])


def timed_pair(base, hardened, x, *, rounds: int, runs: int, sync) -> tuple[float, float]:
    """Median seconds of ``base(x)`` and ``hardened(x)``: warm-up, then interleaved rounds, order alternating."""
    import torch

    with torch.no_grad():
        for f in (base, hardened):
            for _ in range(3):
                f(x)
        sync()
        times = {0: [], 1: []}
        for r in range(rounds):
            for k in ((0, 1) if r % 2 == 0 else (1, 0)):
                f = (base, hardened)[k]
                for _ in range(runs):
                    t0 = time.perf_counter()
                    f(x)
                    sync()
                    times[k].append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def run_tests(table: Table) -> None:
    with table.step("CUDA tests (tests/unit/runtime/test_fx_calibrate.py)"):
        r = subprocess.run([sys.executable, "-m", "pytest", str(REPO / "tests" / "unit" / "runtime" / "test_fx_calibrate.py"), "-q", "-rs",
                            "-p", "no:cacheprovider", "-n", "0"], capture_output=True, text=True, cwd=REPO)
        summary = next((line for line in reversed(r.stdout.splitlines()) if " in " in line and "=" in line),
                       r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr.strip()[-160:])
        table.add("CUDA tests (tests/unit/runtime/test_fx_calibrate.py)", "ok" if r.returncode == 0 else "FAILED",
                  summary.strip("= "))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="ResNet-50 at 64x64, 64 images, fewer rounds")
    p.add_argument("--images", type=int, default=None, help="images for the calibration ratios (default 512)")
    a = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("gpu_check: no CUDA here: torch is not installed; nothing was checked")
        return 0
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA here: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA "
              "device; nothing was checked")
        return 0

    try:
        import mstransform  # noqa: F401
    except ImportError:  # this checkout, installed from itself: no index, no dependencies, nothing downloaded
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-build-isolation", str(REPO)], check=True)
    sys.path.insert(0, str(REPO / "benchmarks"))
    import numpy as np
    import onnxruntime as ort

    import mstransform as mst
    from models import ResNet50, randomize_bn

    warnings.filterwarnings("ignore", message="the model predicts class")  # random images, random weights
    size, n = (64, a.images or 64) if a.quick else (224, a.images or 512)
    rounds, runs = (3, 3) if a.quick else (10, 10)
    device = torch.device("cuda")
    sync = torch.cuda.synchronize
    table = Table()
    print(f"gpu_check on {torch.cuda.get_device_name(0)}; torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())}), mstransform "
          f"{mst.__version__}; {platform.node()}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", flush=True)

    run_tests(table)

    torch.manual_seed(0)
    model = randomize_bn(ResNet50()).eval().to(device)
    images = torch.randn(n, 3, size, size)
    hardened = stats = None
    with table.step("FX path on CUDA (ResNet-50)"):
        ep = torch.export.export(model, (images[:2].to(device),),
                                 dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
        stats = mst.calibrate(ep, images, batch_size=64, progress=False)
        hardened = mst.harden_torch(ep, stats, alpha=0.2)
        with torch.no_grad():
            x = images[:8].to(device)
            change = float((hardened(x) - model(x)).abs().max() / model(x).abs().max())
        table.add("FX path on CUDA (ResNet-50)", "ok", f"{len(stats)} sites calibrated on {stats.samples} images "
                  f"on the device; hardened vs base output: max relative change {change:.3g}")

    if hardened is not None:
        for label, wrap in (("torch eager", lambda f: f), ("torch.compile", torch.compile)):
            for b in (1, 64):
                check = f"{label} CUDA hardened/base, batch {b} (fp32)"
                with table.step(check):
                    x = images[:b].to(device) if b <= n else torch.randn(b, 3, size, size, device=device)
                    tb, th = timed_pair(wrap(model), wrap(hardened), x, rounds=rounds, runs=runs, sync=sync)
                    table.add(check, f"{th / tb:.3f}x", f"base {1e3 * tb:.2f} ms, hardened {1e3 * th:.2f} ms")

    with table.step("FX calibration / plain inference"):
        batches = [images[i:i + 64] for i in range(0, n, 64)]
        with torch.no_grad():
            model(batches[0].to(device))
            sync()
            t0 = time.perf_counter()
            for xb in batches:
                model(xb.to(device))
            sync()
            plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        mst.calibrate(model, images, batch_size=64, progress=False)
        sync()
        cal = time.perf_counter() - t0
        table.add("FX calibration / plain inference", f"{cal / plain:.2f}x",
                  f"{n} images, batch 64: calibrate {cal:.2f} s (trace, observers, every batch), plain {plain:.2f} s")

    cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    if not cuda_ep:
        table.add("ONNX Runtime CUDA provider", "not present",
                  "this onnxruntime build is CPU only; docs/deployment.md: bringing onnxruntime-gpu")
    else:
        with tempfile.TemporaryDirectory() as tmp, table.step("ONNX Runtime CUDA provider"):
            base = Path(tmp) / "resnet50.onnx"
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                torch.onnx.export(model.cpu(), (images[:1],), str(base), dynamo=False, opset_version=17,
                                  input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
            model.to(device)
            data = {"input": images.numpy()}
            t0 = time.perf_counter()
            ostats = mst.calibrate(base, data, batch_size=64, device="cuda", progress=False)
            cal = time.perf_counter() - t0
            out = Path(tmp) / "resnet50.meansparse.onnx"
            mst.harden(base, ostats, out, alpha=0.2, probe={"input": data["input"][:2]})
            t0 = time.perf_counter()
            mst.run(base, data, batch_size=64, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            plain = time.perf_counter() - t0
            table.add("ONNX calibration / plain inference (CUDA EP)", f"{cal / plain:.2f}x",
                      f"{n} images, batch 64: calibrate {cal:.2f} s, run {plain:.2f} s (both end to end)")
            report = mst.bench(base, out, batch_sizes=[1, 64], device="cuda", rounds=rounds, runs=runs)
            for row in report.rows:
                table.add(f"ORT CUDA EP hardened/base, batch {row.batch} (mst.bench)", f"{row.ratio:.3f}x",
                          f"base {row.base.median_ms:.2f} ms, hardened {row.hardened.median_ms:.2f} ms, "
                          f"rounds {row.ratio_low:.3f}-{row.ratio_high:.3f}x")

    print(table.format())
    return 0 if all(r[1] != "FAILED" for r in table.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
