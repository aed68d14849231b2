"""Atomic outputs: everything is written to a temporary name beside the target, then renamed.

A crash, a full disk or Ctrl-C leaves either the old file or nothing, never half a file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from mstransform.errors import OutputError


def check_output_path(path: str | Path, *inputs: str | Path) -> Path:
    """Refuse an output that equals an input or whose folder is missing or read-only."""
    path = Path(path)
    for inp in inputs:
        if inp is None:
            continue
        inp = Path(inp)
        if path.resolve() == inp.resolve() or (path.exists() and inp.exists() and os.path.samefile(path, inp)):
            raise OutputError(f"output path {path} is the input file; choose another -o (inputs are never modified)")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist; create it or choose another -o")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder {parent} is not writable; choose another -o")
    if path.is_dir():
        raise OutputError(f"output path {path} is a folder; give a file name")
    return path


@contextlib.contextmanager
def atomic_output(path: str | Path):
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success."""
    path = Path(path)
    parent = path.resolve().parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as e:
        _unlink(tmp)
        if e.errno == errno.ENOSPC:
            raise OutputError(f"disk full while writing {path}; free space and run again") from None
        if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise OutputError(f"cannot write {path}: {e.strerror}") from None
        raise
    except BaseException:
        _unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(parent: str | Path):
    """A temporary folder inside ``parent`` that is removed afterwards, whatever happens."""
    tmpdir = tempfile.mkdtemp(prefix=".mstransform-", dir=parent)
    try:
        yield Path(tmpdir)
    finally:
        for name in os.listdir(tmpdir):
            _unlink(os.path.join(tmpdir, name))
        with contextlib.suppress(OSError):
            os.rmdir(tmpdir)


def _unlink(p) -> None:
    with contextlib.suppress(OSError):
        os.unlink(p)
