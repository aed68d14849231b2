"""The activation catalogue (:data:`ACTIVATIONS`: each activation's float64 forms, ONNX ops, torch references, the
twin's call) and recognising one from its values.

Exporters spell one activation in many algebraically equal ways (commuted and reassociated
products, reciprocal constants, ``Pow(x, 3)`` or ``x*x*x``, ``Sigmoid`` or ``1/(1+Exp(-x))``,
``Clip`` or ``Min(Relu(.), 6)``, constants folded together). A site finder that matches
spellings misses some and mistakes others. Here a candidate is judged by what it computes:
its elementwise ops are evaluated in float64 on a fixed grid of inputs (:func:`evaluate`) and
the values compared with each catalogue function (:func:`identify`); a parameter a spelling
may carry (a Swish's beta, a LeakyRelu's slope, a HardSigmoid's line) is read off one or two
grid points and then checked on the whole grid.

:data:`ACTIVATIONS` is the catalogue, one entry per activation: its float64 forms, its ONNX op,
its torch references and the torch call the twin runs, by name (this floor imports numpy only).
The ONNX and FX finders, the layout rules and the twin all read it.

The vocabulary of :data:`OPS` is ONNX's op names; the torch.fx adapter translates its calls
into the same names, so both graph kinds are judged by one table.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

# Inputs every candidate is evaluated on: dense where activations bend, wide enough that a
# saturating function shows it saturates, and holding the points parameters are read at.
GRID = np.unique(np.round(np.concatenate([np.linspace(-12.0, 12.0, 241), np.linspace(-3.0, 3.0, 121)]), 9))
# Agreement with a reference, pointwise: |g - f| <= ATOL + RTOL * |f|. Wide enough for constants
# written in float16 (1/6 as 0.16663) or to four digits (0.7071), narrow enough that a GELU whose
# cubic coefficient is 0.05 instead of 0.044715 (2.7e-3 off near x = 2) is not a GELU.
ATOL, RTOL = 2e-4, 1e-3

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _softplus(x):
    return np.logaddexp(0.0, x)


def _clip(x, lo=None, hi=None):
    lo = -np.inf if lo is None else lo
    hi = np.inf if hi is None else hi
    return np.minimum(np.maximum(x, lo), hi)


def _elu(x, alpha=1.0):
    with np.errstate(over="ignore"):
        return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


SELU_ALPHA, SELU_GAMMA = 1.6732632423543772, 1.0507009873554805


def _gelu(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _hardsigmoid(x, alpha=0.2, beta=0.5):
    return _clip(alpha * x + beta, 0.0, 1.0)


def _safe_div(a, b):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return a / b


def _safe_pow(a, b):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.power(a, b)


def _safe_log(a):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(a)


def _safe_exp(a):
    with np.errstate(over="ignore"):
        return np.exp(a)


# op -> f(*operands, **attributes) in float64; every op is elementwise (numpy broadcasting).
OPS: dict[str, Callable[..., np.ndarray]] = {
    "Identity": lambda a: a,
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _safe_div, "Pow": _safe_pow,
    "Neg": np.negative, "Abs": np.abs, "Reciprocal": lambda a: _safe_div(1.0, a), "Sqrt": lambda a: _safe_pow(a, 0.5),
    "Exp": _safe_exp, "Log": _safe_log, "Log1p": lambda a: _safe_log(1.0 + a), "Expm1": lambda a: _safe_exp(a) - 1,
    "Erf": _erf, "Tanh": np.tanh, "Sigmoid": _sigmoid, "Softplus": _softplus,
    "Softsign": lambda a: a / (1 + np.abs(a)),
    "Relu": lambda a: np.maximum(a, 0.0),
    "LeakyRelu": lambda a, alpha=0.01: np.where(a >= 0, a, alpha * a),
    "Elu": _elu,
    "Celu": lambda a, alpha=1.0: np.maximum(a, 0) + np.minimum(0, alpha * np.expm1(np.minimum(a, 0) / alpha)),
    "Selu": lambda a, alpha=SELU_ALPHA, gamma=SELU_GAMMA: gamma * _elu(a, alpha),
    "ThresholdedRelu": lambda a, alpha=1.0: np.where(a > alpha, a, 0.0),
    "HardSigmoid": _hardsigmoid,
    "HardSwish": lambda a: a * _hardsigmoid(a, 1 / 6, 0.5),
    "Silu": lambda a: a * _sigmoid(a),
    "Mish": lambda a: a * np.tanh(_softplus(a)),
    "Gelu": _gelu,
    "Clip": _clip,
    "Min": lambda *a: functools.reduce(np.minimum, a), "Max": lambda *a: functools.reduce(np.maximum, a),
    "Where": lambda c, a, b: np.where(c, a, b),
    "Greater": np.greater, "Less": np.less, "GreaterOrEqual": np.greater_equal, "LessOrEqual": np.less_equal,
}
# Nonlinear ops that are, or sit inside, activations: one that merges back with its own input's
# ancestors without computing a catalogue function is reported, never guessed.
SQUASHING = frozenset({"Erf", "Tanh", "Sigmoid", "Exp", "Expm1", "Log", "Log1p", "Softplus", "Softsign", "Relu",
                       "LeakyRelu", "Elu", "Celu", "Selu", "ThresholdedRelu", "HardSigmoid", "HardSwish", "Silu",
                       "Mish", "Gelu", "Clip", "Min", "Max"})
# Where the finder starts looking: every catalogue function's spelling holds one of these (a Softsign its
# Abs, a LeakyRelu spelled Where(x > 0, x, a*x) its Where), while a Div, Pow or Sqrt alone never makes one.
ANCHORS = SQUASHING | {"Abs", "Where"}
# Ops that keep the number: they neither start nor lengthen a composite (a Cast before an activation
# keeps the site where the activation reads).
VALUE_KEEPING = frozenset({"Identity"})


def evaluate(op: str, operands: list, attributes: dict | None = None) -> np.ndarray:
    """``op`` applied to float64 (or bool) operands; overflow, 0/0 and the like give inf or nan, silently
    (a candidate that computes them is simply no catalogue function)."""
    with np.errstate(all="ignore"):
        return OPS[op](*operands, **(attributes or {}))


def _at(g: np.ndarray, x: float) -> float:
    return float(g[int(np.argmin(np.abs(GRID - x)))])


def _fit_swish(g):
    s = _at(g, 1.0)
    if not 0.0 < s < 1.0:
        return None
    beta = math.log(s / (1 - s))
    return {"beta": beta} if beta > 0 else None


def _fit_leaky(g):
    alpha = -_at(g, -1.0)
    return {"alpha": alpha} if 0.0 < alpha < 1.0 else None


def _fit_elu(g):
    alpha = _at(g, -1.0) / math.expm1(-1.0)
    return {"alpha": alpha} if alpha > 0.0 else None


def _fit_hardsigmoid(g):
    beta = _at(g, 0.0)
    alpha = (_at(g, 0.1) - _at(g, -0.1)) / 0.2
    return {"alpha": alpha, "beta": beta} if 0.0 < beta < 1.0 and alpha > 0.0 else None



@dataclass(frozen=True)
class TorchCall:
    """A torch function by qualified name (this floor imports no torch), the parameters it reads as keywords
    ``(parameter, keyword, default)`` -- an ONNX op's attributes or a form's fitted parameters -- and fixed keywords."""

    function: str
    params: tuple[tuple[str, str, Any], ...] = ()
    fixed: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Form:
    """One variant of an activation: its name (the paper's or framework's), ``f(x, **params)`` in float64, for a
    parametric family ``fit(g)`` reading the parameters off the values ``g`` on :data:`GRID` (None where they cannot
    be read or are out of range), and the torch call computing it (None where no torch function computes every
    spelling's values to rounding: the twin then runs the spelling as written)."""

    name: str
    f: Callable[..., np.ndarray]
    fit: Callable[[np.ndarray], dict | None] | None = None
    torch: TorchCall | None = None


@dataclass(frozen=True)
class Argument:
    """An argument a torch reference must be called with to be this activation: by keyword ``name`` or at
    ``position`` (a module's attribute ``name``), ``default`` when absent, and the ``value`` it must hold."""

    name: str
    position: int
    default: Any
    value: Any


@dataclass(frozen=True)
class ActivationKind:
    """One catalogue activation: its float64 ``forms``; the ONNX op types that are it alone; its torch references by
    qualified name (``module:torch.nn.ReLU``, ``function:torch.nn.functional.relu``, ``aten:relu.default``,
    ``method:relu``), and ``when``, the arguments under which ``torch_when``'s references are it; the torch call the
    twin runs for its ONNX op; whether it keeps the layout of its input (every elementwise one does); and the ops that
    appear only inside its spellings (``parts``: a lone one is reported, never a site)."""

    name: str
    forms: tuple[Form, ...] = ()
    onnx_ops: frozenset[str] = frozenset()
    torch: tuple[str, ...] = ()
    torch_when: tuple[str, ...] = ()
    when: tuple[Argument, ...] = ()
    twin: TorchCall | None = None
    keeps_layout: bool = True
    parts: frozenset[str] = frozenset()


def _torch(modules=(), functions=(), aten=(), methods=()) -> tuple[str, ...]:
    return tuple([f"module:torch.nn.{m}" for m in modules] + [f"function:{f}" for f in functions]
                 + [f"aten:{a}" for a in aten] + [f"method:{m}" for m in methods])


def _kind(name, forms=(), onnx=(), torch=(), twin=None, **more) -> ActivationKind:
    return ActivationKind(name, tuple(forms), frozenset(onnx), torch, twin=twin, **more)


def _f(name: str, *params, **fixed) -> TorchCall:
    """``torch.nn.functional.<name>`` reading ``params`` ``(parameter, keyword, default)``, with ``fixed`` keywords."""
    return TorchCall(f"torch.nn.functional.{name}", tuple(params), tuple(fixed.items()))


_ALPHA = ("alpha", "alpha", 1.0)
_BOUNDS = (Argument("min_val", 1, -1.0, 0.0), Argument("max_val", 2, 1.0, 6.0))

# The catalogue: every activation the finders know, ONNX and torch.fx alike. One entry is all a new one needs.
ACTIVATIONS: tuple[ActivationKind, ...] = (
    _kind("Relu", [Form("relu", lambda x: np.maximum(x, 0.0), torch=_f("relu"))], ["Relu"], _torch(["ReLU"], ["torch.nn.functional.relu", "torch.relu"],
                                            ["relu.default", "relu_.default"], ["relu"]), _f("relu")),
    _kind("Clip(ReLU6)", [Form("relu6", lambda x: _clip(x, 0.0, 6.0), torch=_f("relu6"))], (),  # ONNX: Clip(0, 6)
          _torch(["ReLU6"], ["torch.nn.functional.relu6"]),
          torch_when=_torch(["Hardtanh"], ["torch.nn.functional.hardtanh"], ["hardtanh.default", "hardtanh_.default"]),
          when=_BOUNDS),
    _kind("Clip(ReLU)"),  # ONNX only: Clip(min=0) without max
    _kind("Gelu", [Form("erf", _gelu, torch=_f("gelu")),
                   Form("tanh", lambda x: _gelu(x, "tanh"), torch=_f("gelu", approximate="tanh"))],
          ["Gelu"], _torch(["GELU"], ["torch.nn.functional.gelu"], ["gelu.default"]),
          _f("gelu", ("approximate", "approximate", "none")), parts=frozenset({"Erf"})),
    _kind("SiLU", [Form("swish", lambda x, beta: x * _sigmoid(beta * x), _fit_swish)], (),
          _torch(["SiLU"], ["torch.nn.functional.silu"], ["silu.default", "silu_.default"])),
    _kind("HardSwish", [Form("hardswish", lambda x: x * _hardsigmoid(x, 1 / 6, 0.5), torch=_f("hardswish"))],
          ["HardSwish"], _torch(["Hardswish"], ["torch.nn.functional.hardswish"],
                                ["hardswish.default", "hardswish_.default"]), _f("hardswish")),
    _kind("Mish", [Form("mish", lambda x: x * np.tanh(_softplus(x)), torch=_f("mish"))], ["Mish"],
          _torch(["Mish"], ["torch.nn.functional.mish"], ["mish.default"]), _f("mish")),
    _kind("Softplus", [Form("softplus", _softplus)], ["Softplus"],  # Log(1 + Exp(x)) overflows where torch's does not
          _torch(["Softplus"], ["torch.nn.functional.softplus"], ["softplus.default"]), _f("softplus")),
    _kind("Elu", [Form("elu", _elu, _fit_elu, _f("elu", _ALPHA))], ["Elu"],
          _torch(["ELU"], ["torch.nn.functional.elu"], ["elu.default"]), _f("elu", _ALPHA)),
    _kind("LeakyRelu", [Form("leaky relu", lambda x, alpha: np.where(x >= 0, x, alpha * x), _fit_leaky,
                             _f("leaky_relu", ("alpha", "negative_slope", 0.01)))], ["LeakyRelu"],
          _torch(["LeakyReLU"], ["torch.nn.functional.leaky_relu"], ["leaky_relu.default"]),
          _f("leaky_relu", ("alpha", "negative_slope", 0.01))),
    _kind("Selu", [Form("selu", lambda x: SELU_GAMMA * _elu(x, SELU_ALPHA), torch=_f("selu"))], ["Selu"],
          _torch(["SELU"], ["torch.nn.functional.selu", "torch.selu"], ["selu.default"]), _f("selu")),
    _kind("Celu", (), ["Celu"], _torch(["CELU"], ["torch.nn.functional.celu"], ["celu.default"]), _f("celu", _ALPHA)),
    _kind("PRelu", (), ["PRelu"],  # the twin broadcasts ONNX's slope itself
          _torch(["PReLU"], ["torch.nn.functional.prelu"], ["prelu.default", "_prelu_kernel.default"])),
    _kind("Tanh", [Form("tanh", np.tanh)], ["Tanh"], _torch(["Tanh"], ["torch.tanh"], ["tanh.default"], ["tanh"]),
          TorchCall("torch.tanh")),
    _kind("Sigmoid", [Form("sigmoid", _sigmoid, torch=TorchCall("torch.sigmoid"))], ["Sigmoid"],
          _torch(["Sigmoid"], ["torch.sigmoid"], ["sigmoid.default"], ["sigmoid"]), TorchCall("torch.sigmoid")),
    _kind("HardSigmoid", [Form("hardsigmoid", _hardsigmoid, _fit_hardsigmoid)], ["HardSigmoid"],  # the twin: its line
          _torch(["Hardsigmoid"], ["torch.nn.functional.hardsigmoid"], ["hardsigmoid.default"])),
    _kind("ThresholdedRelu", (), ["ThresholdedRelu"],
          twin=_f("threshold", ("alpha", "threshold", 1.0), value=0.0)),
    _kind("Softsign", [Form("softsign", lambda x: x / (1 + np.abs(x)), torch=_f("softsign"))], ["Softsign"],
          _torch(["Softsign"], ["torch.nn.functional.softsign"]), _f("softsign")),
)


def references() -> tuple[tuple[str, Form], ...]:
    """Every catalogue function as ``(kind, form)``, in the catalogue's order."""
    return _references(ACTIVATIONS)


@functools.lru_cache(maxsize=4)
def _references(table: tuple[ActivationKind, ...]) -> tuple[tuple[str, Form], ...]:
    return tuple((k.name, form) for k in table for form in k.forms)


def form_of(kind: str, name: str) -> Form:
    """The form ``name`` of the catalogue activation ``kind``."""
    return next(f for k, f in references() if k == kind and f.name == name)


def parts() -> dict[str, str]:
    """Ops that appear only inside a catalogue activation's spellings, each with its activation."""
    return {op: k.name for k in ACTIVATIONS for op in k.parts}


@dataclass(frozen=True)
class Identified:
    """What a candidate computes: the reference it agrees with, its parameters and the worst relative error."""

    kind: str
    form: str
    params: dict
    error: float

    def describe(self) -> str:
        if self.kind == "SiLU" and abs(self.params["beta"] - 1.0) <= 1e-3:
            return "silu"
        shown = ", ".join(f"{k}={v:.4g}" for k, v in self.params.items())
        return f"{self.form}({shown})" if shown else self.form


def _error(g: np.ndarray, f: np.ndarray) -> float:
    """The worst pointwise error in units of the tolerance (<= 1 agrees)."""
    with np.errstate(invalid="ignore"):
        err = np.abs(g - f) / (ATOL + RTOL * np.abs(f))
    return float(np.max(err)) if np.all(np.isfinite(err)) else math.inf


def _fixed() -> tuple[list[tuple[str, Form]], np.ndarray, np.ndarray]:
    """The forms without parameters, their values on GRID and the tolerance there (computed once per catalogue)."""
    return _fixed_of(references())


@functools.lru_cache(maxsize=4)
def _fixed_of(refs: tuple[tuple[str, Form], ...]) -> tuple[list[tuple[str, Form]], np.ndarray, np.ndarray]:
    fixed = [(k, f) for k, f in refs if f.fit is None]
    values = np.stack([f.f(GRID) for _, f in fixed])
    return fixed, values, ATOL + RTOL * np.abs(values)


def closest(g: np.ndarray) -> Identified | None:
    """The catalogue function nearest to the values ``g`` on :data:`GRID` (agreeing or not), or None for non-finite
    values."""
    if g.shape != GRID.shape or g.dtype == bool or not np.all(np.isfinite(g)):
        return None
    fixed, values, tol = _fixed()
    errors = np.max(np.abs(g - values) / tol, axis=1)
    i = int(np.argmin(errors))
    best = Identified(fixed[i][0], fixed[i][1].name, {}, float(errors[i]))
    for kind, form in references():
        if form.fit is None:
            continue
        params = form.fit(g)
        if params is None:
            continue
        err = _error(g, form.f(GRID, **params))
        if err < best.error:
            best = Identified(kind, form.name, params, err)
    return best


def identify(g: np.ndarray) -> Identified | None:
    """The catalogue function the values ``g`` on :data:`GRID` agree with (within ATOL + RTOL), else None."""
    best = closest(g)
    return best if best is not None and best.error <= 1.0 else None
