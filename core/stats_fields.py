"""Reading the fields of a stats file as untrusted input: every key's type, rank and bounds.

Stats files come from other machines and other people. Each key of the format
(:mod:`mstransform.core.stats`, [stats-format.md](../docs/stats-format.md)) is read through one of
the typed readers here, which refuse, with one :class:`StatsError` line naming the key, a value of
the wrong kind (a string where a count belongs, an array where one number belongs), the wrong rank,
or out of bounds -- before anything is made from it. The ``inputs`` record's sample shapes are held
to :data:`MAX_SAMPLE_ELEMENTS`, since a self-check allocates a probe of that shape
(``[1, 1, 10**6, 10**6]`` would ask for 14.6 TiB). Arrays come from a ``.npz`` read without
unpickling, or from a mapping a caller built; object arrays are refused either way.
"""
from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Mapping

import numpy as np

from mstransform.core.errors import StatsError

MAX_RANK = 64  # tensor ranks: ONNX Runtime and TensorRT stop far below
MAX_SAMPLE_ELEMENTS = 1 << 28  # elements in one recorded calibration sample (1 GiB of float32)
MAX_SAMPLES = 1 << 62  # a sample count that still fits the int64 sums made from it
MAX_RECORDED_VALUE = 1024  # elements: inputs without a batch axis up to this size keep their value
_NUMBER_KINDS = "iuf"  # integer, unsigned, float: what a recorded input value may hold


def _kind(a: np.ndarray) -> str:
    """What an array holds, in the words of the messages."""
    if a.dtype.kind == "U":
        return "text"
    if a.dtype.kind == "b":
        return "booleans"
    if a.dtype.kind in "iu":
        return "integers"
    if a.dtype.kind == "f":
        return "floats"
    if a.dtype.kind == "c":
        return "complex numbers"
    return f"{a.dtype} values"


def _rank_words(a: np.ndarray) -> str:
    return "one value" if a.ndim == 0 else f"an array of shape {list(a.shape)}"


class Fields:
    """The arrays of one stats file (``origin`` names it in messages), read key by key with checks."""

    def __init__(self, arrays: Mapping, origin: str):
        bad = [k for k in arrays if not isinstance(k, str)]
        if bad:
            raise StatsError(f"{origin}: key {bad[0]!r} is not a string; a stats mapping is keyed by names")
        self.arrays, self.origin = arrays, origin

    def __contains__(self, key: str) -> bool:
        return key in self.arrays

    def fail(self, key: str, why: str) -> StatsError:
        return StatsError(f"{self.origin}: key {key!r} {why}")

    def raw(self, key: str) -> np.ndarray:
        """The array under ``key`` (present), refused where it holds Python objects."""
        try:
            a = np.asarray(self.arrays[key])
        except KeyError:
            raise StatsError(f"{self.origin} is not an mstransform stats file: key {key!r} is missing") from None
        except ValueError as e:  # an object member of an NpzFile opened without pickles, a bad header
            raise self.fail(key, f"cannot be read ({str(e)[:60]}); pickled data is refused") from None
        except (MemoryError, OSError, EOFError, zipfile.BadZipFile) as e:  # a member of an NpzFile read here
            raise self.fail(key, f"cannot be read ({type(e).__name__}: {str(e)[:60]})") from None
        if a.dtype.hasobject or a.dtype.kind == "V":
            raise self.fail(key, "holds Python objects; pickled data is refused")
        return a

    def text(self, key: str, default: str | None = None) -> str:
        """One string (a 0-d text array)."""
        if key not in self.arrays and default is not None:
            return default
        a = self.raw(key)
        if a.ndim != 0 or a.dtype.kind != "U":
            raise self.fail(key, f"must be one string, not {_rank_words(a)} of {_kind(a)}")
        return str(a)

    def count(self, key: str, *, default: int | None = None) -> int:
        """One count in ``[0, MAX_SAMPLES]`` (a 0-d integer array)."""
        if key not in self.arrays and default is not None:
            return default
        a = self.raw(key)
        if a.ndim != 0 or a.dtype.kind not in "iu":
            raise self.fail(key, f"must be one integer, not {_rank_words(a)} of {_kind(a)}")
        value = int(a)
        if not 0 <= value <= MAX_SAMPLES:
            raise self.fail(key, f"must be between 0 and {MAX_SAMPLES}, got {value}")
        return value

    def column(self, key: str, kind: str, length: int | None = None, *, optional: bool = False) -> np.ndarray:
        """A vector of strings (``kind`` "U") or integers (``kind`` "iu"), of ``length`` entries where given."""
        if optional and key not in self.arrays:
            return np.zeros(0, dtype="U1" if kind == "U" else np.int64)
        a = self.raw(key)
        want = "strings" if kind == "U" else "integers"
        if a.ndim != 1 or not (a.dtype.kind in kind or a.size == 0):
            raise self.fail(key, f"must be a vector of {want}, not {_rank_words(a)} of {_kind(a)}")
        if length is not None and len(a) != length:
            raise self.fail(key, f"has {len(a)} entries but site_names has {length}")
        return a

    def channels(self, key: str, width: int | None = None) -> np.ndarray:
        """A per-channel vector of real numbers as float64: finite, at least one channel."""
        a = self.raw(key)
        if a.ndim != 1 or a.dtype.kind not in "iuf":
            raise self.fail(key, f"must be a vector of real numbers, not {_rank_words(a)} of {_kind(a)}")
        if a.size == 0:
            raise self.fail(key, "holds no channel")
        if width is not None and a.size != width:
            raise self.fail(key, f"has {a.size} channels but mean/{key.partition('/')[2]} has {width}")
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise self.fail(key, "holds NaN or Inf; recalibrate")
        return a

    def inputs(self) -> list[dict]:
        """The ``inputs`` record: one ``{name, dtype, shape, batch_axis, value}`` per model input."""
        if "inputs" not in self.arrays:
            return []  # version 1
        text = self.text("inputs")
        try:
            entries = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise self.fail("inputs", f"is not valid JSON ({str(e)[:60]})") from None
        if not isinstance(entries, list):
            raise self.fail("inputs", f"must be a JSON list of inputs, not {type(entries).__name__}")
        return [self._input(k, e) for k, e in enumerate(entries)]

    def _input(self, k: int, e) -> dict:
        where = f"entry {k}"

        def bad(why: str) -> StatsError:
            return self.fail("inputs", f"{where}: {why}")

        if not isinstance(e, dict) or not {"name", "dtype", "shape", "batch_axis"} <= set(e):
            raise bad("must be an object with name, dtype, shape and batch_axis")
        name, dtype, shape, axis = e["name"], e["dtype"], e["shape"], e["batch_axis"]
        if not isinstance(name, str):
            raise bad(f"name must be a string, not {name!r:.40}")
        where = f"input {name!r:.60}"
        try:
            dt = np.dtype(dtype) if isinstance(dtype, str) else None
        except TypeError:
            dt = None
        if dt is None or dt.kind not in "biufc":
            raise bad(f"dtype must name a numeric type (float32, int64, ...), not {dtype!r:.40}")
        if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise bad(f"shape must be a list of at most {MAX_RANK} non-negative integers")
        elements = math.prod(shape)
        if elements > MAX_SAMPLE_ELEMENTS:
            raise bad(f"shape {shape} holds {elements} elements in one sample, more than the "
                      f"{MAX_SAMPLE_ELEMENTS} a probe may allocate")
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int) or not 0 <= axis < len(shape)):
            raise bad(f"batch_axis must be null or an axis of its shape {shape}, not {axis!r:.20}")
        value = self._value(k, shape, axis)
        return {"name": name, "dtype": dt.name, "shape": tuple(shape), "batch_axis": axis, "value": value}

    def _value(self, k: int, shape: list[int], axis: int | None) -> np.ndarray | None:
        key = f"input_value/{k}"
        if key not in self.arrays:
            return None
        if axis is not None:
            raise self.fail(key, "is a recorded value, but its input has a batch axis; only inputs passed whole "
                                 "keep their value")
        a = self.raw(key)
        if a.dtype.kind not in _NUMBER_KINDS and a.dtype.kind != "b":
            raise self.fail(key, f"must hold numbers, not {_kind(a)}")
        if a.size > MAX_RECORDED_VALUE:
            raise self.fail(key, f"holds {a.size} elements; a recorded value holds at most {MAX_RECORDED_VALUE}")
        if list(a.shape) != list(shape):
            raise self.fail(key, f"has shape {list(a.shape)} but its input's recorded shape is {list(shape)}")
        return np.array(a)
