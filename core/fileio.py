"""Safe file output: every output is written under a name of its own beside the target, checked
there, and renamed, so a crash, a full disk, Ctrl-C or a second run writing the same path leaves
either the old file or a whole new one, never half a file, and a run removes only the temporary
files it made itself. Outputs get mode ``0666 & ~umask``, as a file made by ``open`` would. The
checks on paths before any work are in :mod:`mstransform.core.guards`.
"""
from __future__ import annotations
import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from mstransform.core.errors import OutputError

from mstransform.core.guards import DATA_SUFFIX, _stat, as_output_error, file_id, output_file, resolved

_TMP_PREFIX = ".mstransform-"


def output_mode() -> int:
    """The mode ``open()`` would give a new file: ``0o666 & ~umask`` (temporary files start at 0o600)."""
    try:  # Linux >= 4.7 shows the umask without changing it (thread-safe)
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _ours(e: OSError, *mine) -> bool:
    """True when ``e`` came from writing one of ``mine`` (or names no file: a write to an open file)."""
    names = [n for n in (e.filename, getattr(e, "filename2", None)) if n is not None]
    if not names:
        return True
    owned = {os.path.abspath(os.fspath(m)) for m in mine}
    return all(os.path.abspath(os.fsdecode(n) if isinstance(n, bytes) else str(n)) in owned
               or _TMP_PREFIX in str(n) for n in names)

@contextlib.contextmanager
def atomic_output(path: str | Path):
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    The temporary file is this call's own (a unique name), gets mode ``0666 & ~umask`` before
    the rename, and is removed on any failure. An OSError of the write (disk full, file-size
    limit, read-only file system) comes out as one OutputError line."""
    path = output_file(path)
    target = resolved(path, "output path")
    st = _stat(target)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OutputError(f"output path {path} is not a regular file; refusing to replace it")
    try:  # a short prefix: the temporary name must fit where the target's name just fits
        fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{path.name[:24]}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as e:
        raise as_output_error(e, path) from None
    try:
        yield Path(tmp)
        os.chmod(tmp, output_mode())
        os.replace(tmp, target)
    except OSError as e:
        _unlink(tmp)
        if _ours(e, tmp, target, path):
            raise as_output_error(e, path) from None
        raise
    except BaseException:
        _unlink(tmp)
        raise

class Publication:
    """What :func:`publishing` yields: ``path``, the temporary file to write and check (it has the
    output's own name, inside a private folder beside the output, so a model's relative
    external-data location ``OUT.data`` is right in both places), and, after a successful
    exit, ``published``: each file renamed into place with its (device, inode)."""

    def __init__(self, output: Path, folder: Path, companions: tuple[str, ...]):
        self.output, self.folder, self.companions = output, folder, companions
        self.path = folder / output.name
        self.published: list[tuple[Path, tuple[int, int] | None]] = []

    def retract(self) -> None:
        """Undo the publication (a later step failed): see :func:`retract`."""
        retract(self.published)
        self.published = []

def retract(published) -> None:
    """Remove each published ``(path, (device, inode))`` that is still the file this run renamed
    there, never a file another run (or the user) has put there since."""
    for dst, ident in reversed(list(published)):
        if ident is not None and file_id(dst) == ident:
            _unlink(dst)

@contextlib.contextmanager
def publishing(output: str | Path, companions: tuple[str, ...] = (DATA_SUFFIX,)):
    """Write, check, then publish ``output``: yield a :class:`Publication` whose ``path`` is a
    temporary file of this run's own; when the block ends without error, rename its companions
    (``path.data``, where written) and then the file onto ``output``, with mode ``0666 & ~umask``.

    On any error (a failed write, a failed verification, Ctrl-C) only this run's temporary folder
    is removed: the output as it was (another run's, or the old file) is never touched. Two runs
    publishing the same output each check their own file; the last rename wins, whole: the
    renames of one output's files happen under an exclusive lock on its folder.
    """
    output = output_file(output)
    folder = resolved(output.parent, "output folder")
    dest = folder / output.name  # a final symbolic link is replaced, never written through
    st = _stat(dest)
    if st is not None and not stat.S_ISREG(st.st_mode) and not os.path.islink(dest):
        raise OutputError(f"output path {output} is not a regular file; refusing to replace it")
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=folder))
    except OSError as e:
        raise as_output_error(e, output) from None
    pub = Publication(dest, tmpdir, tuple(companions))
    try:
        yield pub
        mode = output_mode()
        moves = [(tmpdir / (output.name + c), folder / (output.name + c)) for c in pub.companions]
        moves = [(s, d) for s, d in moves if os.path.lexists(s)] + [(pub.path, dest)]
        with _folder_lock(folder), _signals_held():
            for src, dst in moves:
                os.chmod(src, mode)
                ident = file_id(src)
                os.replace(src, dst)
                pub.published.append((dst, ident))
    except OSError as e:
        if _ours(e, tmpdir, pub.path, dest, *(d for _, d in pub.published)):
            raise as_output_error(e, output) from None
        raise
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)

@contextlib.contextmanager
def _signals_held():
    """Ctrl-C and SIGTERM wait until the block ends: a model and its ``.data`` are renamed as a pair."""
    import signal

    held = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, OSError, ValueError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)

@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive advisory lock on ``folder`` (its own descriptor: no lock file is left behind)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: renames stay atomic one by one
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock

def remove_quietly(*paths: Path) -> None:
    for p in paths:
        _unlink(p)

def _unlink(p) -> None:
    with contextlib.suppress(OSError):
        os.unlink(p)


def write_json(path: str | Path, document: dict) -> Path:
    """``document`` as JSON at ``path``, written whole or not at all (:func:`atomic_output`)."""
    import json

    text = json.dumps(document, indent=1, allow_nan=False, default=str) + "\n"
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)
