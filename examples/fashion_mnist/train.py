"""Train the embedded example: a small ResNet-style classifier on Fashion-MNIST.

Run once by hand (not in CI); it needs the Debian package ``dataset-fashion-mnist``
(MIT licence; ``apt-get install dataset-fashion-mnist``) and PyTorch. It writes, next
to this file:

* ``model.onnx`` -- the export users harden (legacy exporter, opset 17, BatchNorm folded
  into Conv, dynamic batch); architecture: conv stem + BN + ReLU, two residual blocks
  (ReLU after each add), a strided transition with SiLU, a GELU head;
* ``calib.npz`` -- 2,000 training images (uint8, N x 1 x 28 x 28) for calibration;
* ``val.npz`` -- 2,000 other training images with labels, held out from training, for
  choosing alpha;
* ``test.npz`` -- the first 2,000 test images with labels, for reporting only.

``--adv`` trains with PGD adversarial training instead (Linf); see ``--eps``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
DATA = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + x)


class FashionNet(nn.Module):
    def __init__(self, c: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.block1 = Block(c)
        self.down = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False)
        self.bn_down = nn.BatchNorm2d(2 * c)
        self.block2 = Block(2 * c)
        self.head = nn.Linear(2 * c, 64)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.block1(x)
        x = F.silu(self.bn_down(self.down(x)))
        x = self.block2(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(F.gelu(self.head(x)))


def pgd(model, x, y, eps, steps, step_size):
    delta = torch.empty_like(x).uniform_(-eps, eps)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (g,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step_size * g.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--adv", action="store_true", help="PGD adversarial training (Linf)")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default="model.onnx")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    torch.set_num_threads(2)

    xtr = read_idx(DATA / "train-images-idx3-ubyte.gz")[:, None]
    ytr = read_idx(DATA / "train-labels-idx1-ubyte.gz").astype(np.int64)
    xte = read_idx(DATA / "t10k-images-idx3-ubyte.gz")[:, None]
    yte = read_idx(DATA / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(xtr))  # fixed split, whatever --seed
    val_idx, calib_idx, train_idx = perm[:2000], perm[2000:4000], perm[2000:]
    np.savez_compressed(HERE / "calib.npz", input=xtr[calib_idx])
    np.savez_compressed(HERE / "val.npz", input=xtr[val_idx], labels=ytr[val_idx])
    np.savez_compressed(HERE / "test.npz", input=xte[:2000], labels=yte[:2000])

    model = FashionNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    x_all = torch.from_numpy(xtr[train_idx]).float() / 255
    y_all = torch.from_numpy(ytr[train_idx])
    steps_per_epoch = len(x_all) // 128
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=a.epochs * steps_per_epoch)
    t0 = time.time()
    for epoch in range(a.epochs):
        model.train()
        order = torch.randperm(len(x_all))
        for i in range(steps_per_epoch):
            idx = order[i * 128:(i + 1) * 128]
            x, y = x_all[idx], y_all[idx]
            if a.adv:
                model.eval()
                x = pgd(model, x, y, a.eps, a.steps, 2.5 * a.eps / a.steps)
                model.train()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(torch.from_numpy(xte).float() / 255).argmax(1).numpy() == yte).mean()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f} test acc {100 * acc:.2f}% ({time.time() - t0:.0f} s)", flush=True)

    model.eval()
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(HERE / a.out), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    torch.save(model.state_dict(), HERE / (Path(a.out).stem + ".pt"))
    info = {"epochs": a.epochs, "adv": a.adv, "eps": a.eps if a.adv else None, "pgd_steps": a.steps if a.adv else None,
            "seed": a.seed, "wall_s": round(time.time() - t0, 1), "test_acc_full": round(100 * float(acc), 2),
            "torch": torch.__version__}
    (HERE / (Path(a.out).stem + ".json")).write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))


if __name__ == "__main__":
    main()
