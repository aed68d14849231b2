"""Export a ResNet-50 (random weights, benchmarks/models.py) to ONNX and harden it with statistics
measured on random data: the base and hardened pair that `mstransform bench` times.

    python examples/04_latency/resnet50.py [OUT_DIR]

Writes OUT_DIR/resnet50.onnx and OUT_DIR/resnet50.meansparse.onnx (default examples/04_latency/out).
Latency does not depend on the weights' values or on the statistics, only on the graph.
"""
import contextlib
import io
import sys
from pathlib import Path

import numpy as np
import torch

import mstransform as mst

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))
from models import ResNet50, randomize_bn  # noqa: E402

out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "out"
out.mkdir(parents=True, exist_ok=True)
base = out / "resnet50.onnx"
torch.manual_seed(0)
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    torch.onnx.export(randomize_bn(ResNet50()), (torch.randn(1, 3, 224, 224),), str(base), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}})
calib = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
stats = mst.calibrate(base, {"input": calib}, batch_size=4, progress=False)
report = mst.harden(base, stats, alpha=0.2, output=out / "resnet50.meansparse.onnx", probe={"input": calib[:1]})
print(report.format())
print(f"next: mstransform bench {base} {out / 'resnet50.meansparse.onnx'} --batch-sizes 1,8 "
      "--runtime onnxruntime,openvino --threads 2")
