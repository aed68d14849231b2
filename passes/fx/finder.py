"""The torch.fx adapter of the site finder: a ``GraphModule`` seen through
:class:`~mstransform.passes.sites.finder.SiteSource`, with activations matched from the catalogue's
torch references (:data:`mstransform.core.activations.ACTIVATIONS`).

Site names: for a ``torch.export`` program a site is named ``node_<fx name>`` of the node
producing the activation's output -- exactly the name the dynamo ONNX exporter gives that
node -- so stats measured on the FX graph apply to its ONNX export and back. For a
``symbolic_trace`` graph the name is the activation module's path (``block1.act1``) or the FX
node name for functional calls; those correspond to no ONNX export.
"""
from __future__ import annotations

import functools
import importlib
import operator

import torch
import torch.fx as fx
import torch.nn as nn

from mstransform.passes.fx.elementwise import FxElementwise, call_name
from mstransform.core import activations
from mstransform.core.activations import ActivationKind, Argument
from mstransform.passes.sites.placement import FX_POOLS, Layout, kind
from mstransform.passes.sites.computed import find_composites
from mstransform.passes.sites.finder import Candidate, Rejection

aten = torch.ops.aten


def _resolve(ref: str):
    """A catalogue reference (``module:torch.nn.ReLU``, ``aten:relu.default``, ...) as a torch object."""
    how, _, name = ref.partition(":")
    if how == "method":
        return name
    if how == "aten":
        packet, _, overload = name.partition(".")
        return getattr(getattr(aten, packet), overload)
    mod, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(mod), attr)


def _tables():
    """The catalogue's torch references as ``(modules, functions, methods, pools)``: each of the first three maps a
    target to the activations it may be, ``(kind, arguments it must be called with)``."""
    return _tables_of(activations.ACTIVATIONS)


@functools.lru_cache(maxsize=4)
def _tables_of(table: tuple[ActivationKind, ...]):
    modules, functions, methods = {}, {}, {}
    for k in table:
        for refs, when in ((k.torch, ()), (k.torch_when, k.when)):
            for ref in refs:
                how = ref.partition(":")[0]
                {"module": modules, "method": methods}.get(how, functions).setdefault(_resolve(ref), []).append(
                    (k.name, when))
    pools = {_resolve(r) for r in FX_POOLS}
    return modules, functions, methods, pools


def _holds(when: tuple[Argument, ...], node: fx.Node, module=None) -> bool:
    """Whether the call (or the module) has every argument of ``when``."""
    for a in when:
        if module is not None:
            got = getattr(module, a.name, a.default)
        else:
            got = node.args[a.position] if len(node.args) > a.position else node.kwargs.get(a.name, a.default)
        if got != a.value:
            return False
    return True
ADDS = (operator.add, torch.add, aten.add.Tensor)
MULS = (operator.mul, torch.mul, aten.mul.Tensor)
CONV_TARGETS = ("conv1d", "conv2d", "conv3d", "convolution", "batch_norm", "_native_batch_norm_legit_no_training",
                "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "max_pool2d_with_indices")
TOKEN_TARGETS = ("linear", "matmul", "addmm", "mm", "bmm", "layer_norm")
KEEP_TARGETS = ("add", "sub", "mul", "div", "dropout", "clone", "contiguous", "to", "_to_copy")
CONV_MODULES = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.MaxPool2d, nn.AvgPool2d)
TOKEN_MODULES = (nn.Linear, nn.LayerNorm)
REDUCTIONS = ("mean", "sum", "amax", "amin", "var", "std", "var_mean", "prod", "max", "min")
LINEAR_MODULES = (nn.Linear, nn.modules.conv._ConvNd)
LINEAR_TARGETS = ("linear", "conv1d", "conv2d", "conv3d", "convolution")


def _target_name(node: fx.Node) -> str:
    """The op's name: ``conv1d`` for ``F.conv1d``, ``"conv1d"`` (a method) and ATen's ``aten.conv1d.default``."""
    t = node.target
    packet = getattr(t, "overloadpacket", None)  # an ATen overload: its __name__ is "conv1d.default"
    if packet is not None:
        return packet.__name__
    return getattr(t, "__name__", None) or str(t).split(".")[-1]


class FxView:
    """Read-only questions about one ``GraphModule``; FX nodes are both the ops and their values."""

    def __init__(self, gm: fx.GraphModule, exported: bool):
        self.gm, self.exported = gm, exported

    # -- GraphView (catalogue rules) --------------------------------------------------------
    def producer(self, value):
        return value if value.op in ("call_function", "call_module", "call_method") else None

    def is_pool(self, node) -> bool:
        _, _, methods, pools = _tables()
        if node.op == "call_module":
            return type(self.gm.get_submodule(node.target)) in pools
        if node.op == "call_method":
            return node.target in pools
        return node.target in pools

    def pooled(self, node):
        return self._first_input(node)

    def computed_inputs(self, node):
        return [a for a in node.all_input_nodes if a.op != "get_attr"]

    def users(self, value):
        return list(value.users)

    def outputs(self, node):
        return [node]

    def scales(self, node, value, target) -> bool:
        return node.op == "call_function" and node.target in MULS and value in node.args and target in node.args

    def layout(self, node) -> Layout:
        if node.op == "call_module":
            mod = self.gm.get_submodule(node.target)
            return (Layout.CONV if isinstance(mod, CONV_MODULES) else Layout.TOKENS if isinstance(mod, TOKEN_MODULES)
                    else Layout.KEEP if self._keeps_layout(node) else Layout.UNKNOWN)
        name = _target_name(node)
        if name in ("permute", "transpose"):
            rest = node.args[1:]
            nested = len(rest) == 1 and isinstance(rest[0], (list, tuple))
            dims = list(rest[0]) if nested else [d for d in rest if isinstance(d, int)]
            if name == "permute" and len(dims) >= 4 and dims[0] == 0 and dims[-1] == 1:
                return Layout.CHANNELS_LAST
            return Layout.TOKENS_TRANSPOSED if list(dims) in ([0, 2, 1], [1, 2], [2, 1]) else Layout.UNKNOWN
        if name in CONV_TARGETS:
            return Layout.CONV
        if name in TOKEN_TARGETS:
            return Layout.TOKENS
        return Layout.KEEP if name in KEEP_TARGETS or self._keeps_layout(node) else Layout.UNKNOWN

    def constant_shapes(self, node) -> list[tuple[int, ...]]:
        if node.op != "call_function" or _target_name(node) not in ("add", "sub", "mul", "div", "truediv"):
            return []
        shapes = []
        for a in node.args:
            if isinstance(a, fx.Node) and a.op == "get_attr":
                t = getattr(self.gm, a.target, None)
                if isinstance(t, torch.Tensor):
                    shapes.append(tuple(t.shape))
        return shapes

    def is_reduction(self, node) -> bool:
        return node.op in ("call_function", "call_method") and _target_name(node).split(".")[0] in REDUCTIONS

    def node_name(self, node) -> str:
        return f"node_{node.name}" if self.exported else (node.target if node.op == "call_module" else node.name)

    # -- SiteSource ---------------------------------------------------------------------------
    def kind_of(self, node: fx.Node) -> str | None:
        """The catalogue activation ``node`` calls (a ``hardtanh`` only with the bounds of a ReLU6), else None."""
        modules, functions, methods, _ = _tables()
        module = None
        if node.op == "call_module":
            module = self.gm.get_submodule(node.target)
            options = modules.get(type(module), ())
        elif node.op in ("call_function", "call_method"):
            options = (functions if node.op == "call_function" else methods).get(node.target, ())
        else:
            return None
        return next((name for name, when in options if _holds(when, node, module)), None)

    def _keeps_layout(self, node: fx.Node) -> bool:
        name = self.kind_of(node)
        return name is not None and kind(name).keeps_layout

    def activations(self):
        """Spelled activations by what they compute (the ONNX finder's mechanism, over
        :class:`~mstransform.passes.fx.elementwise.FxElementwise`), then the catalogue's modules and
        functions that none claimed, unless they sit inside an expression of their own input."""
        composites, unresolved = find_composites(FxElementwise(self.gm), lambda n: self.kind_of(n) is not None,
                                                 describe=lambda n: n.name)
        claimed = {id(n) for c in composites for n in c.nodes}
        found = [Candidate(c.identified.kind, f"{c.identified.describe()}: {'/'.join(c.ops)}", c.x, c.y, c.nodes,
                           list({id(n): n for n, _ in c.readers}.values()), self.node_name(c.y)) for c in composites]
        rejected = [Rejection(self.node_name(u.node), self.kind_of(u.node) or call_name(u.node), u.reason)
                    for u in unresolved if id(u.node) not in claimed]
        skip = claimed | {id(u.node) for u in unresolved}
        for node in self.gm.graph.nodes:
            kind = self.kind_of(node)
            if kind is None or id(node) in skip:
                continue
            feed = self._first_input(node)
            if feed is None:
                rejected.append(Rejection(self.node_name(node), kind, "has no tensor input"))
                continue
            found.append(Candidate(kind, "module" if node.op == "call_module" else "function", feed, node, [node],
                                   [node], self.node_name(node)))
        order = self.order()
        return sorted(found, key=lambda c: order[id(c.out)]), rejected

    def is_const(self, value) -> bool:
        return value.op == "get_attr"

    def residual_adds(self):
        out = []
        for node in self.gm.graph.nodes:
            args = [a for a in node.args[:2] if isinstance(a, fx.Node)]
            if node.op == "call_function" and node.target in ADDS and len(args) == 2:
                out.append((node, args[0], args[1], node))
        return out

    def linear_inputs(self):
        out = []
        for node in self.gm.graph.nodes:
            if node.op == "call_module" and isinstance(self.gm.get_submodule(node.target), LINEAR_MODULES):
                x = self._first_input(node)
            elif node.op == "call_function" and _target_name(node) in LINEAR_TARGETS:
                weight = node.args[1] if len(node.args) > 1 else None
                if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
                    continue
                x = node.args[0]
            else:
                continue
            if isinstance(x, fx.Node):
                out.append((node, x, f"{self.node_name(node)}:input"))
        return out

    def describe_linear(self, node) -> str:
        if node.op == "call_module":
            mod = self.gm.get_submodule(node.target)
            return "Gemm" if isinstance(mod, nn.Linear) else "Conv"
        return "Gemm" if _target_name(node) == "linear" else "Conv"

    def shape(self, value):
        val = value.meta.get("val", value.meta.get("example_value"))
        if val is not None and hasattr(val, "shape"):
            return tuple(int(d) if isinstance(d, int) else None for d in val.shape)
        tm = value.meta.get("tensor_meta")
        return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None

    def describe_producer(self, value) -> str:
        if value.op == "placeholder":
            return "graph input"
        if value.op == "call_module":
            return type(self.gm.get_submodule(value.target)).__name__
        return _target_name(value)

    def is_graph_output(self, value) -> bool:
        return any(u.op == "output" for u in value.users)

    def is_graph_input(self, value) -> bool:
        return value.op == "placeholder"

    def all_readers(self, value):
        return list(value.users)

    def order(self):
        return {id(n): i for i, n in enumerate(self.gm.graph.nodes)}

    def reader_node(self, reader):
        return reader

    def reader(self, node, index: int):
        return node

    def value_name(self, value) -> str:
        return value.name

    @staticmethod
    def _first_input(node: fx.Node) -> fx.Node | None:
        return next((a for a in node.args if isinstance(a, fx.Node)), None)
