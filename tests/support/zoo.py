"""Small PyTorch models the tests export to ONNX.

Each model names its activation modules so a test can attach the paper's operator
at exactly the tensors the ONNX pass guards. ``EXPECTED`` lists, per model, the
activation sites (count and kind) the ONNX site finder must report with the
default ``activations`` placement.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResBlock(nn.Module):
    """Basic ResNet block: conv-BN-ReLU-conv-BN, residual add, ReLU."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.act2 = nn.ReLU()

    def forward(self, x):
        y = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(y)) + x)


class ResNetCNN(nn.Module):
    """ResNet-style CNN with BatchNorm and residual adds (5 ReLU sites)."""

    def __init__(self, c: int = 8, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.ReLU()
        self.block1 = ResBlock(c)
        self.block2 = ResBlock(c)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.act(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.fc(x.mean((2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(c // r, c, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(self.relu(self.fc1(s))))


class MobileBlock(nn.Module):
    """MobileNetV3-style inverted residual: expand (HardSwish), depthwise (HardSwish), SE, project."""

    def __init__(self, c: int = 8, e: int = 16):
        super().__init__()
        self.expand = nn.Conv2d(c, e, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(e)
        self.act1 = nn.Hardswish()
        self.dw = nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False)
        self.bn2 = nn.BatchNorm2d(e)
        self.act2 = nn.Hardswish()
        self.se = SqueezeExcite(e)
        self.project = nn.Conv2d(e, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = self.act2(self.bn2(self.dw(self.act1(self.bn1(self.expand(x))))))
        return x + self.bn3(self.project(self.se(y)))


class MobileNet(nn.Module):
    """Stem with ReLU6, one MobileNetV3 block, head (3 activation sites outside the SE)."""

    def __init__(self, c: int = 8, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.ReLU6()
        self.block = MobileBlock(c)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.block(self.act(self.bn(self.stem(x))))
        return self.fc(x.mean((2, 3)))


class SiLUCNN(nn.Module):
    """Plain CNN with SiLU and one Mish activation (3 sites)."""

    def __init__(self, c: int = 8, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.act1 = nn.SiLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c)
        self.act2 = nn.SiLU()
        self.conv3 = nn.Conv2d(c, c, 3, padding=1)
        self.act3 = nn.Mish()
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.conv3(x))
        return self.fc(x.mean((2, 3)))


class TransformerBlock(nn.Module):
    """Pre-LN transformer encoder block on tokens (N, L, C); MLP with GELU (1 site)."""

    def __init__(self, d: int = 16, heads: int = 2, approximate: str = "none"):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(2 * d, d)
        self.heads = heads

    def forward(self, x):
        n, l, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        h = self.heads
        q = q.reshape(n, l, h, d // h).transpose(1, 2)
        k = k.reshape(n, l, h, d // h).transpose(1, 2)
        v = v.reshape(n, l, h, d // h).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // h) ** 0.5, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(n, l, d)
        x = x + self.proj(y)
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class TinyViT(nn.Module):
    """Patch embedding + two transformer blocks (one exact GELU, one tanh GELU) + head."""

    def __init__(self, d: int = 16, classes: int = 10):
        super().__init__()
        self.embed = nn.Conv2d(1, d, 4, stride=4)
        self.block1 = TransformerBlock(d, approximate="none")
        self.block2 = TransformerBlock(d, approximate="tanh")
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = self.block2(self.block1(x))
        return self.fc(self.norm(x).mean(1))


class CatalogueMLP(nn.Module):
    """One Linear per remaining catalogue activation (token layout N, L, C)."""

    ACTS = ("leaky_relu", "elu", "selu", "celu", "softplus", "tanh", "sigmoid", "prelu", "hardsigmoid")

    def __init__(self, d: int = 12, classes: int = 10):
        super().__init__()
        self.inp = nn.Linear(16, d)
        self.layers = nn.ModuleList(nn.Linear(d, d) for _ in self.ACTS)
        self.acts = nn.ModuleList([
            nn.LeakyReLU(0.1), nn.ELU(), nn.SELU(), nn.CELU(), nn.Softplus(), nn.Tanh(), nn.Sigmoid(),
            nn.PReLU(), nn.Hardsigmoid(),
        ])
        self.fc = nn.Linear(d * len(self.ACTS), classes)

    def forward(self, x):
        x = self.inp(x)
        taps = []
        for layer, act in zip(self.layers, self.acts):
            x = act(layer(x))
            taps.append(x.mean(1))
        return self.fc(torch.cat(taps, dim=-1))  # every activation reaches the output directly


def build(name: str, seed: int = 0) -> nn.Module:
    """Build a zoo model with deterministic, non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = {"resnet": ResNetCNN, "mobilenet": MobileNet, "silu": SiLUCNN, "vit": TinyViT, "mlp": CatalogueMLP}[name]()
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
    return model.eval()


INPUT_SHAPES = {"resnet": (1, 16, 16), "mobilenet": (1, 16, 16), "silu": (1, 16, 16), "vit": (1, 16, 16), "mlp": (5, 16)}

# Expected activation sites per model under the default placement: activation kind -> count.
EXPECTED = {
    "resnet": {"Relu": 5},
    "mobilenet": {"Clip(ReLU6)": 1, "HardSwish": 2},
    "silu": {"SiLU": 2, "Mish": 1},
    "vit": {"Gelu": 2},
    "mlp": {"LeakyRelu": 1, "Elu": 1, "Selu": 1, "Celu": 1, "Softplus": 1, "Tanh": 1, "Sigmoid": 1,
            "PRelu": 1, "HardSigmoid": 1},
}


def export(model: nn.Module, name: str, path, *, dynamo: bool, opset: int, keep_bn: bool = False, batch: int = 2):
    """Export ``model`` with a dynamic batch axis; ``keep_bn`` keeps BatchNormalization nodes (legacy exporter)."""
    import warnings

    x = torch.randn(batch, *INPUT_SHAPES[name])
    kwargs = dict(input_names=["input"], output_names=["logits"], opset_version=opset, dynamo=dynamo)
    if dynamo:
        kwargs["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}
        kwargs["optimize"] = not keep_bn
    else:
        kwargs["dynamic_axes"] = {"input": {0: "batch"}, "logits": {0: "batch"}}
        kwargs["do_constant_folding"] = not keep_bn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), **kwargs)
    return path


# Modules whose *input* is each activation site, in the ONNX graph's site order.
SITE_MODULES = {
    "resnet": ["act", "block1.act1", "block1.act2", "block2.act1", "block2.act2"],
    "mobilenet": ["act", "block.act1", "block.act2"],
    "silu": ["act1", "act2", "act3"],
    "vit": ["block1.act", "block2.act"],
    "mlp": [f"acts.{i}" for i in range(9)],
}


def with_reference_operator(model: nn.Module, name: str, params: list[tuple], *, forced: dict | None = None,
                            record: dict | None = None) -> list:
    """Attach the paper's operator (torch, written independently of the ONNX pass) before each site module.

    ``params`` holds (center, threshold, axis) per site, in ``SITE_MODULES`` order.
    ``record``, a dict, receives per site index ``(x, decision)``: the tensor entering the operator and
    the operator's own decision ``|x - c| < t``. ``forced``, per site index, a tensor the site module
    reads *instead of* the operator's output (teacher forcing: the segment after the operator then
    computes from the value another implementation's operator produced). Returns the hook handles.
    """
    modules = dict(model.named_modules())
    handles = []
    for i, (mod_name, (center, threshold, axis)) in enumerate(zip(SITE_MODULES[name], params)):
        def hook(module, args, i=i, center=center, threshold=threshold, axis=axis, mod_name=mod_name):
            (x,) = args
            shape = [1] * x.ndim
            shape[axis] = -1
            c = torch.as_tensor(center, dtype=x.dtype).reshape(shape)
            t = torch.as_tensor(threshold, dtype=x.dtype).reshape(shape)
            decision = (x - c).abs() < t
            if record is not None:
                assert i not in record, f"site module {mod_name!r} ran twice in one forward pass"
                record[i] = (x.detach().clone(), decision.clone())
            if forced is not None and i in forced:
                y = forced[i]
                assert tuple(y.shape) == tuple(x.shape), (mod_name, tuple(y.shape), tuple(x.shape))
                return (y.to(x.dtype),)
            return (torch.where(decision, c.expand_as(x), x),)

        handles.append(modules[mod_name].register_forward_pre_hook(hook))
    return handles
