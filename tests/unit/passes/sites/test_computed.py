"""Every catalogue activation, spelled as exporters spell it, is one site at its input.

A property test draws spellings the way torch (legacy and dynamo), tf2onnx, jax2tf, the Keras and
TF-Lite converters, Paddle2ONNX and hand-built graphs write them -- commuted operands,
reassociated products, reciprocal constants (``* 0.7071`` vs ``/ 1.4142``), ``Pow(x, 3)`` vs
``x*x*x``, constants folded together, ``Min/Max/Relu`` vs ``Clip``, ``Log(1 + Exp)`` vs
``Softplus``, ``Neg/Exp/Add/Div`` vs ``Sigmoid`` -- after a Dense or a Conv layer, and asserts
exactly one site, at the layer's output, of the right kind, whose readers are every node that
reads it. Each drawn graph is first run in ONNX Runtime against torch's own function of the
activation, so the generator cannot drift from what it claims to spell.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

import mstransform as mst

# kind -> (the kinds a correct finder may report, torch's function): Clip(min=0) is named after the op
KINDS = {
    "gelu-erf": ({"Gelu"}, lambda x: F.gelu(x)),
    "gelu-tanh": ({"Gelu"}, lambda x: F.gelu(x, approximate="tanh")),
    "silu": ({"SiLU"}, F.silu),
    "quick-gelu": ({"SiLU"}, lambda x: x * torch.sigmoid(1.702 * x)),
    "hardswish": ({"HardSwish"}, F.hardswish),
    "hardsigmoid": ({"HardSigmoid"}, F.hardsigmoid),
    "mish": ({"Mish"}, F.mish),
    "softplus": ({"Softplus"}, F.softplus),
    "sigmoid": ({"Sigmoid"}, torch.sigmoid),
    "tanh": ({"Tanh"}, torch.tanh),
    "relu": ({"Relu", "Clip(ReLU)"}, F.relu),
    "relu6": ({"Clip(ReLU6)"}, F.relu6),
    "leaky-relu": ({"LeakyRelu"}, lambda x: F.leaky_relu(x, 0.1)),
    "elu": ({"Elu"}, F.elu),
    "softsign": ({"Softsign"}, F.softsign),
}


class Spell:
    """Builds ONNX nodes for one drawn spelling; every choice is drawn from hypothesis' ``draw``."""

    def __init__(self, draw):
        self.draw, self.nodes, self.consts, self.k = draw, [], {}, 0

    def _name(self, stem):
        self.k += 1
        return f"{stem}{self.k}"

    def op(self, op_type, *inputs, **attrs):
        out = self._name(op_type.lower())
        self.nodes.append(oh.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, v, scalar=False):
        name = self._name("c")
        shape = () if scalar else self.draw(st.sampled_from([(), (1,), (1, 1)]))
        self.consts[name] = np.full(shape, v, np.float32)
        return name

    def binary(self, op_type, a, b):  # commuted where the op commutes
        if op_type in ("Add", "Mul", "Max", "Min") and self.draw(st.booleans()):
            a, b = b, a
        return self.op(op_type, a, b)

    def scale(self, a, c):  # a * c, or a / (1/c)
        if self.draw(st.booleans()):
            return self.binary("Mul", a, self.const(c))
        return self.op("Div", a, self.const(1.0 / c))

    def shift(self, a, c):  # a + c, or a - (-c)
        if self.draw(st.booleans()):
            return self.binary("Add", a, self.const(c))
        return self.op("Sub", a, self.const(-c))

    def neg(self, a):
        how = self.draw(st.sampled_from(["Neg", "mul", "sub"]))
        if how == "Neg":
            return self.op("Neg", a)
        return self.scale(a, -1.0) if how == "mul" else self.op("Sub", self.const(0.0), a)

    def sigmoid(self, a):
        how = self.draw(st.sampled_from(["op", "recip", "div"]))
        if how == "op":
            return self.op("Sigmoid", a)
        den = self.shift(self.op("Exp", self.neg(a)), 1.0)
        return self.op("Reciprocal", den) if how == "recip" else self.op("Div", self.const(1.0), den)

    def softplus(self, a):
        how = self.draw(st.sampled_from(["op", "log-exp", "dynamo-where"]))
        if how == "op":
            return self.op("Softplus", a)
        if how == "log-exp":
            return self.op("Log", self.shift(self.op("Exp", a), 1.0))
        return self.op("Where", self.op("Greater", a, self.const(20.0)), a, self.op("Softplus", a))

    def cube(self, a):
        how = self.draw(st.sampled_from(["pow", "left", "right"]))
        if how == "pow":
            return self.op("Pow", a, self.const(3.0))
        sq = self.binary("Mul", a, a)
        return self.binary("Mul", sq, a) if how == "left" else self.binary("Mul", a, sq)

    def relu6(self, a):
        how = self.draw(st.sampled_from(["clip", "min-relu", "min-max", "max-min"]))
        if how == "clip":
            return self.op("Clip", a, self.const(0.0, True), self.const(6.0, True))
        if how == "min-relu":
            return self.binary("Min", self.op("Relu", a), self.const(6.0))
        if how == "min-max":
            return self.binary("Min", self.binary("Max", a, self.const(0.0)), self.const(6.0))
        return self.binary("Max", self.binary("Min", a, self.const(6.0)), self.const(0.0))

    def half_x_times(self, x, t):
        """0.5 * x * (1 + t), the constants placed and folded every way exporters do."""
        how = self.draw(st.sampled_from(["x-then-half", "half-x-first", "half-inside", "folded-half"]))
        if how == "folded-half":  # x * (0.5 + 0.5 t)
            return self.binary("Mul", x, self.shift(self.scale(t, 0.5), 0.5))
        one_t = self.shift(t, 1.0)
        if how == "x-then-half":
            return self.scale(self.binary("Mul", x, one_t), 0.5)
        if how == "half-x-first":
            return self.binary("Mul", self.scale(x, 0.5), one_t)
        return self.binary("Mul", x, self.scale(one_t, 0.5))

    # -- the activations ---------------------------------------------------------------------------
    def gelu_erf(self, x):
        return self.half_x_times(x, self.op("Erf", self.scale(x, 1 / math.sqrt(2))))

    def gelu_tanh(self, x):
        k, c = math.sqrt(2 / math.pi), 0.044715
        how = self.draw(st.sampled_from(["torch", "jax2tf", "folded"]))
        if how == "torch":  # k * (x + c * x^3)
            arg = self.scale(self.binary("Add", x, self.scale(self.cube(x), c)), k)
        elif how == "jax2tf":  # k * (x + x*(x*(c*x))): the constant on the innermost product
            inner = self.binary("Mul", x, self.binary("Mul", x, self.scale(x, c)))
            arg = self.scale(self.binary("Add", x, inner), k)
        else:  # k*x + (k*c)*x^3, constants folded by the exporter
            arg = self.binary("Add", self.scale(x, k), self.scale(self.cube(x), k * c))
        return self.half_x_times(x, self.op("Tanh", arg))

    def swish(self, x, beta):
        how = self.draw(st.sampled_from(["gate", "div"]))
        inner = x if beta == 1.0 else self.scale(x, beta)
        if how == "div" and beta == 1.0:  # x / (1 + exp(-x))
            return self.op("Div", x, self.shift(self.op("Exp", self.neg(x)), 1.0))
        return self.binary("Mul", x, self.sigmoid(inner))

    def hardsigmoid(self, x):
        how = self.draw(st.sampled_from(["op", "relu6", "clip-line"]))
        if how == "op":
            return self.op("HardSigmoid", x, alpha=1 / 6, beta=0.5)
        if how == "relu6":
            return self.scale(self.relu6(self.shift(x, 3.0)), 1 / 6)
        return self.op("Clip", self.shift(self.scale(x, 1 / 6), 0.5), self.const(0.0, True), self.const(1.0, True))

    def hardswish(self, x):
        how = self.draw(st.sampled_from(["op", "gate", "keras", "product-first"]))
        if how == "op":
            return self.op("HardSwish", x)
        if how == "gate":
            return self.binary("Mul", x, self.hardsigmoid(x))
        if how == "keras":  # x * relu6(x + 3) / 6
            return self.scale(self.binary("Mul", x, self.relu6(self.shift(x, 3.0))), 1 / 6)
        return self.binary("Mul", self.scale(x, 1 / 6), self.relu6(self.shift(x, 3.0)))

    def build(self, kind, x):
        if kind == "gelu-erf":
            return self.gelu_erf(x)
        if kind == "gelu-tanh":
            return self.gelu_tanh(x)
        if kind == "silu":
            return self.swish(x, 1.0)
        if kind == "quick-gelu":
            return self.swish(x, 1.702)
        if kind == "hardswish":
            return self.hardswish(x)
        if kind == "hardsigmoid":
            return self.hardsigmoid(x)
        if kind == "mish":
            return self.binary("Mul", x, self.op("Tanh", self.softplus(x)))
        if kind == "softplus":
            return self.softplus(x)
        if kind == "sigmoid":
            return self.sigmoid(x)
        if kind == "tanh":  # Tanh, or 2 * sigmoid(2x) - 1
            if self.draw(st.booleans()):
                return self.op("Tanh", x)
            return self.shift(self.scale(self.sigmoid(self.scale(x, 2.0)), 2.0), -1.0)
        if kind == "relu":
            how = self.draw(st.sampled_from(["op", "max", "clip-min"]))
            if how == "op":
                return self.op("Relu", x)
            return self.binary("Max", x, self.const(0.0)) if how == "max" else self.op("Clip", x, self.const(0.0, True))
        if kind == "relu6":
            return self.relu6(x)
        if kind == "leaky-relu":
            how = self.draw(st.sampled_from(["op", "max", "where"]))
            if how == "op":
                return self.op("LeakyRelu", x, alpha=0.1)
            if how == "max":
                return self.binary("Max", x, self.scale(x, 0.1))
            return self.op("Where", self.op("Greater", x, self.const(0.0)), x, self.scale(x, 0.1))
        if kind == "elu":
            if self.draw(st.booleans()):
                return self.op("Elu", x)
            return self.op("Where", self.op("Greater", x, self.const(0.0)), x,
                           self.shift(self.op("Exp", x), -1.0))
        if kind == "softsign":
            return self.op("Div", x, self.shift(self.op("Abs", x), 1.0))
        raise AssertionError(kind)


def layer(draw, rng) -> tuple[list, dict, list, str, tuple]:
    """A Dense (MatMul + bias) or Conv layer on graph input ``X``; returns nodes, weights, input spec, its output."""
    if draw(st.booleans()):
        w, b = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
        nodes = [oh.make_node("MatMul", ["X", "W"], ["mm"], name="dense"),
                 oh.make_node("Add", ["mm", "B"], ["x"], name="bias")]
        return nodes, {"W": w, "B": b}, [3, 4], "x", (3, 4)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.5
    b = rng.standard_normal(6).astype(np.float32)
    return [oh.make_node("Conv", ["X", "W", "B"], ["x"], name="conv", pads=[1, 1, 1, 1])], \
        {"W": w, "B": b}, [2, 3, 5, 5], "x", (2, 3, 5, 5)


def session(model):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def model_of(nodes, consts, in_shape, out):
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in consts.items()]
    graph = oh.make_graph(nodes, "spelled", [oh.make_tensor_value_info("X", onnx.TensorProto.FLOAT, in_shape)],
                          [oh.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)], inits)
    m = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(sorted(KINDS)))
def test_every_spelling_is_one_site_at_the_activation_input(data, kind, tmp_path_factory):
    rng = np.random.default_rng(0)
    nodes, consts, in_shape, x, _ = layer(data.draw, rng)
    spell = Spell(data.draw)
    y = spell.build(kind, x)
    model = model_of(nodes + spell.nodes, {**consts, **spell.consts}, in_shape, y)
    # the drawn graph computes the activation (torch's function) of the layer's output
    feed = rng.standard_normal(in_shape).astype(np.float32) * 3
    sess = session(model)
    pre = session(model_of(nodes, consts, in_shape, x)).run(None, {"X": feed})[0]
    want = KINDS[kind][1](torch.from_numpy(pre.astype(np.float64))).numpy()
    np.testing.assert_allclose(sess.run(None, {"X": feed})[0], want, rtol=1e-4, atol=1e-4)

    path = tmp_path_factory.mktemp("spelled") / "m.onnx"
    onnx.save(model, str(path))
    table = mst.find_sites(path)
    assert len(table) == 1, table.format()
    (site,) = table.sites
    assert site.feed_name == x, table.format()
    assert site.kind in KINDS[kind][0], table.format()
    readers = {(n.name, i) for n, i in site.readers}
    every = {(n.name, i) for n in spell.nodes for i, v in enumerate(n.input) if v == x}
    assert readers == every, table.format()  # every reader of x inside the activation sees the operator


# -- the same spellings in PyTorch code, through the FX path -------------------------------------------

def _spelled(kind):
    k, c = math.sqrt(2 / math.pi), 0.044715
    return {
        "gelu-tanh-jax2tf": ("Gelu", lambda x: 0.5 * x * (1 + torch.tanh(k * (x + x * (x * (c * x)))))),
        "gelu-tanh-folded": ("Gelu", lambda x: x * (0.5 + 0.5 * torch.tanh(k * x + (k * c) * x ** 3))),
        "gelu-erf-div": ("Gelu", lambda x: x * 0.5 * (1.0 + torch.erf(x / 1.4142135))),
        "quick-gelu": ("SiLU", lambda x: x * torch.sigmoid(1.702 * x)),
        "silu-div": ("SiLU", lambda x: x / (1 + torch.exp(-x))),
        "hardswish-keras": ("HardSwish", lambda x: x * F.relu6(x + 3) / 6),
        "hardswish-clip": ("HardSwish", lambda x: x * torch.clamp(x + 3, 0, 6) * (1 / 6)),
        "mish-log-exp": ("Mish", lambda x: x * torch.tanh(torch.log(1 + torch.exp(x)))),
        "relu6-min-max": ("Clip(ReLU6)", lambda x: torch.minimum(torch.relu(x), torch.tensor(6.0))),
    }[kind]


class Net(torch.nn.Module):
    def __init__(self, act):
        super().__init__()
        self.fc1, self.fc2, self.act = torch.nn.Linear(4, 6), torch.nn.Linear(6, 3), act

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


@pytest.mark.parametrize("spelling", ["gelu-tanh-jax2tf", "gelu-tanh-folded", "gelu-erf-div", "quick-gelu",
                                      "silu-div", "hardswish-keras", "hardswish-clip", "mish-log-exp",
                                      "relu6-min-max"])
def test_fx_finds_spelled_activations_like_the_onnx_export(spelling, tmp_path):
    """One mechanism: the FX graph of PyTorch code and its ONNX export give one site of the same kind, named alike
    (the dynamo exporter names nodes after the FX graph)."""
    from mstransform.passes.fx.transform import find_fx_sites

    kind, act = _spelled(spelling)
    torch.manual_seed(0)
    net = Net(act).eval()
    example = (torch.randn(2, 4),)
    _, fx_table = find_fx_sites(torch.export.export(net, example))
    assert [(s.kind, s.channels) for s in fx_table] == [(kind, 6)], fx_table.format()
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, example, str(path), dynamo=True, optimize=False, verbose=False)
    onnx_table = mst.find_sites(path)
    assert [(s.kind, s.channels) for s in onnx_table] == [(kind, 6)], onnx_table.format()
    assert [s.name for s in onnx_table] == [s.name for s in fx_table]


def test_a_jax2tf_gelu_is_hardened_on_its_input(tmp_path):
    """The issue's case end to end: a Dense layer and the tanh GELU as jax2tf writes it (the constant on the
    innermost product). The hardened model must compute ``gelu(sparsify(x))`` (the operator on the GELU's
    input, every read of x guarded), checked against numpy and torch in float64; a decision may differ only
    within rounding distance of the band edge."""
    rng = np.random.default_rng(1)
    k, c = math.sqrt(2 / math.pi), 0.044715
    w, b = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    consts = {"W": w, "B": b, "c": np.float32(c), "k": np.float32(k), "one": np.float32(1), "half": np.float32(0.5)}
    nodes = [oh.make_node("MatMul", ["X", "W"], ["mm"], name="dense"), oh.make_node("Add", ["mm", "B"], ["x"], name="b"),
             oh.make_node("Mul", ["x", "c"], ["a1"], name="a1"), oh.make_node("Mul", ["x", "a1"], ["a2"], name="a2"),
             oh.make_node("Mul", ["x", "a2"], ["a3"], name="a3"), oh.make_node("Add", ["x", "a3"], ["in"], name="in"),
             oh.make_node("Mul", ["in", "k"], ["s"], name="s"), oh.make_node("Tanh", ["s"], ["t"], name="t"),
             oh.make_node("Add", ["t", "one"], ["p"], name="p"), oh.make_node("Mul", ["x", "p"], ["m"], name="m"),
             oh.make_node("Mul", ["m", "half"], ["y"], name="y")]
    base = model_of(nodes, {key: np.asarray(v) for key, v in consts.items()}, ["N", 4], "y")
    path = tmp_path / "jax2tf_gelu.onnx"
    onnx.save(base, str(path))
    calib, probe = rng.standard_normal((256, 4)).astype(np.float32), rng.standard_normal((64, 4)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", X=calib)
    stats = mst.calibrate(path, str(tmp_path / "calib.npz"), progress=False)
    alpha = 0.5
    mst.harden(path, stats, tmp_path / "hard.onnx", alpha=alpha)

    def x_of(data):  # the layer's output, float32 as the runtime computes it
        return session(model_of(nodes[:2], {"W": w, "B": b}, ["N", 4], "x")).run(None, {"X": data})[0]

    xc = x_of(calib).astype(np.float64)
    mu, sigma = xc.mean(axis=0), xc.std(axis=0)
    x = x_of(probe).astype(np.float64)
    inside = np.abs(x - mu) < alpha * sigma
    want = F.gelu(torch.from_numpy(np.where(inside, mu, x)), approximate="tanh").numpy()
    got = session(onnx.load(str(tmp_path / "hard.onnx"))).run(None, {"X": probe})[0].astype(np.float64)
    near_edge = np.abs(np.abs(x - mu) - alpha * sigma) < 1e-4 * (1 + np.abs(x))
    assert inside.any() and (~inside).any()
    np.testing.assert_allclose(got[~near_edge], want[~near_edge], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spelling", ["gelu-tanh-jax2tf", "hardswish-keras"])
def test_fx_hardens_a_spelled_activation_on_its_input(spelling):
    """harden_torch puts the operator where the ONNX pass does: every read of the activation's input is guarded,
    so the module computes ``act(sparsify(fc1(x)))``, checked against float64 torch with statistics of its own."""
    _, act = _spelled(spelling)
    torch.manual_seed(0)
    net = Net(act).eval()
    calib, probe = torch.randn(256, 4), torch.randn(64, 4)
    stats = mst.calibrate(net, calib, progress=False)
    alpha = 0.5
    hardened = mst.harden_torch(net, stats, alpha)
    with torch.no_grad():
        h = net.fc1.double()(calib.double())
        mu, sigma = h.mean(0), h.std(0, unbiased=False)
        x = net.fc1(probe.double())
        inside = (x - mu).abs() < alpha * sigma
        want = net.fc2.double()(act(torch.where(inside, mu, x)))
        got = hardened.float()(probe).double()
    near_edge = ((x - mu).abs() - alpha * sigma).abs() < 1e-4 * (1 + x.abs())
    assert inside.any() and (~inside).any()
    rows = ~near_edge.any(dim=1)
    torch.testing.assert_close(got[rows], want[rows], rtol=1e-4, atol=1e-5)
