"""Typed options shared by every room: enums where the papers name a choice, and the
site selection and alpha plan as small immutable objects.

The command line builds these once from its strings (``AlphaPlan.parse``); the API takes
them or plain numbers, and nothing below the CLI compares option strings.
"""
from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass

from mstransform.core.errors import UsageError


class Placement(str, enum.Enum):
    """Where sparsify operators go (paper 1: before activations; official code: + residual outputs;
    paper 2: before linear layers)."""

    ACTIVATIONS = "activations"
    ACTIVATIONS_RESIDUAL = "activations+residual"
    LINEAR_INPUTS = "linear-inputs"


class Mode(str, enum.Enum):
    """``meansparse``: threshold alpha*sigma_c around a center; ``forged``: center 0, threshold
    alpha*max|x| (the forged function of the second paper)."""

    MEANSPARSE = "meansparse"
    FORGED = "forged"


class Center(str, enum.Enum):
    """The center of the blocked band (paper 1, ablation A.7)."""

    MEAN = "mean"
    ZERO = "zero"
    GLOBAL = "global"


class Precision(str, enum.Enum):
    """The float type of a written model: fp32 as exported, or converted for strongly typed engines."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class Device(str, enum.Enum):
    """Where models run: maps to ONNX Runtime providers and torch devices."""

    CPU = "cpu"
    CUDA = "cuda"


class Runtime(str, enum.Enum):
    """Which inference runtime runs an ONNX file: both read it directly, with no Python model code."""

    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


class Formulation(str, enum.Enum):
    """``where``: Sub/Abs/Less/Where; ``float``: the same values with no bool tensor; ``bounds``: the same
    decisions as two comparisons of x with exact per-channel bounds (docs/cpu-layout.md)."""

    WHERE = "where"
    FLOAT = "float"
    BOUNDS = "bounds"


def choice(enum_type: type[enum.Enum], value, param: str):
    """``value`` as a member of ``enum_type``; a one-line UsageError naming ``param`` otherwise."""
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(value)
    except ValueError:
        names = ", ".join(m.value for m in enum_type)
        raise UsageError(f"must be one of {names}, not {value!r}", param=param) from None


ALPHA_MAX = 100.0


def check_alpha(alpha, param: str = "alpha") -> float:
    """A finite alpha in [0, 100]; above that almost every value would be replaced by the center."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or math.isnan(alpha) or math.isinf(alpha):
        raise UsageError(f"must be a finite number, got {alpha!r}", param=param)
    if alpha < 0:
        raise UsageError(f"must be >= 0, got {alpha:g}", param=param)
    if alpha > ALPHA_MAX:
        raise UsageError(f"{alpha:g} would replace almost every value by the center; use a value below 100",
                         param=param)
    return float(alpha)


def check_pattern(pattern: str | None, param: str) -> str | None:
    """A regular expression that compiles (None passes through)."""
    if pattern is None:
        return None
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as e:
        raise UsageError(f"{pattern!r} is not a valid regular expression ({e})", param=param) from None
    return pattern


@dataclass(frozen=True)
class AlphaPlan:
    """One default alpha and ``(site pattern, alpha)`` overrides; a later override wins."""

    base: float = 0.2
    overrides: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "base", check_alpha(self.base))
        for pattern, value in self.overrides:
            check_pattern(pattern, "alpha")
            check_alpha(value, f"alpha for {pattern!r}")

    @classmethod
    def of(cls, alpha: "float | AlphaPlan") -> "AlphaPlan":
        return alpha if isinstance(alpha, AlphaPlan) else cls(check_alpha(alpha))

    @classmethod
    def parse(cls, specs: list[str] | None, default: float = 0.2) -> "AlphaPlan":
        """``--alpha`` strings: at most one plain number and any ``SITE_PATTERN=NUMBER``."""
        if not specs:
            return cls(default)
        base, overrides = None, []
        for spec in specs:
            pattern, sep, text = spec.rpartition("=")
            try:
                number = float(text if sep else spec)
            except ValueError:
                raise UsageError(f"{spec!r}: expected a number or SITE_PATTERN=NUMBER", param="alpha") from None
            if sep:
                overrides.append((check_pattern(pattern, "alpha"), check_alpha(number, f"alpha for {pattern!r}")))
            elif base is not None:
                raise UsageError("takes one plain value; use SITE_PATTERN=NUMBER for per-site values", param="alpha")
            else:
                base = check_alpha(number)
        return cls(default if base is None else base, tuple(overrides))

    def per_site(self, names: list[str]) -> dict[str, float]:
        """Each site's alpha; an override that matches no site is an error (a typo would go unnoticed)."""
        out = {n: self.base for n in names}
        for pattern, value in self.overrides:
            hit = [n for n in names if n == pattern or re.fullmatch(pattern, n)]
            if not hit:
                raise UsageError(f"override {pattern!r} matches no site; `mstransform sites` lists them",
                                 param="alpha")
            for n in hit:
                out[n] = value
        return out

    def describe(self) -> str:
        """The form recorded in a hardened model's metadata: ``0.2;block1.*=0.1``."""
        return repr(self.base) + "".join(f";{p}={v!r}" for p, v in self.overrides)


@dataclass(frozen=True)
class Selection:
    """Which sites a calibration covered, recorded in the stats file so harden finds the same ones.

    ``framework`` says where the site names come from (``onnx`` or ``fx``): FX names carry
    over to a dynamo ONNX export, tensor names do not.
    """

    include: str | None = None
    exclude: str | None = None
    include_se: bool = False
    axes: tuple[tuple[str, int], ...] = ()
    framework: str = "onnx"

    def __post_init__(self):
        check_pattern(self.include, "include")
        check_pattern(self.exclude, "exclude")
        object.__setattr__(self, "axes", tuple(sorted((str(k), int(v)) for k, v in dict(self.axes).items())))

    def rejects(self, keys: tuple[str, ...]) -> str | None:
        """Why include/exclude drop a site known by ``keys`` (its name, its tensor's name), or None."""
        if self.include and not any(re.search(self.include, k) for k in keys):
            return f"not selected by include pattern {self.include!r}"
        if self.exclude and any(re.search(self.exclude, k) for k in keys):
            return f"excluded by pattern {self.exclude!r}"
        return None

    def to_json(self) -> str:
        return json.dumps({"include": self.include, "exclude": self.exclude, "include_se": self.include_se,
                           "axes": dict(self.axes), "framework": self.framework}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Selection":
        raw = json.loads(text or "{}")
        if not isinstance(raw, dict):
            raise ValueError("selection record is not an object")
        axes = raw.get("axes") or {}
        return cls(raw.get("include"), raw.get("exclude"), bool(raw.get("include_se")),
                   tuple((str(k), int(v)) for k, v in dict(axes).items()), str(raw.get("framework") or "onnx"))


# Upper bounds on sizes a user can ask for, checked before any work: past these, one value hung
# a machine for minutes (thread counts) or crashed inside a library (batch sizes).
MAX_BATCH = 1 << 20
MAX_ITERS = 1_000_000
# The attacks `mstransform eval` runs unless told otherwise: standard (white-box), black-box and
# straight-through (BPDA), side by side.
DEFAULT_ATTACKS = ("apgd-ce", "apgd-dlr", "square", "bpda")


def check_count(value, param: str, *, low: int = 1, high: int | None = None) -> int:
    """An integer in ``[low, high]``; a one-line UsageError naming ``param`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"must be an integer, got {value!r}", param=param)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise UsageError(f"must be {bound}, got {value}", param=param)
    return value
