"""Calibration and evaluation data: files, image folders and Python iterables, as batches.

Accepted sources:

* ``.npy`` -- one array, for a single-input model;
* ``.npz`` -- arrays keyed by input name, or one array for a single-input model; an
  optional ``labels`` array (integers) is used by evaluation and never fed to the model;
* a folder of images (``.png .jpg .jpeg .bmp .gif .webp``), searched recursively in sorted
  order; images in sub-folders get the sub-folder's index (sorted names) as label;
* from Python: a dict of arrays, an iterable of ``{input_name: batch}`` dicts, or an
  object with ONNX Runtime's ``CalibrationDataReader`` protocol (``get_next()``).

Preprocessing (files and folders): integer arrays and images are scaled by
``scale`` (default 1/255), then ``(x - mean) / std`` per channel if given; images are
converted to the model's channel count (L or RGB) and resized (bilinear) to its
height and width (or ``size``). Everything is fed as the model input's float type.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from mstransform.core.errors import DataError
from mstransform.core.npz import read_npz
from mstransform.core.options import MAX_BATCH, check_count

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None  # None entries are dynamic dims


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

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))


class DataSource:
    """Batches from one source, checked against the model's inputs and preprocessed."""

    def __init__(self, source: Any, specs: list[InputSpec], *, batch_size: int = 64, limit: int | None = None,
                 preprocess: Preprocess = Preprocess()):
        check_count(batch_size, "batch_size", high=MAX_BATCH)
        if limit is not None:
            check_count(limit, "limit")
        self.specs, self.batch_size, self.limit, self.pre = specs, batch_size, limit, preprocess
        self._arrays: dict[str, np.ndarray] | None = None
        self._labels: np.ndarray | None = None
        self._images: list[tuple[Path, int | None]] | None = None
        self._stream: Any = None
        self.origin = str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
        self._open(source)

    # -- opening -------------------------------------------------------------------------
    def _open(self, source: Any) -> None:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.exists():
                raise DataError(f"data path {path} does not exist")
            if path.is_dir():
                self._images = _list_images(path)
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
            self._arrays = self._by_input({k: np.asarray(v) for k, v in source.items()})
            return
        if hasattr(source, "get_next"):
            self._stream = iter(source.get_next, None)
            return
        if isinstance(source, Iterable):
            self._stream = iter(source)
            return
        raise DataError(f"cannot read calibration data from a {type(source).__name__}")

    def _by_input(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        labels = arrays.pop("labels", None)
        if labels is not None:
            self._labels = np.asarray(labels).reshape(-1)
        names = [s.name for s in self.specs]
        if all(n in arrays for n in names):
            chosen = {n: arrays[n] for n in names}
        elif len(self.specs) == 1 and len(arrays) == 1:
            chosen = {names[0]: next(iter(arrays.values()))}
        else:
            missing = [n for n in names if n not in arrays]
            raise DataError(f"data has arrays {sorted(arrays)} but the model needs inputs {names} "
                            f"(missing {missing}); name the arrays after the inputs")
        lengths = {len(a) for a in chosen.values()}
        if len(lengths) != 1:
            raise DataError(f"data arrays have different sample counts {sorted(lengths)}")
        if lengths == {0}:
            raise DataError("data holds no samples")
        if self._labels is not None and len(self._labels) != lengths.pop():
            raise DataError("data 'labels' count differs from the number of samples")
        return chosen

    # -- iteration -----------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of samples, when known in advance (0 for a stream)."""
        if self._arrays is not None:
            n = len(next(iter(self._arrays.values())))
        elif self._images is not None:
            n = len(self._images)
        else:
            return 0
        return min(n, self.limit) if self.limit else n

    def __iter__(self) -> Iterator[Batch]:
        seen = 0
        for raw, labels in self._raw_batches():
            if self.limit is not None and seen >= self.limit:
                break
            if self.limit is not None:
                keep = self.limit - seen
                raw = {k: v[:keep] for k, v in raw.items()}
                labels = labels[:keep] if labels is not None else None
            batch = Batch(self._prepare(raw, seen), labels, seen)
            seen += len(batch)
            yield batch
        if seen == 0:
            raise DataError(f"data source {self.origin} yielded no samples")

    def _raw_batches(self):
        if self._arrays is not None:
            n = len(next(iter(self._arrays.values())))
            for i in range(0, n, self.batch_size):
                yield ({k: v[i:i + self.batch_size] for k, v in self._arrays.items()},
                       None if self._labels is None else self._labels[i:i + self.batch_size])
        elif self._images is not None:
            for i in range(0, len(self._images), self.batch_size):
                if self.limit is not None and i >= self.limit:
                    break
                chunk = self._images[i:i + self.batch_size]
                arr = np.stack([self._read_image(p) for p, _ in chunk])
                labels = np.array([lab for _, lab in chunk]) if chunk[0][1] is not None else None
                yield {self.specs[0].name: arr}, labels
        else:
            for item in self._stream:
                if not isinstance(item, dict):
                    raise DataError(f"calibration iterable yielded a {type(item).__name__}, not a dict of input arrays")
                item = dict(item)
                labels = item.pop("labels", None)
                yield self._by_input_stream(item), None if labels is None else np.asarray(labels).reshape(-1)

    def _by_input_stream(self, item: dict) -> dict[str, np.ndarray]:
        names = [s.name for s in self.specs]
        if len(names) == 1 and len(item) == 1 and names[0] not in item:
            item = {names[0]: next(iter(item.values()))}
        missing = [n for n in names if n not in item]
        if missing:
            raise DataError(f"a data batch lacks inputs {missing} (has {sorted(item)})")
        return {n: np.asarray(item[n]) for n in names}

    def _prepare(self, raw: dict[str, np.ndarray], start: int) -> dict[str, np.ndarray]:
        out = {}
        for spec in self.specs:
            x = raw[spec.name]
            if x.dtype.kind not in "uifb":
                raise DataError(f"input {spec.name!r}: data of type {x.dtype} is not numeric")
            if spec.shape is not None:
                ok = x.ndim == len(spec.shape) and all(d is None or d == s for d, s in zip(spec.shape, x.shape))
                if not ok:
                    want = "[" + ",".join("?" if d is None else str(d) for d in spec.shape) + "]"
                    raise DataError(f"input {spec.name!r} expects shape {want}; data has shape {tuple(x.shape)}")
            if x.dtype.kind in "ui":
                scale = 1 / 255 if self.pre.scale is None else self.pre.scale
                x = x.astype(np.float32) * np.float32(scale)
            elif self.pre.scale is not None:
                x = x.astype(np.float32) * np.float32(self.pre.scale)
            x = self._normalise(x)
            x = np.ascontiguousarray(x, dtype=spec.dtype)
            bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
            if bad.any():
                raise DataError(f"input {spec.name!r}: sample {start + int(np.argmax(bad))} holds NaN or Inf")
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

    def _read_image(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        spec = self.specs[0]
        shape = spec.shape or (None, 3, None, None)
        if len(shape) != 4:
            raise DataError(f"image folders need a model with one (N,C,H,W) input; {spec.name!r} has rank {len(shape)}")
        c = shape[1] or 3
        size = self.pre.size or ((shape[3], shape[2]) if shape[2] and shape[3] else None)
        try:
            with Image.open(path) as im:
                im = im.convert("L" if c == 1 else "RGB")
                if size is not None and im.size != tuple(size):
                    im = im.resize(tuple(size), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"cannot read image {path}: {e}") from None
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _magic(path: Path, expected: bytes, kind: str) -> None:
    with open(path, "rb") as f:
        if f.read(len(expected)) != expected:
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


def _list_images(root: Path) -> list[tuple[Path, int | None]]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise DataError(f"folder {root} holds no images ({', '.join(sorted(IMAGE_EXTS))})")
    classes = sorted({p.parent for p in files if p.parent != root})
    if classes and all(p.parent != root for p in files):
        index = {d: i for i, d in enumerate(classes)}
        return [(p, index[p.parent]) for p in files]
    return [(p, None) for p in files]

