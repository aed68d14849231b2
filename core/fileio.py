"""Safe file output: inputs are never overwritten, special files never replaced, and every
output is written to a temporary name beside the target and renamed, so a crash, a full disk
or Ctrl-C leaves either the old file or nothing, never half a file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from mstransform.core.errors import OutputError, UsageError


def resolved(path: str | Path, what: str = "path") -> Path:
    """``path`` made absolute with links followed; a one-line error on a symlink loop."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as e:  # Python raises RuntimeError on a symlink loop
        raise UsageError(f"{what} {path} cannot be resolved ({e})") from None


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` name one file: same resolved path, or same inode (hard links)."""
    ra, rb = resolved(a), resolved(b)
    if ra == rb:
        return True
    try:
        return os.path.samefile(ra, rb)
    except OSError:
        return False


def check_outputs(outputs, inputs) -> list[Path | None]:
    """Refuse, before any work, every output that is an input, another output, or not writable.

    ``outputs`` and ``inputs`` are paths or None (absent). An output that exists must be a
    regular file: renaming onto a device node (/dev/null, /dev/full) would replace the device.
    """
    ins = [Path(p) for p in inputs if p is not None]
    checked: list[Path | None] = []
    for out in outputs:
        if out is None:
            checked.append(None)
            continue
        path = Path(out)
        target = resolved(path, "output path")
        for inp in ins:
            if inp.exists() and same_file(path, inp) or target == resolved(inp, "input path"):
                raise OutputError(f"output path {path} is the input {inp}; choose another output "
                                  "(inputs are never modified)")
        for other in checked:
            if other is not None and (target == resolved(other) or same_file(path, other)):
                raise OutputError(f"two outputs are the same file {path}; give each its own name")
        if target.exists() and not target.is_file():
            kind = "a folder" if target.is_dir() else "not a regular file (a device, pipe or socket)"
            raise OutputError(f"output path {path} is {kind}; give a regular file name")
        parent = target.parent
        if not parent.is_dir():
            raise OutputError(f"output folder {parent} does not exist; create it or choose another output")
        if not os.access(parent, os.W_OK):
            raise OutputError(f"output folder {parent} is not writable; choose another output")
        checked.append(path)
    return checked


def check_output_path(path: str | Path, *inputs) -> Path:
    """One output against its inputs (see :func:`check_outputs`)."""
    return check_outputs([path], inputs)[0]


def _map_os_error(e: OSError, path: Path) -> OutputError | None:
    if e.errno == errno.ENOSPC:
        return OutputError(f"disk full while writing {path}; free space and run again")
    if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return OutputError(f"cannot write {path}: {e.strerror}")
    return None


def as_output_error(e: OSError, path: Path) -> OutputError:
    """Any failed write of ``path`` as one OutputError line."""
    return _map_os_error(e, path) or OutputError(f"cannot write {path}: {e.strerror or e}")


@contextlib.contextmanager
def atomic_output(path: str | Path):
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success."""
    path = Path(path)
    target = resolved(path, "output path")
    if target.exists() and not stat.S_ISREG(target.stat().st_mode):
        raise OutputError(f"output path {path} is not a regular file; refusing to replace it")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except OSError as e:
        _unlink(tmp)
        mapped = _map_os_error(e, path)
        if mapped is not None:
            raise mapped from None
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


def replace_into(src: Path, dst: Path) -> None:
    """Rename ``src`` onto ``dst``, mapping disk-full and permission errors to OutputError."""
    try:
        os.replace(src, dst)
    except OSError as e:
        raise as_output_error(e, dst) from None


def remove_quietly(*paths: Path) -> None:
    for p in paths:
        _unlink(p)


def _unlink(p) -> None:
    with contextlib.suppress(OSError):
        os.unlink(p)
