#!/usr/bin/env bash
# The README's robustness results: sweep alpha on the held-out training split for the
# adversarially trained example and its standard-trained twin, then evaluate each at the
# chosen alpha (or at 0.2 when the sweep keeps the base model, to show what it would cost)
# on 500 test images with every attack. Run by hand (about 40 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
D=examples/fashion_mnist
O=${OUT:-out/robustness}
mkdir -p "$O"
for m in adv std; do
  mstransform calibrate $D/$m.onnx --data $D/calib.npz -o "$O/$m.stats.npz"
  mstransform sweep $D/$m.onnx --stats "$O/$m.stats.npz" --data $D/val.npz \
      --alphas 0.05,0.1,0.15,0.2,0.3,0.5 -n 500 --apgd-iters 50 --eps 0.1 \
      --plot "$O/$m.sweep.png" --json "$O/$m.sweep.json" --csv "$O/$m.sweep.csv" | tee "$O/$m.sweep.txt"
  alpha=$(python3 -c "import json,sys; a=json.load(open('$O/$m.sweep.json'))['chosen_alpha']; print(a if a > 0 else 0.2)")
  mstransform $D/$m.onnx --stats "$O/$m.stats.npz" --alpha "$alpha" -o "$O/$m.meansparse.onnx"
  mstransform eval $D/$m.onnx "$O/$m.meansparse.onnx" --data $D/test.npz -n 500 --eps 0.1 \
      --apgd-iters 100 --pgd-steps 20 --square-queries 1000 \
      --json "$O/$m.eval.json" --csv "$O/$m.eval.csv" | tee "$O/$m.eval.txt"
done
