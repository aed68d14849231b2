"""Per-site statistics and their versioned ``.npz`` file format.

Schema (format ``mstransform.stats``, version 2; version 1 files, which lack the ``inputs``
record, still load), all plain arrays, read with ``allow_pickle=False``:

=================  =========  ====================================================
key                dtype      meaning
=================  =========  ====================================================
``format``         str        ``"mstransform.stats"``
``version``        int64      ``2`` (``1`` still read)
``fingerprint``    str        structural fingerprint of the calibrated model
``weights``        str        digest of its weight values (v2; empty where not recorded)
``placement``      str        ``activations`` | ``activations+residual`` | ``linear-inputs``
``selection``      str        JSON: include/exclude patterns, include_se, axis overrides, framework
``samples``        int64      number of input samples seen
``site_names``     str (S,)   site names, in graph order
``site_feeds``     str (S,)   name of the guarded tensor
``site_kinds``     str (S,)   activation kind (``Relu``, ``Gelu``, ``residual``, ...)
``site_axes``      int64 (S,) channel axis (non-negative)
``site_ranks``     int64 (S,) rank of the guarded tensor
``site_dtypes``    str (S,)   element type of the guarded tensor (``float32``, ``float16``)
``site_counts``    int64 (S,) elements seen per channel
``site_unreached`` str (U,)   sites inside ``If``/``Loop``/``Scan`` bodies that no sample reached (v2)
``mean/<i>``       f64 (C,)   per-channel mean of site ``i``
``var/<i>``        f64 (C,)   per-channel population variance of site ``i``
``absmax/<i>``     f64 (C,)   per-channel max ``|x|`` of site ``i``; only where measured (forged mode)
``inputs``         str        JSON list, one entry per model input: ``name``, ``dtype``, ``shape`` of one
                              calibration sample (the batch axis sized 1), ``batch_axis`` (or null)
``input_value/<k>``  any      the value of input ``k`` where it has no batch axis and at most 1024
                              elements (a sample rate, a fixed state): what a probe must feed it
=================  =========  ====================================================

The ``inputs`` record lets a self-check build a probe the model accepts (spatial sizes that a
detector needs, a state's shape, a scalar's value) without the calibration data.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mstransform.core.errors import MstError, StatsError, UsageError
from mstransform.core.fileio import atomic_output
from mstransform.core.guards import check_readable, is_path, path_arg
from mstransform.core.moments import Moments
from mstransform.core.npz import read_npz
from mstransform.core.options import Placement, Selection
from mstransform.core.stats_fields import MAX_RANK, MAX_RECORDED_VALUE, Fields

FORMAT = "mstransform.stats"
VERSION = 2
READS = (1, 2)


@dataclass(frozen=True)
class InputRecord:
    """One model input as calibration fed it: type, one sample's shape, batch axis, small values."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    batch_axis: int | None
    value: np.ndarray | None = field(default=None, compare=False)

    @classmethod
    def of(cls, name: str, x: np.ndarray, batch_axis: int | None) -> "InputRecord":
        shape = list(x.shape)
        if batch_axis is not None and batch_axis < len(shape):
            shape[batch_axis] = 1
        value = np.array(x) if batch_axis is None and x.size <= MAX_RECORDED_VALUE else None
        return cls(name, x.dtype.name, tuple(int(d) for d in shape), batch_axis, value)

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "batch_axis": self.batch_axis}


@dataclass
class SiteStats:
    name: str
    feed: str
    kind: str
    axis: int
    rank: int
    dtype: str
    moments: Moments

    @property
    def channels(self) -> int:
        return self.moments.channels


@dataclass
class Stats:
    fingerprint: str
    placement: Placement
    sites: dict[str, SiteStats]
    samples: int = 0
    selection: Selection = field(default_factory=Selection)
    inputs: tuple[InputRecord, ...] = ()
    unreached: tuple[str, ...] = ()  # sites in branches or loops that no calibration sample reached
    weights: str = ""  # digest of the calibrated model's weight values ("" where not recorded: v1, FX)

    def __len__(self) -> int:
        return len(self.sites)

    def save(self, path: str | Path) -> None:
        """Write the stats file atomically (temporary file, then rename)."""
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **self.to_arrays())

    def to_arrays(self) -> dict[str, np.ndarray]:
        sites = list(self.sites.values())
        arrays = {
            "format": np.array(FORMAT), "version": np.array(VERSION, dtype=np.int64),
            "fingerprint": np.array(self.fingerprint), "placement": np.array(Placement(self.placement).value),
            "selection": np.array(self.selection.to_json()),
            "samples": np.array(self.samples, dtype=np.int64),
            "site_names": np.array([s.name for s in sites], dtype=str),
            "site_feeds": np.array([s.feed for s in sites], dtype=str),
            "site_kinds": np.array([s.kind for s in sites], dtype=str),
            "site_axes": np.array([s.axis for s in sites], dtype=np.int64),
            "site_ranks": np.array([s.rank for s in sites], dtype=np.int64),
            "site_dtypes": np.array([s.dtype for s in sites], dtype=str),
            "site_counts": np.array([s.moments.count for s in sites], dtype=np.int64),
        }
        arrays["inputs"] = np.array(json.dumps([r.to_json() for r in self.inputs]))
        arrays["site_unreached"] = np.array(list(self.unreached), dtype=str)
        arrays["weights"] = np.array(self.weights)
        for k, r in enumerate(self.inputs):
            if r.value is not None:
                arrays[f"input_value/{k}"] = r.value
        for i, s in enumerate(sites):
            arrays[f"mean/{i}"] = s.moments.mean
            arrays[f"var/{i}"] = s.moments.var
            if s.moments.absmax is not None:
                arrays[f"absmax/{i}"] = s.moments.absmax
        return arrays

    def sha256(self) -> str:
        """A digest of the statistics' content, recorded in hardened models' metadata."""
        h = hashlib.sha256()
        for key, arr in sorted(self.to_arrays().items()):
            h.update(key.encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]

    @classmethod
    def load(cls, path: str | Path) -> "Stats":
        path = path_arg(path, "stats", StatsError)
        path = check_readable(path, StatsError, "stats file", missing_ok=True)  # a name too long, a FIFO
        if not path.exists():
            raise StatsError(f"stats file {path} does not exist; run `mstransform calibrate` first")
        arrays = read_npz(path, StatsError, "stats file")
        return cls.from_arrays(arrays, str(path))

    @classmethod
    def from_arrays(cls, a: Mapping, origin: str = "stats") -> "Stats":
        """Stats from the arrays of a stats file (a dict, an ``NpzFile``, any mapping of arrays), every
        key checked for type, rank and bounds on the way (:class:`~mstransform.core.stats_fields.Fields`)."""
        f = Fields(a, origin)
        fmt = f.raw("format")
        if fmt.ndim != 0 or str(fmt) != FORMAT:
            raise StatsError(f"{origin} is not an mstransform stats file (key 'format' is {str(fmt)[:40]!r})")
        version = f.raw("version")
        if version.dtype.kind not in "iu" or version.ndim != 0 or int(version) not in READS:
            raise StatsError(f"{origin} has stats format version {str(version)[:20]!r}; this mstransform reads "
                             f"versions {', '.join(map(str, READS))}")
        names = [str(x) for x in f.column("site_names", "U")]
        cols = {k: f.column(k, "U" if k in ("site_feeds", "site_kinds", "site_dtypes") else "iu", len(names))
                for k in ("site_feeds", "site_kinds", "site_axes", "site_ranks", "site_dtypes", "site_counts")}
        if len(set(names)) != len(names):
            raise StatsError(f"{origin} lists a site twice")
        sites = {}
        for i, name in enumerate(names):
            mean = f.channels(f"mean/{i}")
            var = f.channels(f"var/{i}", mean.size)
            absmax = f.channels(f"absmax/{i}", mean.size) if f"absmax/{i}" in f else None
            if np.any(var < 0):
                raise StatsError(f"{origin}: site {name!r} has a negative variance; the file is corrupt")
            axis, rank = int(cols["site_axes"][i]), int(cols["site_ranks"][i])
            if not 0 < rank <= MAX_RANK:
                raise f.fail("site_ranks", f"gives site {name!r} rank {rank}; ranks lie between 1 and {MAX_RANK}")
            if not 0 <= axis < rank:
                raise StatsError(f"{origin}: site {name!r} has channel axis {axis} outside its rank {rank}")
            count = int(cols["site_counts"][i])
            if count <= 0:
                raise StatsError(f"{origin}: site {name!r} has no samples")
            with np.errstate(over="ignore"):
                m2 = var * count
            if not np.all(np.isfinite(m2)):
                raise StatsError(f"{origin}: site {name!r} has a variance too large for its {count} samples "
                                 "(the sum of squares overflows float64); the file is corrupt")
            moments = Moments(count, mean, m2, absmax)
            sites[name] = SiteStats(name, str(cols["site_feeds"][i]), str(cols["site_kinds"][i]), axis, rank,
                                    str(cols["site_dtypes"][i]), moments)
        try:
            selection = Selection.from_json(f.text("selection", "{}"))
        except (json.JSONDecodeError, ValueError, TypeError, OverflowError, RecursionError) as e:
            raise StatsError(f"{origin}: the selection record is not valid ({str(e)[:80]})") from None
        except MstError as e:  # a bad pattern inside the file
            raise StatsError(f"{origin}: the selection record holds {e}") from None
        try:
            placement = Placement(f.text("placement"))
        except ValueError:
            raise f.fail("placement", f"names unknown placement {f.text('placement')[:40]!r}") from None
        unreached = tuple(str(x) for x in f.column("site_unreached", "U", optional=True))
        inputs = tuple(InputRecord(e["name"], e["dtype"], e["shape"], e["batch_axis"], e["value"]) for e in f.inputs())
        return cls(f.text("fingerprint"), placement, sites, f.count("samples", default=0), selection,
                   inputs, unreached, f.text("weights", ""))

    def merge(self, other: "Stats") -> "Stats":
        """Exact merge of two shards measured on the same model with the same sites."""
        if other.fingerprint != self.fingerprint:
            raise StatsError(f"cannot merge stats of different models (fingerprints {self.fingerprint} and {other.fingerprint})")
        if self.weights and other.weights and self.weights != other.weights:
            raise StatsError(f"cannot merge stats of two models with different weights (digests {self.weights} and "
                             f"{other.weights}): same architecture, another training")
        if other.sha256() == self.sha256():
            raise StatsError("the two stats are identical: a shard merged with itself would count its samples twice")
        if list(other.sites) != list(self.sites) or other.placement != self.placement:
            raise StatsError("cannot merge stats with different site lists; calibrate both shards with the same selection")
        merged = {}
        for name, s in self.sites.items():
            o = other.sites[name]
            if (o.axis, o.channels) != (s.axis, s.channels):
                raise StatsError(f"cannot merge: site {name!r} differs in channel axis or channel count")
            merged[name] = SiteStats(s.name, s.feed, s.kind, s.axis, s.rank, s.dtype, s.moments.merge(o.moments))
        unreached = tuple(n for n in self.unreached if n in other.unreached)
        if set(self.unreached) != set(other.unreached):
            raise StatsError("cannot merge: the shards reached different sites inside branches or loops; "
                             "calibrate both on data that reaches the same branches")
        return Stats(self.fingerprint, self.placement, merged, self.samples + other.samples, self.selection,
                     self.inputs or other.inputs, unreached, self.weights or other.weights)

    def aligned_to(self, sites: list[tuple[str, str, int | None]]) -> "Stats | None":
        """These stats renamed to ``sites`` (name, kind, channels) when names differ but the
        sequences agree site by site in kind and channel count; None when they do not.

        This is the documented fallback between an FX graph and its ONNX export when the
        exporter's optimizer renamed a node (e.g. ``elu`` -> ``node_Elu_13``).
        """
        if self.misaligned(sites) is not None:
            return None
        mine = list(self.sites.values())
        renamed = {}
        for s, (name, _, _) in zip(mine, sites):
            renamed[name] = SiteStats(name, s.feed, s.kind, s.axis, s.rank, s.dtype, s.moments)
        return Stats(self.fingerprint, self.placement, renamed, self.samples, self.selection, self.inputs,
                     self.unreached, self.weights)

    def misaligned(self, sites: list[tuple[str, str, int | None]]) -> str | None:
        """Why these stats cannot be aligned to ``sites`` by position (:meth:`aligned_to`), or None."""
        mine = list(self.sites.values())
        if len(mine) != len(sites):
            return f"the model has {len(sites)} site(s), the stats {len(mine)}"
        for i, (s, (name, kind, channels)) in enumerate(zip(mine, sites)):
            if s.kind != kind or (isinstance(channels, int) and channels >= 0 and s.channels != channels):
                return (f"site {i} of the model, {name!r} ({kind}, {channels if channels is not None else '?'} "
                        f"channels), is {s.name!r} ({s.kind}, {s.channels} channels) in the stats")
        return None

    def matched_to(self, sites: list[tuple[str, str, int | None, str]], *, by_position: bool,
                   check_feeds: bool) -> "Stats":
        """These stats for a graph whose sites are ``(name, kind, channels, feed)``, or StatsError.

        ``by_position`` allows the documented fallback between an FX graph and its ONNX export
        when an exporter renamed a node; ``check_feeds`` compares guarded tensor names too
        (meaningful only when both sides are ONNX).
        """
        stats = self
        names = [name for name, _, _, _ in sites]
        if by_position and set(names) != set(self.sites):
            by_kind = [(n, k, c) for n, k, c, _ in sites]
            why = self.misaligned(by_kind)
            if why is not None and not set(names) & set(self.sites):  # neither by name nor by position
                raise StatsError(f"stats do not fit this model: {why}; stats of another model?")
            stats = self.aligned_to(by_kind) or self
        extra = [n for n in stats.sites if n not in names]
        if extra:
            raise StatsError(f"stats hold site {extra[0]!r} that this model lacks ({len(extra)} in all); "
                             "stats of another model?")
        missing = [n for n in names if n not in stats.sites and n not in stats.unreached]
        if missing:
            raise StatsError(f"site {missing[0]!r} has no statistics ({len(missing)} missing); recalibrate")
        for name, _, channels, feed in sites:
            if name not in stats.sites:
                continue  # unreached by calibration: left as it is
            st = stats.sites[name]
            if check_feeds and st.feed != feed:
                raise StatsError(f"site {name!r} guards tensor {feed!r} but the stats measured {st.feed!r}")
            if isinstance(channels, int) and channels >= 0 and channels != st.channels:
                raise StatsError(f"site {name!r} has {channels} channels but its stats have {st.channels}")
        return stats

    def to_dict(self) -> dict:
        """What calibration measured, for machines (``calibrate --json``): per site its kind, axis, channels and
        sample count, and the content digest that names these statistics."""
        return {"fingerprint": self.fingerprint, "placement": Placement(self.placement).value,
                "samples": self.samples, "sha256": self.sha256(), "unreached": list(self.unreached),
                "sites": {s.name: {"kind": s.kind, "tensor": s.feed, "axis": s.axis, "channels": s.channels,
                                   "count_per_channel": int(s.moments.count)} for s in self.sites.values()}}

    def format(self) -> str:
        """The statistics for people (``mstransform stats inspect``): the file's identity, then one row per site."""
        lines = [f"format {FORMAT} v{VERSION}; model fingerprint {self.fingerprint}; "
                 f"placement {Placement(self.placement).value}",
                 f"{len(self.sites)} site(s) from {self.samples} sample(s); content sha256 {self.sha256()}"]
        head = ("site", "kind", "axis", "C", "count/ch", "mean(avg)", "std(avg)", "std(min)", "|x|max")
        rows = []
        for s in self.sites.values():
            std = np.sqrt(s.moments.var)
            rows.append((s.name, s.kind, str(s.axis), str(s.channels), str(s.moments.count),
                         f"{s.moments.mean.mean():.4g}", f"{std.mean():.4g}", f"{std.min():.4g}",
                         "-" if s.moments.absmax is None else f"{s.moments.absmax.max():.4g}"))
        widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
        zero = [s.name for s in self.sites.values() if np.any(s.moments.var == 0)]
        if zero:
            lines.append(f"note: {len(zero)} site(s) have channels with zero variance (never sparsified): "
                         + ", ".join(zero[:5]) + (" ..." if len(zero) > 5 else ""))
        return "\n".join(lines)


def load_stats(path: str | bytes | os.PathLike) -> Stats:
    """The stats file at ``path``, every key checked (:meth:`Stats.from_arrays`)."""
    return Stats.load(path_arg(path, "stats", StatsError))


def as_stats(value, param: str = "stats") -> Stats:
    """``value`` as :class:`Stats`: stats already, a stats file's path (``str``, ``bytes``, ``os.PathLike``),
    or its arrays (``np.load("stats.npz")``, a mapping of arrays), checked as a file's are; anything else
    is refused in one line naming ``param``."""
    if isinstance(value, Stats):
        return value
    if is_path(value):
        return Stats.load(path_arg(value, param, StatsError))
    if isinstance(value, Mapping):
        return Stats.from_arrays(value, param)
    raise UsageError(f"must be Stats, a stats file path or its arrays (np.load of it, a mapping of arrays), "
                     f"not {type(value).__name__}", param=param)


