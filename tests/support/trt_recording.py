"""How the TensorRT stand-in holds to the real bindings: signatures recorded from the wheels, checked on
every call, and classes and enums that record each public name read (``tests/support/trt_standin.py``)."""
from __future__ import annotations

import enum
import functools
import inspect
import re


# --- signatures ------------------------------------------------------------------------------


def _split_top(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[(<" and 1 or ch in "])>" and -1 or 0
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p.strip() for p in [*parts, current] if p.strip()]


def signature_of(text: str) -> inspect.Signature:
    """``name(self: T, a: T, b: T = d) -> R`` as a Signature (``argN`` names are positional only)."""
    inner = text[text.index("(") + 1:text.rindex(") ->")]
    params = []
    for part in _split_top(inner):
        name, _, rest = part.partition(":")
        kind = (inspect.Parameter.POSITIONAL_ONLY if re.fullmatch(r"arg\d+", name.strip())
                else inspect.Parameter.POSITIONAL_OR_KEYWORD)
        default = "<default>" if " = " in rest else inspect.Parameter.empty
        params.append(inspect.Parameter(name.strip(), kind, default=default))
    return inspect.Signature(params)


def _binds(sig: inspect.Signature, args, kwargs) -> bool:
    try:
        sig.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def _checked(fn, recorded: dict, where: str):
    """``fn`` refusing, as pybind11 does, a call that fits none of TensorRT's recorded signatures."""
    texts = recorded.get("overloads") or [recorded["signature"]]
    sigs = [signature_of(t) for t in texts]

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if not any(_binds(sig, args, kwargs) for sig in sigs):
            raise TypeError(f"{where}(): incompatible function arguments; TensorRT takes: {' | '.join(texts)}")
        return fn(*args, **kwargs)

    return call


# --- recording classes and enums -------------------------------------------------------------


class _RecordedType(type):
    def __getattribute__(cls, attr):
        value = type.__getattribute__(cls, attr)
        if not attr.startswith("_"):
            type.__getattribute__(cls, "_standin").touched.add((cls.__name__, attr))
        return value

    def __getattr__(cls, attr):
        raise AttributeError(type.__getattribute__(cls, "_standin").missing(cls.__name__, attr))


class _Recorded:
    __slots__ = ()

    def __init__(self, *args, **kwargs):  # what pybind11 says of a class Python cannot construct
        raise TypeError(f"{type(self).__name__}: No constructor defined!")

    def __getattribute__(self, attr):
        value = object.__getattribute__(self, attr)
        if not attr.startswith("_"):
            type(self)._standin.touched.add((type(self).__name__, attr))
        return value

    def __getattr__(self, attr):
        raise AttributeError(type(self)._standin.missing(type(self).__name__, attr))


class _RecordedEnum(enum.EnumMeta):
    def __getattribute__(cls, attr):
        value = super().__getattribute__(attr)
        standin = type.__getattribute__(cls, "__dict__").get("_standin")
        if standin is not None and not attr.startswith("_"):
            standin.touched.add((type.__getattribute__(cls, "_facts_name"), attr))
        return value

    def __getattr__(cls, attr):
        standin = type.__getattribute__(cls, "__dict__").get("_standin")
        if standin is None or attr.startswith("_"):
            raise AttributeError(attr)
        raise AttributeError(standin.missing(type.__getattribute__(cls, "_facts_name"), attr))


def _enum(name: str, members: dict, standin):
    short = name.rsplit(".", 1)[-1]
    namespace = _RecordedEnum.__prepare__(short, (enum.IntEnum,))
    for member, value in members.items():
        namespace[member] = value
    cls = _RecordedEnum(short, (enum.IntEnum,), namespace)
    type.__setattr__(cls, "_facts_name", name)  # set after creation: not members
    type.__setattr__(cls, "_standin", standin)
    return cls
