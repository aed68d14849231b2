"""Every output of a model over a data source, each joined along its own batch axis.

A model's outputs hold their samples along different axes: ``[N, K, 4]`` boxes and ``[N, K]``
scores along axis 0, a sequence-first ``[T, N, C]`` along axis 1, and some hold none (an anchor
table, a count). Each output's batch axis is found once every batch has run:

1. the axes whose size is the batch's sample count in *every* batch, and along which the other
   dims agree from batch to batch (a short last batch settles most ties);
2. among them, the one whose declared dim carries an input's batch dim name (``N``, ``batch``);
   failing that, axes the graph declares under an input's other dim names are dropped (``T`` of
   ``x [N, T, 4]``), and where the inputs' batch is dynamic, so are those declared with a fixed
   size other than 1 (a fixed 4 is not a batch of 4 samples; an export that bakes batch 1 into a
   ``Reshape`` declares ``[1, 10]`` for a batch of one);
3. axis 0 where it remains, else the first that remains; none where none remains.

An output with no batch axis is kept as the first batch gave it, and :attr:`Outputs.notes` says
so (and whether later batches gave other values). Nothing is refused for its shape.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from mstransform.core.errors import DataError
from mstransform.runtime.inputs import InputSpec
from mstransform.runtime.session import run_step

Dim = int | str | None  # a fixed size, a dim name, or an unnamed dynamic dim


@dataclass
class Outputs:
    """The model's outputs over every sample, in graph order."""

    arrays: dict[str, np.ndarray]
    batch_axes: dict[str, int | None]  # None: no batch axis (the first batch's value)
    samples: int
    labels: np.ndarray | None  # the data's labels, when every batch had them
    notes: list[str] = field(default_factory=list)  # one line each


def declared_outputs(model: ir.Model) -> dict[str, tuple[Dim, ...] | None]:
    """Each graph output's declared dims (None where its rank is unknown), in graph order."""
    out: dict[str, tuple[Dim, ...] | None] = {}
    for v in model.graph.outputs:
        if v.shape is None:
            out[v.name] = None
            continue
        dims: list[Dim] = []
        for d in v.shape:
            if isinstance(d, int):
                dims.append(d if d > 0 else None)
            else:
                name = getattr(d, "value", None)
                dims.append(name if isinstance(name, str) and name else None)
        out[v.name] = tuple(dims)
    return out


def gather_outputs(session, batches, declared: dict[str, tuple[Dim, ...] | None],
                   specs: list[InputSpec]) -> Outputs:
    """Run every batch of ``batches`` and join each output of ``declared`` along its batch axis."""
    names = list(declared)
    pieces: dict[str, list[np.ndarray]] = {n: [] for n in names}
    sizes, labels, notes = [], [], []
    skipped: set[str] = set()
    for batch in batches:
        values = run_step(session, names, batch.inputs, DataError, f"inference, batch starting at sample {batch.start}")
        for name, value in zip(names, values):
            array = _as_array(value)
            if array is None:
                skipped.add(name)
            elif name not in skipped:
                pieces[name].append(array)
        sizes.append(len(batch))
        if batch.labels is not None:
            labels.append(batch.labels)
    if not sizes:
        raise DataError("the data holds no samples")
    for name in sorted(skipped, key=names.index):
        notes.append(f"note: output {name!r} is a sequence or map, not a tensor: not written")
    names_of_batch = {s.dim_names[s.batch_axis] for s in specs
                      if s.dim_names and s.batch_axis is not None and s.batch_axis < len(s.dim_names)} - {None}
    other_names = {d for s in specs for d in s.dim_names or ()} - names_of_batch - {None}
    dynamic_batch = any(s.shape and s.batch_axis is not None and s.batch_axis < len(s.shape)
                        and s.shape[s.batch_axis] is None for s in specs)
    arrays, axes = {}, {}
    for name in names:
        if name in skipped:
            continue
        parts = pieces[name]
        axis = _batch_axis(parts, sizes, declared[name], names_of_batch, other_names, dynamic_batch)
        axes[name] = axis
        if axis is not None:
            arrays[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)
        else:
            arrays[name] = parts[0]
            notes.append(_kept_note(name, parts, sum(sizes)))
    total = sum(sizes)
    joined = np.concatenate(labels) if labels and sum(map(len, labels)) == total else None
    return Outputs(arrays, axes, total, joined, notes)


def _as_array(value) -> np.ndarray | None:
    """A tensor output as a numpy array that ``.npz`` holds without pickling (strings as unicode);
    None for a sequence or a map."""
    if not isinstance(value, np.ndarray):
        return None
    if value.dtype == object:
        return value.astype(str)
    return value


def _batch_axis(parts: list[np.ndarray], sizes: list[int], declared: tuple[Dim, ...] | None,
                batch_names: set[str], other_names: set[str], dynamic_batch: bool) -> int | None:
    """The axis of ``parts`` (one array per batch) that holds the samples (see the module's rules)."""
    rank = parts[0].ndim
    if any(p.ndim != rank for p in parts):
        return None
    first = parts[0].shape
    candidates = [a for a in range(rank)
                  if all(p.shape[a] == n for p, n in zip(parts, sizes))
                  and all(p.shape[:a] + p.shape[a + 1:] == first[:a] + first[a + 1:] for p in parts)]
    if declared is not None and len(declared) == rank:
        named = [a for a in candidates if isinstance(declared[a], str) and declared[a] in batch_names]
        if named:
            return named[0]
        candidates = [a for a in candidates if declared[a] not in other_names
                      and not (dynamic_batch and isinstance(declared[a], int) and declared[a] != 1)]
    if 0 in candidates:
        return 0
    return candidates[0] if candidates else None


def _kept_note(name: str, parts: list[np.ndarray], total: int) -> str:
    """The note on an output kept as the first batch gave it: why, and whether later batches differed."""
    def dims(p):
        return "[" + ",".join(map(str, p.shape)) + "]"

    whole = f"--batch-size {total} runs all samples in one batch"
    changed = next((p for p in parts[1:] if p.shape != parts[0].shape), None)
    if changed is not None:
        return (f"note: output {name!r} changes shape between batches ({dims(parts[0])}, then {dims(changed)}), so its "
                f"batches cannot be joined: written as the first batch gave it ({whole})")
    text = (f"note: output {name!r} ({dims(parts[0])} in every batch) has no batch axis: written as the first batch "
            "gave it")
    if any(not np.array_equal(p, parts[0], equal_nan=p.dtype.kind in "fc") for p in parts[1:]):
        text += f"; later batches gave other values ({whole})"
    return text
