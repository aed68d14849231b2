"""The catalogue's activation functions in float64, and recognising one from the values it computes.

Exporters spell one activation in many algebraically equal ways (commuted and reassociated
products, reciprocal constants, ``Pow(x, 3)`` or ``x*x*x``, ``Sigmoid`` or ``1/(1+Exp(-x))``,
``Clip`` or ``Min(Relu(.), 6)``, constants folded together). A site finder that matches
spellings misses some and mistakes others. Here a candidate is judged by what it computes:
its elementwise ops are evaluated in float64 on a fixed grid of inputs (:func:`evaluate`) and
the values compared with each reference function below (:func:`identify`); a parameter a
spelling may carry (a Swish's beta, a LeakyRelu's slope, a HardSigmoid's line) is read off
one or two grid points and then checked on the whole grid.

The vocabulary of :data:`OPS` is ONNX's op names; the torch.fx adapter translates its calls
into the same names, so both graph kinds are judged by one table.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

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


@dataclass(frozen=True)
class Reference:
    """One catalogue function: ``kind`` (a catalogue entry's name), ``form`` (how the paper or framework
    names this variant), ``f(x, **params)`` and, for a parametric family, ``fit(g)`` reading the parameters
    off the candidate's values ``g`` on :data:`GRID` (None where they cannot be read or are out of range)."""

    kind: str
    form: str
    f: Callable[..., np.ndarray]
    fit: Callable[[np.ndarray], dict | None] | None = None


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


REFERENCES: tuple[Reference, ...] = (
    Reference("Relu", "relu", lambda x: np.maximum(x, 0.0)),
    Reference("Clip(ReLU6)", "relu6", lambda x: _clip(x, 0.0, 6.0)),
    Reference("LeakyRelu", "leaky relu", lambda x, alpha: np.where(x >= 0, x, alpha * x), _fit_leaky),
    Reference("Elu", "elu", _elu, _fit_elu),
    Reference("Selu", "selu", lambda x: SELU_GAMMA * _elu(x, SELU_ALPHA)),
    Reference("Gelu", "erf", _gelu),
    Reference("Gelu", "tanh", lambda x: _gelu(x, "tanh")),
    Reference("SiLU", "swish", lambda x, beta: x * _sigmoid(beta * x), _fit_swish),
    Reference("HardSwish", "hardswish", lambda x: x * _hardsigmoid(x, 1 / 6, 0.5)),
    Reference("HardSigmoid", "hardsigmoid", _hardsigmoid, _fit_hardsigmoid),
    Reference("Mish", "mish", lambda x: x * np.tanh(_softplus(x))),
    Reference("Softplus", "softplus", _softplus),
    Reference("Sigmoid", "sigmoid", _sigmoid),
    Reference("Tanh", "tanh", np.tanh),
    Reference("Softsign", "softsign", lambda x: x / (1 + np.abs(x))),
)


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


@functools.lru_cache(maxsize=1)
def _fixed() -> tuple[list[Reference], np.ndarray, np.ndarray]:
    """The references without parameters, their values on GRID and the tolerance there (computed once)."""
    refs = [r for r in REFERENCES if r.fit is None]
    values = np.stack([r.f(GRID) for r in refs])
    return refs, values, ATOL + RTOL * np.abs(values)


def closest(g: np.ndarray) -> Identified | None:
    """The reference nearest to the values ``g`` on :data:`GRID` (agreeing or not), or None for non-finite values."""
    if g.shape != GRID.shape or g.dtype == bool or not np.all(np.isfinite(g)):
        return None
    refs, values, tol = _fixed()
    errors = np.max(np.abs(g - values) / tol, axis=1)
    i = int(np.argmin(errors))
    best = Identified(refs[i].kind, refs[i].form, {}, float(errors[i]))
    for ref in REFERENCES:
        if ref.fit is None:
            continue
        params = ref.fit(g)
        if params is None:
            continue
        err = _error(g, ref.f(GRID, **params))
        if err < best.error:
            best = Identified(ref.kind, ref.form, params, err)
    return best


def identify(g: np.ndarray) -> Identified | None:
    """The catalogue function the values ``g`` on :data:`GRID` agree with (within ATOL + RTOL), else None."""
    best = closest(g)
    return best if best is not None and best.error <= 1.0 else None
