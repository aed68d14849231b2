"""Evaluation in chunks: which images a shard attacks, each chunk's seed, and verdicts kept on disk as they come.

The unit of work is a *chunk*: images ``[k * B, (k + 1) * B)`` for the batch size ``B``. Every
attack on a chunk is seeded from ``(seed, first image index)`` alone, so a chunk's verdicts are
the same whichever shard, process, machine or resumed run computes it: ``--shard I/N`` takes chunks
``I, I + N, I + 2N, ...`` and a merge of the shards equals a single run image by image.

A verdict string has one character per image of the evaluated set: ``1`` (correct), ``0``
(wrong) or ``.`` (not evaluated here: another shard's image).

:class:`ChunkStore` keeps each finished chunk's verdicts as one small JSON file in a folder
beside the report (``REPORT.parts/``), written atomically, under a key that names everything the
verdicts depend on (the attack settings, the models' and the data's bytes, runtime and device).
A run that finds the folder resumes from it; one with other settings is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mstransform.core.errors import UsageError
from mstransform.core.fileio import atomic_output, remove_quietly
from mstransform.core.options import Runtime, choice

NOT_HERE = "."


def check_shard(shard) -> tuple[int, int] | None:
    """``shard`` as ``(I, N)`` with ``0 <= I < N``, or None; anything else is refused naming ``shard``."""
    if shard is None:
        return None
    if not (isinstance(shard, (tuple, list)) and len(shard) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)):
        raise UsageError(f"must be a pair (I, N) of integers, not {type(shard).__name__}", param="shard")
    i, n = shard
    if not 0 <= i < n:
        raise UsageError(f"needs 0 <= I < N, got {i}/{n}", param="shard")
    return int(i), int(n)


def check_resume(parts, fresh) -> tuple[Path | None, bool]:
    """The folder of kept chunks (a path, or None: none kept) and ``fresh`` (a bool), checked."""
    if not isinstance(fresh, bool):
        raise UsageError(f"must be True or False, not {type(fresh).__name__}", param="fresh")
    if parts is None:
        return None, fresh
    if not isinstance(parts, (str, bytes, os.PathLike)):
        raise UsageError(f"must be a folder path (str, bytes or os.PathLike), not {type(parts).__name__}",
                         param="parts")
    return Path(os.fsdecode(os.fspath(parts))), fresh


def chunk_ranges(n: int, batch: int, shard: tuple[int, int] | None = None) -> list[tuple[int, int]]:
    """The ``(start, stop)`` of every chunk shard ``(I, N)`` attacks: chunks ``I, I + N, ...`` of ``n`` images."""
    i, world = shard or (0, 1)
    return [(s, min(s + batch, n)) for k, s in enumerate(range(0, n, batch)) if k % world == i]


def of_shard(log, shard):
    """``log`` (a callable taking one line) with each line marked as one shard's (its figures are over the
    shard's images only)."""
    if log is None or shard is None or shard[1] == 1:
        return log
    return lambda line: log(f"shard {shard[0]}/{shard[1]}: {line}")


def chunk_seed(seed: int, start: int) -> int:
    """The attacks' seed for the chunk starting at image ``start``: a function of (seed, start) only."""
    return int(np.random.SeedSequence([seed, start]).generate_state(1)[0])


def blank(n: int) -> list[str]:
    return [NOT_HERE] * n


def encode(correct: np.ndarray) -> str:
    return "".join("1" if c else "0" for c in correct)


def accuracy(verdicts: str) -> float:
    """Percent correct among the evaluated images (``.`` excluded)."""
    seen = len(verdicts) - verdicts.count(NOT_HERE)
    return 100.0 * verdicts.count("1") / seen if seen else float("nan")


def overlay(parts: list[str], what: str) -> str:
    """The verdicts of shards that cover disjoint images, as one string; refused where they overlap."""
    if len({len(p) for p in parts}) != 1:
        raise UsageError(f"{what}: the reports cover different numbers of images")
    out = []
    for chars in zip(*parts):
        seen = [c for c in chars if c != NOT_HERE]
        if len(seen) > 1:
            raise UsageError(f"{what}: two reports evaluated the same image (shards of one split overlap)")
        out.append(seen[0] if seen else NOT_HERE)
    return "".join(out)


def file_digest(path) -> str:
    """sha256 of a file's bytes, or of a folder's listing (relative names, sizes, modification times)."""
    p, h = Path(path), hashlib.sha256()
    if p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_key(cfg, models, data, runtime, device, **more) -> str:
    """What a chunk's verdicts depend on, as one digest (never the split: shards share chunk files).
    ``more``: anything else they depend on, as JSON-able values (a sweep's alphas and stats digest)."""
    doc = {"config": asdict(cfg), "models": [file_digest(m) for m in models], "data": file_digest(data),
           "runtime": choice(Runtime, runtime, "runtime").value, "device": str(device or "cpu"), **more}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


class ChunkStore:
    """Finished chunks of one evaluation, one atomic JSON file each, in ``folder``."""

    MANIFEST = "manifest.json"

    def __init__(self, folder, key: str, fresh: bool = False):
        self.folder, self.key = Path(folder), key
        manifest = self.folder / self.MANIFEST
        if fresh:
            self.clear()
        elif manifest.exists():
            try:
                found = json.loads(manifest.read_text()).get("key")
            except (OSError, ValueError, AttributeError):
                found = None
            if found != key:
                raise UsageError(f"{self.folder} holds the verdicts of an evaluation with other settings, models or "
                                 "data; give --fresh to start over")

    def _path(self, model: int, start: int) -> Path:
        return self.folder / f"model{model}-{start:09d}.json"

    def load(self, model: int, start: int, stop: int):
        """The verdicts and seconds of a finished chunk, or None."""
        try:
            doc = json.loads(self._path(model, start).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("key") != self.key or doc.get("stop") != stop:
            return None
        return doc["verdicts"], doc["seconds"]

    def save(self, model: int, start: int, stop: int, verdicts: dict[str, str], seconds: dict[str, float]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = self.folder / self.MANIFEST
        if not manifest.exists():
            with atomic_output(manifest) as tmp:
                Path(tmp).write_text(json.dumps({"key": self.key}) + "\n")
        doc = {"key": self.key, "model": model, "start": start, "stop": stop, "verdicts": verdicts,
               "seconds": seconds}
        with atomic_output(self._path(model, start)) as tmp:
            Path(tmp).write_text(json.dumps(doc) + "\n")

    def clear(self, chunks=None, models: int = 0) -> None:
        """Remove the files of ``chunks`` (of models ``0 .. models - 1``), by default every chunk's; then the
        manifest and the folder once no chunk file is left. Nothing else is touched."""
        if not self.folder.is_dir():
            return
        if chunks is None:
            mine = [p for p in self.folder.iterdir() if p.name.startswith("model") and p.suffix == ".json"]
        else:
            mine = [self._path(m, start) for m in range(models) for start, _ in chunks]
        remove_quietly(*mine)
        if not any(p.name.startswith("model") and p.suffix == ".json" for p in self.folder.iterdir()):
            remove_quietly(self.folder / self.MANIFEST)
            try:
                os.rmdir(self.folder)
            except OSError:
                pass


def describe_work(models: int, images: int, chunks: int, cfg) -> str:
    """The work ahead of an evaluation in one line: models x images x attacks, and each attack's iterations."""
    steps = {"apgd-ce": f"{cfg.apgd_iters} iterations", "apgd-dlr": f"{cfg.apgd_iters} iterations",
             "bpda": f"{cfg.apgd_iters} iterations", "pgd": f"{cfg.pgd_steps} steps",
             "square": f"{cfg.square_queries} queries"}
    attacks = ", ".join(f"{a} ({steps.get(a, '?')})" for a in cfg.attacks)
    return (f"work ahead: {models} model(s) x {images} image(s) in {chunks} chunk(s) of up to {cfg.batch_size} x "
            f"{len(cfg.attacks)} attack(s): {attacks}")


class Work:
    """One progress bar over every model's chunks of an evaluation or a sweep (with tqdm's ETA; ``progress``
    False: none), and to ``log`` the work ahead first and an estimate of the whole once the first chunk has
    been attacked."""

    def __init__(self, models: int, images: int, chunks: int, cfg, log=None, progress: bool = True):
        from tqdm.auto import tqdm

        self.log, self.total, self.timed = log, models * chunks, None
        if log:
            log(describe_work(models, images, chunks, cfg))
        self.bar = tqdm(total=self.total, desc="evaluating", unit="chunk", leave=False,
                        disable=None if progress else True)

    def chunk_done(self, seconds: float | None) -> None:
        """One chunk finished: ``seconds`` it took to attack, or None where it was read from a kept chunk."""
        if seconds is not None and self.timed is None and self.log:
            self.timed = seconds
            left = self.total - self.bar.n - 1
            with self.bar.external_write_mode():
                self.log(f"estimate: about {_duration(seconds * left)} for the {left} chunk(s) left "
                         f"(the first took {seconds:.1f} s)")
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
