"""Arguments checked against a function's annotations: the one type check every room can use.

``int | None``, ``Selection``, ``tuple[int, int]``, ``dict[str, int | None]``, ``list[str | Path]``:
:func:`conforms` reads the annotation as written (containers element by element; ``Path`` means
any path Python accepts: ``str``, ``bytes``, ``os.PathLike``; ``bool`` is no ``int``) and
:func:`typed` refuses a value of another type with one :class:`UsageError` line naming the
parameter, before the function runs. numpy scalars count as the Python numbers they hold.
"""
from __future__ import annotations

import collections.abc
import functools
import inspect
import types
import typing
from pathlib import Path

import numpy as np

from mstransform.core.errors import UsageError
from mstransform.core.guards import is_path


def describe(hint) -> str:
    """An annotation in the words of a message: ``int | None`` -> ``int or None``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if hint is type(None):
        return "None"
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else describe(a) for a in args)}]"
    return getattr(hint, "__name__", str(hint))


def conforms(value, hint) -> bool:
    """Whether ``value`` is of the annotated type ``hint`` (containers checked element by element)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or hint is inspect.Parameter.empty:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if hint is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if hint is Path:
        return is_path(value)
    if origin is list:
        return isinstance(value, (list, tuple)) and (not args or all(conforms(v, args[0]) for v in value))
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return not args or all(conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(conforms(v, a) for v, a in zip(value, args))
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, collections.abc.Mapping) and (not args or all(
            conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items()))
    if origin is collections.abc.Callable:
        return callable(value)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def plain(value):
    """numpy scalars as the Python numbers the checks downstream expect."""
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def check_types(fn, arguments: dict, skip=()) -> dict:
    """``arguments`` (bound to ``fn``'s parameters) with numpy scalars made Python numbers, each checked
    against its annotation except those in ``skip``; a None for a parameter whose default is None passes."""
    hints = hints_of(fn)
    params = inspect.signature(fn).parameters
    out = {}
    for name, value in arguments.items():
        value = plain(value)
        hint = hints.get(name)
        if hint is not None and name not in skip and not conforms(value, hint):
            if not (value is None and params[name].default is None):
                raise UsageError(f"must be {describe(hint)}, not {type(value).__name__}", param=name)
        out[name] = value
    return out


@functools.cache
def hints_of(fn) -> dict:
    """``fn``'s annotations, evaluated in its module."""
    return typing.get_type_hints(fn)


def typed(fn):
    """Decorate ``fn``: every argument is checked against its annotation first (:func:`check_types`)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)  # a call of the wrong shape is Python's own TypeError
        bound.arguments.update(check_types(fn, dict(bound.arguments)))
        return fn(*bound.args, **bound.kwargs)

    return wrapper
