"""Harden a PyTorch model with the torch.fx pass, export it to ONNX, and compile it."""
import sys
from pathlib import Path

import torch

import mstransform as mst
from mstransform.passes.fx.module import straight_through

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "support"))
import zoo  # noqa: E402  (small test architectures)

model = zoo.build("resnet")
x = torch.randn(64, 1, 16, 16)
ep = torch.export.export(model, (x[:2],), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}})

stats = mst.calibrate(ep, x, batch_size=16)
hardened = mst.harden_torch(ep, stats, alpha=0.2)
print([line.strip() for line in hardened.code.splitlines() if "meansparse" in line][:3])

with torch.no_grad():
    print("max |hardened - base| =", float((hardened(x) - model(x)).abs().max()))

# straight-through (BPDA) gradients, e.g. for adaptive attacks
xg = x[:4].clone().requires_grad_(True)
with straight_through(hardened):
    hardened(xg).sum().backward()
print("BPDA gradient norm:", float(xg.grad.norm()))

compiled = torch.compile(hardened)
with torch.no_grad():
    print("compiled == eager:", torch.allclose(compiled(x), hardened(x), atol=1e-5))
