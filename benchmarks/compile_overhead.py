"""torch.compile on CPU: hardened vs base latency, and whether Inductor fused the operator.

    python benchmarks/compile_overhead.py [--batch 8] [--runs 30]

Both models are compiled with Inductor in the same process and timed alternately
(median of ``--runs``). Fusion is read from Inductor's generated code: a kernel whose name
lists the operator's ops (``abs``, ``lt``, ``where``) together with the neighbouring
``relu``/``convolution`` epilogue means the sparsify operator was fused into it.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from models import ResNet50, randomize_bn  # noqa: E402

import mstransform as mst  # noqa: E402
from mstransform.passes.fx.transform import meansparse_backend  # noqa: E402


def kernels(fn, x) -> list[str]:
    from torch._inductor.utils import run_and_get_code

    _, code = run_and_get_code(fn, x)
    return sorted(set(re.findall(r"cpp_fused_\w+", "\n".join(code))))


def timeit(fn, x, runs: int) -> float:
    times = []
    with torch.no_grad():
        for _ in range(runs):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = randomize_bn(ResNet50(blocks=(1, 1, 1, 1)))  # a short ResNet: compile time stays in budget
    x = torch.randn(a.batch, 3, a.size, a.size)
    ep = torch.export.export(model, (x,))
    stats = mst.calibrate(ep, torch.randn(32, 3, a.size, a.size), batch_size=8)
    hardened = mst.harden_torch(ep, stats, alpha=0.2)
    with torch.no_grad():
        base_c = torch.compile(ep.module())
        hard_c = torch.compile(hardened)
        backend_c = torch.compile(model, backend=meansparse_backend(stats, alpha=0.2))
        t0 = time.perf_counter()
        kb = kernels(base_c, x)
        kh = kernels(hard_c, x)
        compile_s = time.perf_counter() - t0
        ref = hardened(x)
        assert torch.allclose(hard_c(x), ref, atol=1e-4), "compiled hardened model disagrees with eager"
        assert torch.allclose(backend_c(x), ref, atol=1e-4), "backend-hardened model disagrees with eager"
        for _ in range(3):
            base_c(x), hard_c(x)
        tb, th = [], []
        for _ in range(3):  # alternate to share machine noise
            tb.append(timeit(base_c, x, a.runs))
            th.append(timeit(hard_c, x, a.runs))
    b, h = statistics.median(tb), statistics.median(th)
    fused = [k for k in kh if "where" in k and ("relu" in k or "convolution" in k or "add" in k)]
    standalone = [k for k in kh if "where" in k and k not in fused]
    print(f"model: ResNet-style, {len(stats)} sites, batch {a.batch}, {a.size}x{a.size}, torch {torch.__version__}, "
          f"2 threads; compile+codegen {compile_s:.0f} s")
    print(f"compiled base     {1e3 * b:8.2f} ms")
    print(f"compiled hardened {1e3 * h:8.2f} ms")
    print(f"ratio hardened/base {h / b:.3f}")
    print(f"Inductor kernels: base {len(kb)}, hardened {len(kh)}; kernels fusing the operator with a neighbour: "
          f"{len(fused)}; stand-alone operator kernels: {len(standalone)}")
    for k in fused[:4]:
        print(f"  fused: {k}")
    print("backend meansparse_backend(): outputs equal eager hardened model (atol 1e-4)")


if __name__ == "__main__":
    main()
