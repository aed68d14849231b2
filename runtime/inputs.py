"""A model's inputs as real exports declare them: element types, dynamic dims and batch axes.

Exporters spell "dynamic" in many ways: a named dim (``batch``, ``N``), an unnamed one, ``-1``
(old torch and tf2onnx exports) or ``0`` (Paddle2ONNX). Every dim that is not a positive
integer is dynamic here.

Each input gets a *batch axis* -- the axis along which data holds one sample after another --
or none, when the input is passed whole with every batch (a scalar sample rate, a fixed
state). In order of precedence:

1. the user's choice (``--batch-axis NAME=AXIS`` or ``NAME=none``; ``batch_axes=`` in the API);
2. the axis carrying the *main* input's batch dim name (``batch`` in ``state [2, batch, 128]``);
   the main input is the first float input whose first dim is dynamic (see :func:`_main`);
3. axis 0 when it is dynamic (the common ``[N, ...]`` export, and unnamed ``-1`` dims);
4. where the main input's batch dim is unnamed, an input's one dynamic dim (``state [2, ?, 128]``);
   where the model fixes the batch (``[1, 576]``), an input's one dim of that size (``[2, 1, 128]``),
   and where several dims have that size (``[1, 128, 19, 1]``), the main input's batch axis, 0;
5. none: a scalar, or nothing that says which axis holds the samples.

The main input's own axis 0 is its batch axis whenever it has one, dynamic or fixed.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from mstransform.core.errors import UsageError

@dataclass(frozen=True)
class InputSpec:
    """One graph input: its element type, declared shape (None entries are dynamic dims) and batch axis."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None
    batch_axis: int | None = 0
    dim_names: tuple[str | None, ...] | None = None

    @property
    def is_float(self) -> bool:
        return self.dtype.kind == "f" or self.dtype.name == "bfloat16"

    def describe_shape(self) -> str:
        if self.shape is None:
            return "unknown"
        names = self.dim_names or (None,) * len(self.shape)
        return "[" + ",".join(str(d) if d is not None else (n or "?") for d, n in zip(self.shape, names)) + "]"


def _dims(value: ir.Value) -> tuple[tuple[int | None, ...], tuple[str | None, ...]] | None:
    if value.shape is None:
        return None
    sizes, names = [], []
    for d in value.shape:
        if isinstance(d, int):
            sizes.append(d if d > 0 else None)  # -1 and 0 are legacy spellings of "dynamic"
            names.append(None)
        else:
            sizes.append(None)
            names.append(d.value if isinstance(getattr(d, "value", None), str) and d.value else None)
    return tuple(sizes), tuple(names)


def _main(specs: list[InputSpec]) -> InputSpec | None:
    """The first float input whose first dim is dynamic; failing that, the first such input, the
    first float input, the first ranked one (a state ``[2, batch, 128]`` is not the main input)."""
    ranked = [s for s in specs if s.shape]
    dynamic = [s for s in ranked if s.shape[0] is None]
    for pool in ([s for s in dynamic if s.is_float], dynamic, [s for s in ranked if s.is_float], ranked):
        if pool:
            return pool[0]
    return None


def input_specs(model: ir.Model, batch_axes: dict[str, int | None] | None = None) -> list[InputSpec]:
    """The model's real inputs (initializers listed as inputs excluded), each with its batch axis."""
    raw = []
    for v in model.graph.inputs:
        if v.is_initializer() or v.const_value is not None:
            continue
        dtype = np.dtype(v.dtype.numpy()) if v.dtype is not None else np.dtype(np.float32)
        dims = _dims(v)
        raw.append(InputSpec(v.name, dtype, None if dims is None else dims[0], 0,
                             None if dims is None else dims[1]))
    chosen = dict(batch_axes or {})
    unknown = [n for n in chosen if n not in {s.name for s in raw}]
    if unknown:
        raise UsageError(f"names unknown input {unknown[0]!r}; the model's inputs are {[s.name for s in raw]}",
                         param="batch_axes")
    main = _main(raw)
    batch_name = main.dim_names[0] if main is not None and main.dim_names else None
    out = []
    for s in raw:
        if s.name in chosen:
            axis = chosen[s.name]
            if axis is not None and (s.shape is None or not 0 <= axis < len(s.shape)):
                raise UsageError(f"{axis} is not an axis of input {s.name!r} (shape {s.describe_shape()})",
                                 param="batch_axes")
        else:
            axis = _inferred_axis(s, main, batch_name)
        out.append(InputSpec(s.name, s.dtype, s.shape, axis, s.dim_names))
    return out


def _inferred_axis(s: InputSpec, main: InputSpec | None, batch_name: str | None) -> int | None:
    if s.shape is None:
        return 0  # unknown rank: the data decides; samples along axis 0
    if not s.shape:
        return None  # a scalar
    if s is main:
        return 0
    if batch_name is not None and s.dim_names and batch_name in s.dim_names:
        return s.dim_names.index(batch_name)
    if s.shape[0] is None:
        if batch_name is not None and s.dim_names[0] is not None:
            return None  # dynamic, but another dim than the batch: e.g. a sequence length
        return 0
    if main is None or not main.shape:
        return None
    if main.shape[0] is None:  # an unnamed dynamic batch: an input whose only dynamic dim is elsewhere
        dynamic = [i for i, d in enumerate(s.shape) if d is None]
        return dynamic[0] if len(dynamic) == 1 and batch_name is None else None
    # a batch the model fixes (batch 1 everywhere): the one dim of the same size; where several dims
    # have that size (a cache [1, 128, 19, 1]), the one on the main input's own batch axis, 0
    same = [i for i, d in enumerate(s.shape) if d == main.shape[0]]
    if len(same) == 1:
        return same[0]
    return 0 if 0 in same else None


def fixed_dim(spec: InputSpec) -> int | None:
    """The size ``spec`` fixes on its batch axis (``[8, 6]`` -> 8), or None where that dim is dynamic."""
    if spec.batch_axis is None or spec.shape is None or spec.batch_axis >= len(spec.shape):
        return None
    return spec.shape[spec.batch_axis]


def fixed_batch(specs: list[InputSpec]) -> int | None:
    """The batch size a model fixes in its inputs' batch dims (``[1, 3, 224, 224]``), if any."""
    sizes = {fixed_dim(s) for s in specs} - {None}
    return sizes.pop() if len(sizes) == 1 else None


def parse_axes(specs: list[str] | None, param: str = "batch_axes", *, none: bool = True,
               form: str = "NAME=AXIS") -> dict[str, int | None]:
    """``NAME=AXIS`` strings as the command line takes them (``--batch-axis NAME=AXIS``, ``--axis SITE=AXIS``), and
    ``NAME=none`` where ``none`` allows it; the same name given twice is refused unless both give the same
    axis. Errors name ``param``, which the command line reports as its flag, and spell the strings as ``form``
    (the flag's own spelling)."""
    key = form.partition("=")[0]
    spelling = f"{form} or {key}=none" if none else form
    out: dict[str, int | None] = {}
    for spec in specs or []:
        if not isinstance(spec, str):
            raise UsageError(f"holds {type(spec).__name__} {spec!r:.40}; expected {form} strings", param=param)
        name, sep, text = spec.rpartition("=")
        if not sep or not name:
            raise UsageError(f"{spec!r}: expected {spelling}", param=param)
        if none and text.strip().lower() == "none":
            axis = None
        else:
            try:
                axis = int(text)
            except ValueError:
                integer = f"{form} with an integer axis" + (f", or {key}=none" if none else "")
                raise UsageError(f"{spec!r}: expected {integer}", param=param) from None
        if name in out and out[name] != axis:
            raise UsageError(f"{spec!r} conflicts with {name}={'none' if out[name] is None else out[name]} given "
                             f"before; give the axis of {name!r} once", param=param)
        out[name] = axis
    return out


def batch_axes_arg(value, param: str = "batch_axes") -> dict[str, int | None] | None:
    """The API's ``batch_axes``: a mapping input name -> axis (an integer) or None, or the command line's
    spelling (``"state=1"``, or a list of such strings); anything else is refused naming ``param``."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_axes([value], param)
    if isinstance(value, (list, tuple)):
        return parse_axes(list(value), param)
    if not isinstance(value, Mapping):
        raise UsageError(f"must map input names to axes (or be NAME=AXIS), not {type(value).__name__}", param=param)
    out: dict[str, int | None] = {}
    for name, axis in value.items():
        if not isinstance(name, str):
            raise UsageError(f"names input {name!r:.40}, not a string", param=param)
        if axis is not None and (isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer))):
            raise UsageError(f"gives input {name!r} axis {axis!r:.40} ({type(axis).__name__}); an axis is an integer "
                             "or None", param=param)
        out[name] = None if axis is None else int(axis)
    return out
