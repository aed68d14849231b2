"""Guards on paths, before anything is read or written: what an input may be, what an output may
not be, and the one mapping of operating-system errors to error classes.

Outputs are never an input (by resolved path or by inode, and through every file an input model
references) and never a special file; inputs that are not regular files (or folders where one is
accepted) are refused before they are opened, so a FIFO cannot block and a device cannot be read
for ever. :func:`input_error` and :func:`classify_os_error` turn an ``OSError`` into the one-line
error of its class (data, stats, model, output).
"""
from __future__ import annotations
import errno
import os
import stat
from pathlib import Path
from mstransform.core.errors import MstError, OutputError, UsageError

# errno values that only a write can raise: whatever file they name, the output is at fault.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS})

# What the companion of a model output is called: ``OUT.data`` holds its external data.
DATA_SUFFIX = ".data"

_TMP_PREFIX = ".mstransform-"


# -- paths -------------------------------------------------------------------------------------
def is_path(value) -> bool:
    """Whether ``value`` is a file path as Python spells one: ``str``, ``bytes`` or ``os.PathLike``."""
    return isinstance(value, (str, bytes, os.PathLike))


def path_arg(value, param: str, error: type[MstError] = UsageError, *, optional: bool = False) -> Path | None:
    """``value`` (``str``, ``bytes`` or ``os.PathLike``) as a :class:`Path`; None where ``optional`` and absent.

    Anything else is refused in one line naming ``param`` (``error``'s class); so is a name holding a
    NUL byte, which no file can have."""
    if value is None and optional:
        return None
    if not is_path(value):
        raise error(f"must be a file path (str, bytes or os.PathLike), not {type(value).__name__}", param=param)
    try:
        text = os.fspath(value)
        text = os.fsdecode(text) if isinstance(text, bytes) else text
    except TypeError as e:  # __fspath__ returned something else
        raise error(f"is not a file path ({e})", param=param) from None
    if not isinstance(text, str) or "\0" in text or not text:
        raise error(f"{text!r:.80} is not a valid file name", param=param)
    return Path(text)


def resolved(path: str | Path, what: str = "path") -> Path:
    """``path`` made absolute with links followed; a one-line error on a symlink loop."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as e:  # Python raises RuntimeError on a symlink loop
        raise UsageError(f"{what} {path} cannot be resolved ({e})") from None

def _stat(path) -> os.stat_result | None:
    """``os.stat`` (links followed), None where it fails for any reason (missing, too long, a loop)."""
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None

def file_id(path) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` names, links followed; None where it does not exist."""
    st = _stat(path)
    return None if st is None else (st.st_dev, st.st_ino)

def same_file(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` name one file: same resolved path, or same inode (hard links)."""
    if resolved(a) == resolved(b):
        return True
    ia = file_id(a)
    return ia is not None and ia == file_id(b)

def data_companion(path: str | Path) -> Path:
    """The external-data file written beside a model output: ``OUT.data``."""
    path = Path(path)
    return path.with_name(path.name + DATA_SUFFIX)

def output_file(raw) -> Path:
    """``raw`` (an output path as given) as a Path, refused first when it can only name a folder: checked
    before pathlib, which drops a trailing separator."""
    text = os.fsdecode(os.fspath(raw))
    if names_folder(text):
        raise OutputError(f"output path {text} names a folder (it ends with a separator); give a file name")
    return Path(text)


def names_folder(raw) -> bool:
    """``-o newdir/``, ``-o out/.``: a path that can only name a folder (pathlib drops the slash)."""
    text = os.fspath(raw)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    seps = tuple(s for s in (os.sep, os.altsep) if s)
    return text.endswith(seps) or os.path.basename(text) in (".", "..", "")

# -- inputs ------------------------------------------------------------------------------------
_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))

def special_kind(mode: int) -> str | None:
    """What a file of ``mode`` is when it is neither a regular file nor a folder."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")

def input_error(e: OSError, path, error: type[MstError], what: str) -> MstError:
    """A failed read of input ``path`` as one line of ``error``'s class (``what``: "data file")."""
    if e.errno == errno.ENOENT:
        return error(f"{what} {path} does not exist")
    return error(f"{what} {path} cannot be read ({e.strerror or e})")

def check_readable(path: str | Path, error: type[MstError], what: str, *, folder: bool = False,
                   missing_ok: bool = False) -> Path:
    """Refuse, before anything opens it, an input that is not a regular file (nor a folder, with
    ``folder``), or that cannot be opened and read; ``error(message)`` names ``what`` and ``path``.

    A FIFO would block the reader for ever, a device read for ever: they are refused from their
    mode, never opened. A regular file is opened and one byte read, so a permission, I/O or
    name-length problem is reported here, in the input's class, instead of as a bare OSError
    from deep inside a reader. With ``missing_ok`` a missing path passes (the reader says it).
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        if missing_ok and e.errno in (errno.ENOENT, errno.ENOTDIR):
            return path
        raise input_error(e, path, error, what) from None
    except ValueError:  # a NUL byte in the name
        raise error(f"{what} {path!r} is not a valid file name") from None
    if stat.S_ISDIR(st.st_mode):
        if not folder:
            raise error(f"{what} {path} is a folder, not a file")
        try:
            with os.scandir(path) as entries:
                next(entries, None)
        except OSError as e:
            raise input_error(e, path, error, what) from None
        return path
    kind = special_kind(st.st_mode)
    if kind is not None:
        raise error(f"{what} {path} is {kind}, not a regular file{' or folder' if folder else ''}; "
                    "give a file (special files are never read)")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        try:
            os.read(fd, 1)
        finally:
            os.close(fd)
    except OSError as e:
        raise input_error(e, path, error, what) from None
    return path

# -- outputs -----------------------------------------------------------------------------------
def check_outputs(outputs, inputs, *, models=()) -> list[Path | None]:
    """Refuse, before any work, every output that is an input, another output, or not writable.

    ``outputs`` and ``inputs`` are paths or None (absent). ``inputs`` must hold every file the
    inputs reference (an input model's external data: ``passes.graph.external_data.model_references``).
    ``models`` names the outputs that are ONNX models: each also writes ``OUT.data`` (its
    external data) when it is big or its input had external data, so that file is checked too.

    An output is refused when it is an input by resolved path or by inode (symbolic and hard
    links), when it ends in a separator or names a folder, when its name is longer than the
    folder allows, and when it exists as anything but a regular file: renaming onto a device
    node (/dev/null, /dev/full) would replace the device.
    """
    models = {os.fspath(m) for m in models if m is not None}
    ins = []
    for p in inputs:
        if p is None:
            continue
        ins.append((Path(p), _resolved_or_none(p), file_id(p)))
    entries = []
    for out in outputs:
        entries.append((out, None))
        if out is not None and os.fspath(out) in models:
            entries.append((data_companion(out), out))
    checked: list[Path | None] = []
    seen: list[tuple[Path, Path, tuple[int, int] | None]] = []
    for out, owner in entries:
        if out is None:
            checked.append(None)
            continue
        path = _check_one(out, owner, ins, seen)
        seen.append((path, resolved(path, "output path"), file_id(path)))
        if owner is None:
            checked.append(path)
    return checked

def _resolved_or_none(p) -> Path | None:
    try:
        return Path(p).resolve()
    except (RuntimeError, OSError, ValueError):
        return None

def _check_one(out, owner, ins, seen) -> Path:
    label = f"output path {out}" if owner is None else f"{out} (the external data of output {owner})"
    path = output_file(out)
    target = resolved(path, "output path")
    parent = target.parent
    size, most = len(os.fsencode(target.name)), _name_max(parent if parent.is_dir() else Path("/"))
    if size > most and owner is None:  # OUT.data is written for big models only; too long, it fails unpublished
        raise OutputError(f"{label}: file name too long ({size} bytes, at most {most}); choose a shorter name")
    ident = file_id(target)
    for inp, inp_resolved, inp_id in ins:
        if target == inp_resolved or (ident is not None and ident == inp_id):
            raise OutputError(f"{label} is the input {inp}; choose another output (inputs are never modified)")
    for other, other_resolved, other_id in seen:
        if target == other_resolved or (ident is not None and ident == other_id):
            raise OutputError(f"two outputs are the same file {path}; give each its own name")
    st = _stat(target)
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, pipe or socket)"
        raise OutputError(f"{label} is {kind}; give a regular file name")
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist; create it or choose another output")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder {parent} is not writable; choose another output")
    return path

def check_output_path(path: str | Path, *inputs, model: bool = False) -> Path:
    """One output against its inputs (see :func:`check_outputs`); ``model``: it writes ``OUT.data`` too."""
    return check_outputs([path], inputs, models=[path] if model else ())[0]

# -- the one mapping of an OSError that reached the top level ----------------------------------
def classify_os_error(e: OSError, roles) -> MstError | None:
    """The error of its class for an OSError no reader or writer mapped on the way.

    ``roles`` lists ``(path, error class, what)`` for each path the command was given (the
    model as ModelError, ``--data`` as DataError, an output as OutputError, ...). The file the
    error names decides: the role whose path it is (or lies inside: an image of a data folder,
    the temporary file beside an output); a write-only errno (disk full, file too large,
    read-only file system) is an output's; anything else is None (the caller says so in one line).
    """
    names = [n for n in (e.filename, getattr(e, "filename2", None)) if n is not None]
    text = e.strerror or str(e)
    for name in names:
        name = os.fsdecode(name) if isinstance(name, bytes) else str(name)
        role = _role_of(name, roles)
        if role is not None:
            path, error, what = role
            if error is OutputError:
                return as_output_error(e, Path(path))
            if e.errno == errno.ENOENT:
                return error(f"{what} {name} does not exist")
            return error(f"{what} {name} cannot be read ({text})")
    if e.errno in WRITE_ERRNOS:
        where = f" {os.fsdecode(names[0]) if isinstance(names[0], bytes) else names[0]}" if names else ""
        return OutputError(f"cannot write{where}: {text}")
    return None

def _role_of(name: str, roles):
    absname = os.path.abspath(name)
    inside = None
    for path, error, what in roles:
        if path is None:
            continue
        p = os.path.abspath(os.fspath(path))
        if absname == p:
            return path, error, what
        if error is OutputError:
            parent = os.path.dirname(p)
            base = os.path.basename(absname)
            if os.path.dirname(absname) == parent and (base.startswith(_TMP_PREFIX) or base.startswith(
                    f".{os.path.basename(p)}")) or absname.startswith(os.path.join(parent, _TMP_PREFIX)):
                inside = inside or (path, error, what)
        elif absname.startswith(p.rstrip(os.sep) + os.sep):
            inside = inside or (path, error, what)
    return inside


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255

def _map_os_error(e: OSError, path: Path) -> OutputError | None:
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return OutputError(f"disk full while writing {path}; free space and run again")
    if e.errno == errno.EFBIG:
        return OutputError(f"cannot write {path}: file too large for the file-size limit (ulimit -f) or the "
                           "file system; raise the limit or write elsewhere")
    if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return OutputError(f"cannot write {path}: {e.strerror}")
    return None

def as_output_error(e: OSError, path: Path) -> OutputError:
    """Any failed write of ``path`` as one OutputError line."""
    return _map_os_error(e, path) or OutputError(f"cannot write {path}: {e.strerror or e}")
