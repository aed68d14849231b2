"""The one check of a call's arguments, shared by the command line and the Python API.

Both name what they were given by role (:data:`ROLES`: a parameter or flag name -> the error class
and words of that input or output), and both go through :func:`check_paths` before any work:

* every path is a ``str``, ``bytes`` or ``os.PathLike`` (anything else: one line naming the parameter);
* every input -- the model and the files it references, stats, data, probe, timing cache -- that is
  a FIFO, a device or a socket is refused unopened, one that cannot be read is an error of its class;
* no output is an input, another output or a folder (:func:`~mstransform.core.guards.check_outputs`).

The API's public functions are wrapped by :func:`checked`, which also checks every other argument
against the function's annotations (``int | None``, ``Selection``, ``tuple[int, int]``...),
converts what is unambiguous (``bytes`` and ``os.PathLike`` paths, an ``NpzFile`` or a mapping of
arrays as stats, the command line's ``NAME=AXIS`` spelling of batch axes) and refuses the rest with
a :class:`~mstransform.core.errors.UsageError` naming the parameter -- nothing read, nothing written.
"""
from __future__ import annotations

import enum
import functools
import inspect
import os
from dataclasses import dataclass
from pathlib import Path

from mstransform.core import errors
from mstransform.core.errors import MstError, OutputError, UsageError
from mstransform.core.guards import check_outputs, check_readable, is_path, output_file, path_arg
from mstransform.core.typed import check_types


@dataclass(frozen=True)
class Role:
    error: type[MstError]
    what: str  # what a message calls it: "model file", "data"
    output: bool = False
    folder: bool = False  # a folder is a valid input (images)
    many: bool = False  # a list of paths
    model: bool = False  # an ONNX model: the files it references are inputs too


# Each path parameter (API) or flag destination (command line) by role: the one declaration of a path's
# role. The command line checks every flag whose destination is here, for every command, before it runs.
ROLES = {
    "model": Role(errors.ModelError, "model file", model=True),
    "models": Role(errors.ModelError, "model file", many=True, model=True),
    "base": Role(errors.ModelError, "model file", model=True),  # bench
    "hardened": Role(errors.ModelError, "model file", model=True),  # bench
    "data": Role(errors.DataError, "data", folder=True),
    "probe": Role(errors.DataError, "data", folder=True),
    "eval": Role(errors.DataError, "labelled data", folder=True),
    "stats": Role(errors.StatsError, "stats file"),
    "inputs": Role(errors.StatsError, "stats file", many=True),  # `stats merge`
    "paths": Role(errors.StatsError, "stats file", many=True),  # merge_stats
    "reports": Role(errors.DataError, "report", many=True),  # `eval merge`
    "timing_cache": Role(OutputError, "timing cache"),  # read, and written back by TensorRT
    **{name: Role(OutputError, "output", output=True)
       for name in ("output", "stats_output", "save_stats", "json", "csv", "plot", "log_file")},
}


def check_paths(named: dict, *, models_out: tuple[str, ...] = ()) -> dict:
    """``named`` (parameter -> value) with every path of a role checked and made a :class:`Path`.

    Values that are not paths (an ``onnx_ir`` model, arrays, :class:`Stats`, an iterable of batches)
    are left to the function that takes them. ``models_out`` names the outputs that are ONNX models
    (each also writes ``OUT.data``)."""
    out = dict(named)
    inputs, outputs, models = [], [], []
    for name, value in named.items():
        role = ROLES.get(name)
        if role is None or value is None:
            continue
        if role.many:
            if is_path(value) or not isinstance(value, (list, tuple)):
                raise UsageError(f"must be a list of {role.what} paths, not {type(value).__name__}", param=name)
            values = list(value)
        else:
            values = [value]
        if role.output:
            path_arg(value, name)  # its type first: str, bytes or os.PathLike
            path = output_file(value)
            out[name] = path
            outputs.append(path)
            if name in models_out:
                models.append(path)
            continue
        converted = []
        for v in values:
            if not is_path(v):
                converted.append(v)
                continue
            p = path_arg(v, name, role.error)
            if not (role.model and os.path.isdir(p)):  # a folder given as a model: load_model says it
                check_readable(p, role.error, role.what, folder=role.folder, missing_ok=True)
            converted.append(p)
            inputs.append((p, role.model))
        out[name] = converted if role.many else converted[0]
    if outputs:
        from mstransform.passes.graph.external_data import model_references

        read = [p for p, _ in inputs] + [r for p, is_model in inputs if is_model for r in _references(p)]
        if _is_onnx_ir(named.get("model")):  # a model in memory may still read external data files
            read += model_references(named["model"])
        check_outputs(outputs, read, models=models)
    return out


def _references(path: Path) -> list[Path]:
    """The files the model at ``path`` references, read once per version of the file: the command line
    checks its paths, then the API function it calls checks them again, and a big model's proto is
    parsed for each."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return []  # missing or unreadable: the reader says so
    return list(_references_of(os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=16)
def _references_of(path: str, *version) -> tuple[Path, ...]:
    from mstransform.passes.graph.external_data import model_references

    return tuple(model_references(Path(path)))


def _is_onnx_ir(value) -> bool:
    return type(value).__module__.startswith("onnx_ir")


def is_torch(value) -> bool:
    """A torch ``nn.Module``, ``GraphModule`` or ``torch.export`` program (by what it is, not by import)."""
    return type(value).__module__.startswith("torch") or hasattr(value, "named_modules")


# -- parameters with a rule of their own (CONVERT) ---------------------------------------------
def _batch_axes(value, name):
    from mstransform.runtime.inputs import batch_axes_arg

    return batch_axes_arg(value, name)


def _stats(value, name):
    from mstransform.core.stats import as_stats

    return value if value is None or is_path(value) else as_stats(value, name)


def _model(value, name):
    if value is None or is_path(value) or _is_onnx_ir(value) or is_torch(value):
        return value
    raise UsageError(f"must be an ONNX file path or an onnx_ir model, not {type(value).__name__}", param=name)


def _models(value, name):
    if isinstance(value, (list, tuple)):
        for v in value:
            _model(v, name)
    return value


def _callback(value, name):
    if value is None or callable(value):
        return value
    raise UsageError(f"must be a function taking one line of text, or None, not {type(value).__name__}", param=name)


def _choice(enum_name: str):
    def convert(value, name):
        from mstransform.core import options

        return value if value is None else options.choice(getattr(options, enum_name), value, name)

    return convert


def _runtime(value, name):
    """A runtime by its row of :data:`mstransform.runtime.session.RUNTIMES` (a name or a ``Runtime``): its name,
    so that a runtime added to that table alone is accepted."""
    from mstransform.runtime.session import opener

    name = value.value if isinstance(value, enum.Enum) else value
    if name is not None:
        opener(name)  # refuses a name the table lacks
    return name


def _example(value, name):
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or not value:
        raise UsageError(f"must be a non-empty tuple of example inputs (tensors), not {value!r:.40}", param=name)
    return tuple(value)


def _batch_range(value, name):
    from mstransform.core.options import MAX_BATCH

    if value is None:
        return None
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok or not 1 <= value[0] <= value[1] <= MAX_BATCH:
        raise UsageError(f"must be (MIN, MAX) batch sizes with 1 <= MIN <= MAX <= {MAX_BATCH}, not {value!r:.40}",
                         param=name)
    return tuple(value)


def _count(value, name):
    from mstransform.core.options import MAX_BATCH, check_count

    if value is None:
        return None
    if name == "seed":  # what numpy's generators take
        return check_count(value, name, low=0, high=2**32 - 1)
    return check_count(value, name, high=MAX_BATCH if name == "batch_size" else None)


CONVERT = {  # parameter name -> its rule; these skip the annotation check (the rule is stricter)
    "model": _model, "models": _models, "stats": _stats, "batch_axes": _batch_axes,
    "batch_size": _count, "limit": _count, "seed": _count, "example": _example, "dynamic_batch": _batch_range,
    "log": _callback, "runtime": _runtime,
    **{name: _choice(enum) for name, enum in (("device", "Device"), ("mode", "Mode"),
                                              ("center", "Center"), ("formulation", "Formulation"),
                                              ("placement", "Placement"), ("precision", "Precision"))},
}


def check_arguments(fn, arguments: dict, *, models_out: tuple[str, ...] = ()) -> dict:
    """``arguments`` (bound to ``fn``'s parameters) checked and converted; see the module's docstring."""
    params = inspect.signature(fn).parameters
    out = {}
    for name, value in check_types(fn, arguments, skip=(*ROLES, *CONVERT)).items():
        default = params[name].default
        if value is None and default is not None and (name in ROLES or name in CONVERT):
            raise UsageError("is required (got None)" if default is params[name].empty else
                             f"is None; leave it out for its default ({default!r:.40})", param=name)
        if name in CONVERT:
            value = CONVERT[name](value, name)
        out[name] = value
    return check_paths(out, models_out=models_out)


def checked(fn=None, *, models_out: tuple[str, ...] = ()):
    """Decorate a public function: its arguments go through :func:`check_arguments` first."""
    if fn is None:
        return functools.partial(checked, models_out=models_out)
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)  # a call of the wrong shape is Python's own TypeError
        bound.arguments.update(check_arguments(fn, dict(bound.arguments), models_out=models_out))
        return fn(*bound.args, **bound.kwargs)

    return wrapper
