"""MTCNN's ONet (facenet-pytorch 2.6.0) as a module, and the face / non-face crops its tests feed it:
shared by the float32 torch tier (``tests/e2e/test_real_torch.py``) and the float16 ONNX export
(``tests/e2e/test_real_fp16.py``)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FACE = (150, 150, 190)  # x0, y0, side of her face box in the portrait (ONet: p(face) = 1.0 there)
THRESHOLD = 0.7  # MTCNN's default ONet face threshold (facenet_pytorch MTCNN thresholds[2])


class ONet(nn.Module):
    """``facenet_pytorch/models/mtcnn.py`` ``class ONet`` (2.6.0) without its loading code."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


# ----------------------------------------------------------------------------- data
def _crop(img: np.ndarray, x0: int, y0: int, s: int, flip: bool = False) -> torch.Tensor:
    """A square crop resized to 48x48 as MTCNN feeds ONet (area resampling, (x - 127.5) / 128)."""
    h, w, _ = img.shape
    x0, y0 = min(max(x0, 0), w - s), min(max(y0, 0), h - s)
    t = torch.from_numpy(np.ascontiguousarray(img[y0:y0 + s, x0:x0 + s])).permute(2, 0, 1)[None]
    if flip:
        t = t.flip(-1)
    return (F.interpolate(t, size=(48, 48), mode="area") - 127.5) * 0.0078125


def _iou(a, b) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1]))
    return ix * iy / (a[2] ** 2 + b[2] ** 2 - ix * iy)


def _faces(portrait, n: int, seed: int) -> torch.Tensor:
    """Jittered boxes around her face (shift up to 8% of the side, scale 0.9..1.12), half mirrored."""
    r = np.random.default_rng(seed)
    x0, y0, s = FACE
    out = []
    for k in range(n):
        side = int(s * r.uniform(0.9, 1.12))
        dx, dy = (int(v) for v in r.integers(-15, 16, size=2))
        out.append(_crop(portrait, x0 + (s - side) // 2 + dx, y0 + (s - side) // 2 + dy, side, flip=bool(k % 2)))
    return torch.cat(out)


def _non_faces(portrait, imagenet, n: int, seed: int) -> torch.Tensor:
    """Random boxes: 3 in 4 on the ImageNet images, 1 in 4 on the portrait away from her face."""
    r = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        img = portrait if len(out) % 4 == 3 else imagenet[int(r.integers(len(imagenet)))]
        h, w, _ = img.shape
        s = int(r.integers(48, min(h, w) // 2))
        box = (int(r.integers(0, w - s + 1)), int(r.integers(0, h - s + 1)), s)
        if img is portrait and _iou(box, FACE) > 0.05:
            continue
        out.append(_crop(img, *box))
    return torch.cat(out)
