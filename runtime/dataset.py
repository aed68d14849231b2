"""Batches from Python, read by one rule on the ONNX and the torch paths: :class:`Dataset` and the
items of any iterable.

As in NNCF (``nncf.Dataset(data_source, transform_fn)``) and ONNX Runtime (a ``CalibrationDataReader``):

* **an item of a plain iterable** (a ``DataLoader``, a list, a generator) is a batch as PyTorch users
  write them: an array or tensor (the batch of the one input), a dict (inputs by name; labels under
  ``labels``, ``label``, ``target``, ``targets`` or ``y``), or a tuple ``(inputs, labels, ...)`` whose
  first element is the input (an array or tensor, a dict, or a tuple of them for several inputs);
* **an item of** ``Dataset(iterable, transform_fn)`` is ``transform_fn(item)``, which *is* the model
  input: an array or tensor for one input, a tuple of them for several inputs in the model's order,
  or a dict by input name. ``Dataset(loader, lambda b: b[0])`` drops the labels of ``(x, y)`` pairs;
  ``Dataset(loader, tuple)`` passes a ``(x1, x2)`` batch as two inputs.

Arrays and tensors are accepted alike (a tensor becomes an array on the ONNX path, an array a tensor
on the torch path). Such batches are the user's own: they pass through unscaled on both paths, and
integer data for a floating-point input is refused in one line (scale it in ``transform_fn``). Data
given whole -- a file, a dict of arrays, one array or tensor of samples -- is cut into batches, and
integers in it for a floating-point input are scaled by 1/255 (or ``--scale``), on both paths.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from mstransform.core.errors import DataError

__all__ = ["Dataset", "ModelInput", "is_tensor", "split_item", "to_array"]

LABEL_KEYS = ("labels", "label", "target", "targets", "y")


class Dataset:
    """An iterable of model inputs: ``transform_fn(item)`` for every item of ``data_source``
    (the item itself without ``transform_fn``). Iterating it twice iterates ``data_source`` twice."""

    def __init__(self, data_source: Iterable, transform_fn: Callable[[Any], Any] | None = None):
        if isinstance(data_source, (str, bytes)) or not isinstance(data_source, Iterable):
            raise DataError(f"Dataset needs an iterable of batches, not a {type(data_source).__name__}",
                            param="data")
        if transform_fn is not None and not callable(transform_fn):
            raise DataError(f"transform_fn must be callable, not a {type(transform_fn).__name__}", param="data")
        self.data_source, self.transform_fn = data_source, transform_fn

    def __iter__(self) -> Iterator:
        for item in self.data_source:
            yield item if self.transform_fn is None else self.transform_fn(item)

    def __len__(self) -> int:
        return len(self.data_source)  # type: ignore[arg-type]  # as NNCF: where the source has a length


@dataclass
class ModelInput:
    """One batch as the model takes it: one value (``single``), several in the model's order
    (``positional``), or several by input name (``named``); and its labels, where the item had some."""

    single: Any = None
    positional: tuple | None = None
    named: dict | None = None
    labels: Any = None

    def by_name(self, names: list[str], what: str = "the model") -> tuple[dict[str, Any], Any]:
        """The values by input name (``names`` in the model's order) and the labels: one value for a
        one-input model, a tuple in input order, or a dict whose keys are input names (a key under a
        label name that is no input's name holds the labels)."""
        if self.single is not None:
            if len(names) != 1:
                raise DataError(f"a data batch holds one value but {what} takes {len(names)} inputs {names}; give a "
                                "tuple in input order or a dict by input name")
            return {names[0]: self.single}, self.labels
        if self.positional is not None:
            if len(self.positional) != len(names):
                raise DataError(f"a data batch holds {len(self.positional)} values but {what} takes {len(names)} "
                                f"input(s) {names}" + (" (a tuple batch is (inputs, labels); mst.Dataset(loader, "
                                                       "tuple) passes a tuple as the inputs)"
                                                       if len(self.positional) < len(names) else ""))
            return dict(zip(names, self.positional)), self.labels
        named = dict(self.named)
        labels = self.labels
        for key in LABEL_KEYS:
            if key in named and key not in names:
                value = named.pop(key)
                labels = value if labels is None else labels
        if len(names) == 1 and len(named) == 1 and names[0] not in named:
            named = {names[0]: next(iter(named.values()))}
        missing = [n for n in names if n not in named]
        if missing:
            raise DataError(f"a data batch lacks inputs {missing} (has {sorted(named)})")
        return {n: named[n] for n in names}, labels


def is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _is_value(x) -> bool:
    return isinstance(x, np.ndarray) or is_tensor(x) or np.isscalar(x)


def to_array(x, what: str) -> np.ndarray:
    """An array or tensor (any device) as a numpy array; anything else refused in one line."""
    if is_tensor(x):
        x = x.detach()
        if str(getattr(x, "dtype", "")) == "torch.bfloat16":
            x = x.float()
        return x.cpu().numpy()
    if isinstance(x, (np.ndarray, np.generic, int, float, bool)):
        return np.asarray(x)
    if isinstance(x, (list, tuple)):
        try:
            return np.asarray(x)
        except ValueError:
            pass
    raise DataError(f"{what} is a {type(x).__name__}, not an array or tensor")


def _inputs(value, labels, where: str) -> ModelInput:
    if _is_value(value):
        return ModelInput(single=value, labels=labels)
    if isinstance(value, dict):
        if not value:
            raise DataError(f"{where} is an empty dict")
        return ModelInput(named=dict(value), labels=labels)  # labels in it: see ModelInput.by_name
    if isinstance(value, (tuple, list)):
        if not value:
            raise DataError(f"{where} is an empty {type(value).__name__}")
        return ModelInput(positional=tuple(value), labels=labels)
    raise DataError(f"{where} is a {type(value).__name__}; give an array or tensor, a tuple of them, or a dict "
                    "by input name")


def split_item(item, transformed: bool) -> ModelInput:
    """The model input (and labels) of one item: the plain-iterable rule, or, for an item of
    :class:`Dataset` (``transformed``), the item itself as the input."""
    if transformed:
        return _inputs(item, None, "a Dataset item (what transform_fn returned)")
    if isinstance(item, (tuple, list)):
        if not item:
            raise DataError(f"a data batch is an empty {type(item).__name__}")
        head = item[0]
        if not (_is_value(head) or isinstance(head, (dict, tuple, list))):
            raise DataError(f"a data batch's first element is a {type(head).__name__}; a tuple batch is "
                            "(inputs, labels), inputs an array or tensor, a tuple of them, or a dict")
        return _inputs(head, item[1] if len(item) > 1 else None, "a data batch's first element")
    return _inputs(item, None, "a data batch")


def class_labels(labels) -> np.ndarray | None:
    """Labels of a tuple item when they are integer class labels (a classification loader); targets of
    another kind (regression values, masks) are not labels for accuracy and are dropped."""
    if labels is None:
        return None
    a = to_array(labels, "labels")
    return a.reshape(-1).astype(np.int64) if a.dtype.kind in "iu" else None


def refuse_unscaled(name: str, x_dtype, input_dtype) -> None:
    """A batch the user formed holds integers for a floating-point input: refused, never scaled silently."""
    raise DataError(f"input {name!r} is {input_dtype}; a data batch holds {x_dtype} (batches formed in Python are "
                    "passed as they are: scale them, e.g. mst.Dataset(loader, lambda b: b[0].float() / 255))")


def labels_of(labels) -> np.ndarray:
    """Class labels as int64: integers, or floats holding whole finite numbers; anything else refused."""
    a = to_array(labels, "data 'labels'").reshape(-1)
    if a.dtype.kind in "iu":
        return a.astype(np.int64)
    if a.dtype.kind == "b" or a.dtype.kind != "f":
        raise DataError(f"data 'labels' are {a.dtype.name}; class labels must be integers")
    if not np.all(np.isfinite(a)):
        raise DataError(f"data 'labels' hold NaN or Inf (first at sample {int(np.argmax(~np.isfinite(a)))})")
    if not np.all(a == np.round(a)):
        raise DataError("data 'labels' hold fractional values; class labels must be integers")
    return a.astype(np.int64)
