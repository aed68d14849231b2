"""Harden the shipped Fashion-MNIST model with the Python API, step by step."""
from pathlib import Path

import numpy as np

import mstransform as mst

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "fashion_mnist"
OUT = HERE / "out"
OUT.mkdir(exist_ok=True)

table = mst.find_sites(DATA / "model.onnx")
print(table.format())

stats = mst.calibrate(DATA / "model.onnx", DATA / "calib.npz", batch_size=128)
stats.save(OUT / "stats.npz")
print(stats.format())

report = mst.harden(DATA / "model.onnx", stats, alpha=0.2, output=OUT / "model.meansparse.onnx")
print(report.format())

# the hardened model is plain ONNX: any ONNX Runtime user can run it
import onnxruntime as ort

test = np.load(DATA / "test.npz")
x = (test["input"][:500] / 255).astype(np.float32)
for name in ("model.onnx", "model.meansparse.onnx"):
    path = DATA / name if name == "model.onnx" else OUT / name
    logits = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    print(f"{name:24s} clean accuracy on 500 test images: {100 * (logits.argmax(1) == test['labels'][:500]).mean():.1f}%")
