"""Calibration and evaluation data: files, image folders and Python iterables, as batches.

Accepted sources:

* ``.npy`` -- one array, for a single-input model;
* ``.npz`` -- arrays keyed by input name, or one array for a single-input model; an
  optional ``labels`` array (integers) is used by evaluation and never fed to the model;
* a folder of images (``.png .jpg .jpeg .bmp .gif .webp``), searched recursively in sorted
  order; where every image sits in a sub-folder, each sub-folder is a class (sorted names,
  empty ones included) and its images get its index as label; 16-bit grayscale stays 16-bit;
* from Python: a dict of arrays, an iterable of ``{input_name: batch}`` dicts, or an
  object with ONNX Runtime's ``CalibrationDataReader`` protocol (``get_next()``).

Each input holds its samples along its batch axis (:mod:`mstransform.runtime.inputs`); an
input without one (a scalar, a fixed state) is passed whole with every batch.

Preprocessing (files and folders) applies to data for *float* inputs only: integer arrays are
scaled by ``scale`` (default 1/255), images by ``scale`` or by their own bit depth (1/255 or
1/65535), then ``(x - mean) / std`` per channel if
given; images are converted to the model's channel count (L or RGB) and resized (bilinear)
to its height and width (or ``size``). Data for integer or bool inputs (token ids, masks, a
sample rate) is cast to the input's type unscaled, and refused where the cast would change a
value. Batches the user formed (iterables of dicts, a ``CalibrationDataReader``) pass through
as they are: checked, never rescaled.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from mstransform.core.errors import DataError
from mstransform.core.guards import check_readable, input_error
from mstransform.core.npz import read_npz
from mstransform.core.options import MAX_BATCH, check_count
from mstransform.runtime.dataset import (Dataset, class_labels, is_tensor, labels_of, refuse_unscaled, split_item,
                                         to_array)
from mstransform.runtime.images import conversion_note, list_images, read_image
from mstransform.runtime.inputs import InputSpec, fixed_batch, fixed_dim

__all__ = ["Batch", "DataSource", "InputSpec", "Preprocess"]


@dataclass(frozen=True)
class Preprocess:
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    size: tuple[int, int] | None = None


@dataclass
class Batch:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    start: int  # index of the batch's first sample in the source
    size: int  # samples in the batch (along each batched input's batch axis)

    def __len__(self) -> int:
        return self.size


def head(inputs: dict[str, np.ndarray], n: int, axes: dict[str, int | None] | None = None) -> dict[str, np.ndarray]:
    """The first ``n`` samples of a batch: each input cut along its batch axis (``axes``; 0 where not
    given), an input without one passed whole."""
    axes = axes or {}
    return {k: _take(v, axes.get(k, 0) if v.ndim else None, 0, n) for k, v in inputs.items()}


def _take(x: np.ndarray, axis: int | None, start: int, stop: int) -> np.ndarray:
    """Samples ``start:stop`` of ``x`` along its batch ``axis`` (all of ``x`` where it has none)."""
    if axis is None:
        return x
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, stop)
    return x[tuple(index)]


class DataSource:
    """Batches from one source, checked against the model's inputs and preprocessed."""

    def __init__(self, source: Any, specs: list[InputSpec], *, batch_size: int = 64, limit: int | None = None,
                 preprocess: Preprocess = Preprocess()):
        check_count(batch_size, "batch_size", high=MAX_BATCH)
        if limit is not None:
            check_count(limit, "limit")
        self.specs, self.limit, self.pre = specs, limit, preprocess
        self.fixed = fixed_batch(specs)  # a batch size the model fixes: every batch has it
        self.batch_size = self.fixed or batch_size
        self._arrays: dict[str, np.ndarray] | None = None
        self._samples = 0
        self._labels: np.ndarray | None = None
        self._images: list[tuple[Path, int | None]] | None = None
        self._stream: Any = None
        self._transformed = False  # a Dataset's items are the model input itself
        self.notes: list[str] = []  # what a command should tell the user about this data (one line each)
        self.origin = str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
        self._open(source)
        if self.fixed:
            self._whole_batches()

    def _whole_batches(self) -> None:
        """A model that fixes its batch size runs on batches of exactly that size: samples beyond the
        last whole batch are left out (a note says so); fewer samples than one batch are refused."""
        total = self._samples if self._arrays is not None else len(self._images or ())
        if not total:
            return  # a stream: its batches are checked against the declared shapes as they come
        if total < self.fixed:
            raise DataError(f"data holds {total} sample(s) but the model takes batches of exactly {self.fixed} "
                            "(its inputs fix the batch size)")
        n, note = len(self), f"note: the model takes batches of exactly {self.fixed}; "
        if n < self.fixed:  # a limit below one batch
            self.notes.append(note + f"the limit of {n} sample(s) is raised to {self.fixed}")
        elif n % self.fixed:
            self.notes.append(note + f"the last {n % self.fixed} sample(s) are left out")
        self.limit = max(n - n % self.fixed, self.fixed)

    @property
    def axes(self) -> dict[str, int | None]:
        """Each input's axis along which a batch may be cut into fewer samples (:func:`head`): its batch
        axis, or None where the input is passed whole with every batch or the model fixes its batch size."""
        return {s.name: None if fixed_dim(s) else s.batch_axis for s in self.specs}

    @property
    def batched(self) -> list[InputSpec]:
        """The inputs that hold one sample after another (the others are passed whole with every batch)."""
        return [s for s in self.specs if s.batch_axis is not None]

    # -- opening -------------------------------------------------------------------------
    def _open(self, source: Any) -> None:
        if isinstance(source, (str, os.PathLike)):
            path = check_readable(source, DataError, "data path", folder=True)  # a FIFO never opened
            if path.is_dir():
                self._images, self.notes = list_images(path)
                self._first = self._decode(0)  # now: an image that cannot be read fails before any note
                self.notes += conversion_note(path, self._images[0][0], self.specs[0], self.pre.size)
                return
            if path.suffix == ".npy":
                arr = _load_npy(path)
                self._arrays = self._by_input({"": arr})
                return
            if path.suffix == ".npz":
                self._arrays = self._by_input(_load_npz(path))
                return
            raise DataError(f"data file {path} is not .npy, .npz or a folder of images")
        if isinstance(source, dict):
            self._arrays = self._by_input({k: to_array(v, f"data[{k!r}]") for k, v in source.items()})
            return
        if isinstance(source, np.ndarray) or is_tensor(source):  # samples given whole, as a .npy file holds them
            self._arrays = self._by_input({"": to_array(source, "data")})
            return
        if hasattr(source, "get_next"):
            self._stream = iter(source.get_next, None)
            return
        if isinstance(source, Iterable):
            self._stream, self._transformed = iter(source), isinstance(source, Dataset)
            return
        raise DataError(f"cannot read calibration data from a {type(source).__name__}")

    def _by_input(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        labels = arrays.pop("labels", None)
        if labels is not None:
            self._labels = labels_of(labels)
        names = [s.name for s in self.specs]
        if all(n in arrays for n in names):
            chosen = {n: arrays[n] for n in names}
        elif len(self.specs) == 1 and len(arrays) == 1:
            chosen = {names[0]: next(iter(arrays.values()))}
        else:
            missing = [n for n in names if n not in arrays]
            raise DataError(f"data has arrays {sorted(arrays)} but the model needs inputs {names} "
                            f"(missing {missing}); name the arrays after the inputs")
        if not self.batched:
            raise DataError(f"none of the inputs {names} has a batch axis; give one with --batch-axis NAME=AXIS")
        counts = {}
        for spec in self.batched:
            x = chosen[spec.name]
            if x.ndim <= spec.batch_axis:
                raise DataError(f"input {spec.name!r} takes samples along axis {spec.batch_axis} "
                                f"(shape {spec.describe_shape()}); data has shape {tuple(x.shape)}")
            counts[spec.name] = x.shape[spec.batch_axis]
        if len(set(counts.values())) != 1:
            detail = ", ".join(f"{n} {c} (axis {s.batch_axis})" for (n, c), s in zip(counts.items(), self.batched))
            raise DataError(f"data arrays have different sample counts along their batch axes: {detail}; "
                            "set an input's batch axis with --batch-axis NAME=AXIS (or NAME=none)")
        self._samples = next(iter(counts.values()))
        if self._samples == 0:
            raise DataError("data holds no samples")
        if self._labels is not None and len(self._labels) != self._samples:
            raise DataError("data 'labels' count differs from the number of samples")
        return chosen

    # -- iteration -----------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of samples, when known in advance (0 for a stream)."""
        if self._arrays is not None:
            n = self._samples
        elif self._images is not None:
            n = len(self._images)
        else:
            return 0
        return min(n, self.limit) if self.limit else n

    def __iter__(self) -> Iterator[Batch]:
        seen = 0
        for raw, labels, given in self._raw_batches():
            if self.limit is not None and seen >= self.limit:
                break
            size = self._size(raw)
            if self.limit is not None and seen + size > self.limit:
                keep = self.limit - seen
                raw = {s.name: _take(raw[s.name], s.batch_axis, 0, keep) for s in self.specs}
                labels = labels[:keep] if labels is not None else None
                size = keep
            inputs = self._check_given(raw, seen) if given else self._prepare(raw, seen)
            batch = Batch(inputs, labels, seen, size)
            seen += size
            yield batch
        if seen == 0:
            raise DataError(f"data source {self.origin} yielded no samples")

    def _size(self, raw: dict[str, np.ndarray]) -> int:
        sizes = set()
        for s in self.batched:
            x = raw[s.name]
            if x.ndim <= s.batch_axis:
                raise DataError(f"input {s.name!r}: a batch of shape {tuple(x.shape)} has no axis {s.batch_axis} "
                                "to hold its samples")
            sizes.add(x.shape[s.batch_axis])
        if len(sizes) != 1:
            raise DataError(f"a data batch's inputs hold different sample counts {sorted(sizes)}")
        return sizes.pop()

    def _raw_batches(self):
        """(arrays by input, labels, whether the user formed the batch) per batch."""
        if self._arrays is not None:
            for i in range(0, self._samples, self.batch_size):
                yield ({s.name: _take(self._arrays[s.name], s.batch_axis, i, i + self.batch_size) for s in self.specs},
                       None if self._labels is None else self._labels[i:i + self.batch_size], False)
        elif self._images is not None:
            for i in range(0, len(self._images), self.batch_size):
                if self.limit is not None and i >= self.limit:
                    break
                chunk = self._images[i:i + self.batch_size]
                arr = self._first if i == 0 else self._decode(i)
                labels = np.array([lab for _, lab in chunk]) if chunk[0][1] is not None else None
                yield {self.specs[0].name: arr}, labels, False
        else:
            for item in self._stream:  # one rule for both paths: mstransform.runtime.dataset
                given = split_item(item, self._transformed)
                named, labels = given.by_name([s.name for s in self.specs])
                yield ({n: to_array(v, f"input {n!r} of a data batch") for n, v in named.items()},
                       labels_of(labels) if given.named is not None and labels is not None else class_labels(labels),
                       True)

    def _check_given(self, raw: dict[str, np.ndarray], start: int) -> dict[str, np.ndarray]:
        """A batch the user formed passes through as it is: checked, never rescaled or reshaped.

        Only a float batch for a float input of another width is cast (float64 arrays for a float32 model)."""
        out = {}
        for spec in self.specs:
            x = raw[spec.name]
            if x.dtype.kind not in "uifb":
                raise DataError(f"input {spec.name!r}: data of type {x.dtype} is not numeric")
            if x.dtype != spec.dtype and x.dtype.kind == "f" and spec.is_float:
                x = np.ascontiguousarray(x, dtype=spec.dtype)
            elif x.dtype != spec.dtype and spec.is_float:
                refuse_unscaled(spec.name, x.dtype.name, spec.dtype.name)
            elif x.dtype != spec.dtype:
                raise DataError(f"input {spec.name!r} is {spec.dtype.name}; a data batch holds {x.dtype.name}")
            self._check_shape(spec, x)
            _check_finite(spec, x, start)
            out[spec.name] = x
        return out

    @staticmethod
    def _check_shape(spec: InputSpec, x: np.ndarray) -> None:
        if spec.shape is None:
            return
        ok = x.ndim == len(spec.shape) and all(d is None or d == s for d, s in zip(spec.shape, x.shape))
        if not ok:
            raise DataError(f"input {spec.name!r} expects shape {spec.describe_shape()}; "
                            f"data has shape {tuple(x.shape)}")

    def _prepare(self, raw: dict[str, np.ndarray], start: int) -> dict[str, np.ndarray]:
        """Arrays from files: scaled and normalised where the input is a float one, then cast to its type."""
        out = {}
        for spec in self.specs:
            x = raw[spec.name]
            if x.dtype.kind not in "uifb":
                raise DataError(f"input {spec.name!r}: data of type {x.dtype} is not numeric")
            self._check_shape(spec, x)
            if spec.is_float:
                if x.dtype.kind in "uib":
                    scale = 1 / 255 if self.pre.scale is None else self.pre.scale
                    x = x.astype(np.float32) * np.float32(scale)
                elif self.pre.scale is not None:
                    x = x.astype(np.float32) * np.float32(self.pre.scale)
                x = self._normalise(x)
            else:
                x = _exact_cast(spec, x)
            x = np.ascontiguousarray(x, dtype=spec.dtype)
            _check_finite(spec, x, start)
            out[spec.name] = x
        return out

    def _normalise(self, x: np.ndarray) -> np.ndarray:
        if self.pre.mean is None and self.pre.std is None:
            return x
        c = x.shape[1] if x.ndim >= 2 else 1
        shape = [1, c] + [1] * (x.ndim - 2)

        def vec(v, default):
            v = np.asarray(default if v is None else v, dtype=np.float32)
            if v.size == 1:
                v = np.repeat(v.reshape(1), c)
            if v.size != c:
                raise DataError(f"has {v.size} values but the data has {c} channels", param="mean/std")
            return v.reshape(shape)

        std = vec(self.pre.std, 1.0)
        if np.any(std == 0):
            raise DataError("must not contain 0", param="std")
        return (x - vec(self.pre.mean, 0.0)) / std

    def _decode(self, start: int) -> np.ndarray:
        """The batch of images from ``start``, decoded (one dtype: the model input decides)."""
        chunk = self._images[start:start + self.batch_size]
        return np.stack([read_image(p, self.specs[0], self.pre.size, raw=self.pre.scale is not None) for p, _ in chunk])


def _exact_cast(spec: InputSpec, x: np.ndarray) -> np.ndarray:
    """Data for an integer or bool input: never scaled; refused where the cast would change a value."""
    target = spec.dtype
    if x.dtype == target:
        return x
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise DataError(f"input {spec.name!r} is {target.name}; its data holds NaN or Inf")
    cast = x.astype(target)
    if not np.array_equal(cast.astype(np.float64), x.astype(np.float64)):
        raise DataError(f"input {spec.name!r} is {target.name}; its data ({x.dtype.name}) holds values that "
                        f"{target.name} cannot hold exactly")
    return cast


def _check_finite(spec: InputSpec, x: np.ndarray, start: int) -> None:
    if x.dtype.kind != "f" and x.dtype.name != "bfloat16":
        return
    axis = spec.batch_axis if spec.batch_axis is not None and spec.batch_axis < x.ndim else None
    if axis is None:
        if not np.isfinite(x.astype(np.float32)).all():
            raise DataError(f"input {spec.name!r} holds NaN or Inf")
        return
    per_sample = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1).astype(np.float32, copy=False)
    bad = ~np.isfinite(per_sample).all(axis=1)
    if bad.any():
        raise DataError(f"input {spec.name!r}: sample {start + int(np.argmax(bad))} holds NaN or Inf")


def _magic(path: Path, expected: bytes, kind: str) -> None:
    try:
        with open(path, "rb") as f:
            start = f.read(len(expected))
    except OSError as e:
        raise input_error(e, path, DataError, "data file") from None
    if start != expected:
        raise DataError(f"cannot read data file {path}: not a {kind} file")


def _load_npy(path: Path) -> np.ndarray:
    _magic(path, b"\x93NUMPY", ".npy")
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise DataError(f"data file {path} holds object arrays; pickled data is refused") from None
        raise DataError(f"data file {path} is not a readable .npy array ({e})") from None
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e}") from None


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    return read_npz(path, DataError, "data file")
