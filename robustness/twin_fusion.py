"""Fusions of the twin's program: chains of ONNX nodes that exporters spell for one torch operation,
run as that operation, so attacks through the twin run near the speed of the native model.

* exact GELU as exported at opsets below 20: ``Div(x, sqrt 2) -> Erf -> Add 1 -> Mul x -> Mul 0.5``
  (either order of the two products) runs as ``F.gelu(x)``: one pass forward and one backward
  instead of five of each;
* a linear layer over more than two axes as exported: ``MatMul(x, W) -> Add b`` with constant
  ``W`` and ``b`` runs as ``F.linear`` (one ``addmm``: the bias is added inside the product).

A chain is fused only where its inner values have no other reader and are not graph outputs; the
values then differ from the unfused chain by float rounding only (a few ulps), within the twin
check's tolerance, and no sparsify operator is ever inside a chain (operators run as units and
read or write only the chain's ends).
"""
from __future__ import annotations

import math
from collections import defaultdict

import torch.nn.functional as F


def _scalar(consts: dict, name: str, value: float) -> bool:
    t = consts.get(name)
    return t is not None and t.numel() == 1 and t.is_floating_point() and math.isclose(float(t), value, rel_tol=1e-6)


def fuse(program: list, consts: dict, weights: dict, outputs: list[str]) -> list:
    """``program`` with every fusable chain replaced by one step (see the module's docstring)."""
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

    gone, new = set(), {}
    for k, step in enumerate(program):
        if not isinstance(step, tuple) or k in gone:
            continue
        op, name, ins, outs, attrs = step
        if op == "Div" and len(ins) == 2 and _scalar(consts, ins[1], math.sqrt(2)):
            chain = _gelu_chain(program, k, only, consts)
            if chain:
                gone.update(chain[:-1])
                new[chain[-1]] = ("_GeluErf", name, [ins[0]], program[chain[-1]][3], {})
        elif op == "MatMul" and len(ins) == 2 and ins[1] in weights and weights[ins[1]].ndim == 2:
            add = only(outs[0], "Add")
            bias = add is not None and [i for i in program[add][2] if i != outs[0]]
            if bias and len(bias) == 1 and bias[0] in weights and weights[bias[0]].ndim == 1:
                gone.add(k)
                new[add] = ("_Linear", name, [ins[0], ins[1], bias[0]], program[add][3], {})
    return [new.get(k, step) for k, step in enumerate(program) if k not in gone]


def _gelu_chain(program, div: int, only, consts) -> list[int] | None:
    """The step indices of ``Div -> Erf -> Add 1 -> Mul -> Mul`` computing exact GELU of the Div's input."""
    x = program[div][2][0]
    erf = only(program[div][3][0], "Erf")
    add = erf is not None and only(program[erf][3][0], "Add")
    if not add or not any(_scalar(consts, i, 1.0) for i in program[add][2]):
        return None
    m1 = only(program[add][3][0], "Mul")
    m2 = m1 is not None and only(program[m1][3][0], "Mul")
    if not m2:
        return None
    factors = [i for i in program[m1][2] + program[m2][2] if i not in (program[add][3][0], program[m1][3][0])]
    if len(factors) != 2 or factors.count(x) != 1:
        return None
    other = factors[1 - factors.index(x)]
    if not _scalar(consts, other, 0.5):
        return None
    return [div, erf, add, m1, m2]


def _linear(x, w, b):
    return F.linear(x, w.t(), b)


FUSED = {"_GeluErf": lambda x: F.gelu(x), "_Linear": _linear}
