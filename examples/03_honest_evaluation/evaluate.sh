#!/usr/bin/env bash
# Choose alpha on held-out *training* data, then report standard, black-box and
# straight-through robustness side by side on test data. Small settings: minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=examples/fashion_mnist
O=examples/03_honest_evaluation/out
mkdir -p $O
mstransform calibrate $D/adv.onnx --data $D/calib.npz -o $O/adv.stats.npz
mstransform sweep $D/adv.onnx --stats $O/adv.stats.npz --data $D/val.npz --alphas 0.1,0.2,0.3 \
    -n 128 --apgd-iters 20 --plot $O/sweep.png
mstransform $D/adv.onnx --stats $O/adv.stats.npz --alpha 0.2 -o $O/adv.meansparse.onnx
mstransform eval $D/adv.onnx $O/adv.meansparse.onnx --data $D/test.npz -n 128 --apgd-iters 20 \
    --square-queries 200 --json $O/eval.json --csv $O/eval.csv
