"""Fusions of the twin's program: chains of ONNX nodes that exporters spell for one torch operation,
run as that operation, so attacks through the twin run near the speed of the native model.

* a catalogue activation spelled in several ops (exact GELU as ``Div -> Erf -> Add -> Mul -> Mul`` at opsets
  below 20, tanh GELU, HardSwish as ``x * Clip(x + 3, 0, 6) / 6``, ...), as the site finder's computed matcher
  finds it (:func:`mstransform.passes.sites.onnx_rules.composites`), runs as the torch call of its form in the
  catalogue (:data:`mstransform.core.activations.ACTIVATIONS`): one pass forward and one backward instead of
  one per op. Only a spelling whose float64 values equal the form's to its constants' float32 rounding
  (:data:`EXACT`) is fused; one with four-digit constants runs as written;
* a linear layer over more than two axes as exported: ``MatMul(x, W) -> Add b`` with constant
  ``W`` and ``b`` runs as ``F.linear`` (one ``addmm``: the bias is added inside the product).

A chain is fused only where its inner values have no other reader and are not graph outputs; the
values then differ from the unfused chain by float rounding only (a few ulps), within the twin
check's tolerance, and no sparsify operator is ever inside a chain (operators run as units and
read or write only the chain's ends).
"""
from __future__ import annotations

import importlib
import re
from collections import defaultdict

import torch.nn.functional as F

from mstransform.core.activations import ACTIVATIONS, TorchCall, form_of
from mstransform.passes.sites.computed import Composite

EXACT = 1e-3  # the most a fused spelling may differ from its form, in units of the finder's tolerance


def torch_call(call: TorchCall):
    """``call`` as a function of a tensor and the parameters it reads (ONNX attributes or fitted parameters)."""
    module, _, name = call.function.rpartition(".")
    fn = getattr(importlib.import_module(module), name)
    fixed = dict(call.fixed)

    def run(x, **given):
        kw = {key: given.get(param, default) for param, key, default in call.params}
        return fn(x, **{k: v.decode() if isinstance(v, bytes) else v for k, v in kw.items()}, **fixed)
    return run


def fused_name(kind: str, form: str) -> str:
    """The program op of a fused activation: ``_GeluErf``, ``_GeluTanh``, ``_Relu``."""
    k, f = re.sub(r"\W", "", kind), form.title().replace(" ", "")
    return f"_{k}" if f.lower() == k.lower() else f"_{k}{f}"


def fuse(program: list, consts: dict, weights: dict, outputs: list[str], found: list[Composite] = ()) -> list:
    """``program`` with every fusable chain replaced by one step (see the module's docstring); ``found`` holds
    the graph's spelled activations."""
    readers = defaultdict(list)
    for k, step in enumerate(program):
        for name in (step[2] if isinstance(step, tuple) else [step.x]):
            readers[name].append(k)
    for name in outputs:
        readers[name].append(-1)

    def only(value, op):
        """The one step reading ``value``, if it is an ``op`` node; else None."""
        ks = readers.get(value, [])
        if len(ks) == 1 and ks[0] >= 0 and isinstance(program[ks[0]], tuple) and program[ks[0]][0] == op:
            return ks[0]
        return None

    gone, new = _activations(program, found)
    for k, step in enumerate(program):
        if not isinstance(step, tuple) or k in gone or k in new:
            continue
        op, name, ins, outs, attrs = step
        if op == "MatMul" and len(ins) == 2 and ins[1] in weights and weights[ins[1]].ndim == 2:
            add = only(outs[0], "Add")
            bias = add is not None and add not in gone and [i for i in program[add][2] if i != outs[0]]
            if bias and len(bias) == 1 and bias[0] in weights and weights[bias[0]].ndim == 1:
                gone.add(k)
                new[add] = ("_Linear", name, [ins[0], ins[1], bias[0]], program[add][3], {})
    return [new.get(k, step) for k, step in enumerate(program) if k not in gone]


def _activations(program: list, found) -> tuple[set[int], dict[int, tuple]]:
    """The steps of every fusable spelled activation (all but its last) and the step replacing its last."""
    at = {step[3][0]: k for k, step in enumerate(program) if isinstance(step, tuple) and step[3]}
    gone, new = set(), {}
    for c in found:
        ident = c.identified
        form = form_of(ident.kind, ident.form)
        if form.torch is None or ident.error > EXACT or len(c.nodes) < 2:
            continue
        if any(len(n.outputs) != 1 or n.op_type == "Cast" for n in c.nodes):  # a Cast to float16 rounds: keep it
            continue
        ks = [at.get(n.outputs[0].name) for n in c.nodes]
        last = at.get(c.y.name)
        if None in ks or last is None or gone & set(ks) or set(ks) & set(new):
            continue
        gone.update(k for k in ks if k != last)
        new[last] = (fused_name(ident.kind, ident.form), program[last][1], [c.x.name], [c.y.name], dict(ident.params))
    return gone, new


def _linear(x, w, b):
    return F.linear(x, w.t(), b)


FUSED = {"_Linear": _linear, **{fused_name(k.name, f.name): torch_call(f.torch)
                                for k in ACTIVATIONS for f in k.forms if f.torch is not None}}
