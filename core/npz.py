"""Safe ``.npz`` reading shared by stats and data files: never unpickles, one clear error.

Each member's array header is read and checked against the member's real size before any
array is loaded, so a header announcing an absurd shape is refused instead of allocating.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from mstransform.core.guards import check_readable


def _header_fits(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    """Why a member's header does not fit its size (None when it fits)."""
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            return f"member {info.filename!r} has .npy format version {version}"
        shape, _, dtype = reader(f, max_header_size=1 << 16)
        if dtype.hasobject:
            return None  # refused below as pickled data, with its own message
        header = f.tell()
    count = 1
    for d in shape:
        count *= int(d)
    announced = count * dtype.itemsize
    if announced > info.file_size - header:
        return f"member {info.filename!r} announces {announced} bytes of data but holds {info.file_size - header}"
    return None


def read_npz(path: Path, error: type[Exception], what: str) -> dict[str, np.ndarray]:
    """All arrays of ``path``; ``error(message)`` on anything unreadable, pickled, oversized or missing."""
    path = check_readable(path, error, what)  # missing, a folder, a FIFO or device, unreadable: one line
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                raise error(f"{what} {path} is not a readable .npz file (no zip header)")
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.flag_bits & 0x1:
                    raise error(f"{what} {path} is corrupt: member {info.filename!r} is encrypted")
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise error(f"{what} {path} is corrupt: member {info.filename!r} uses zip compression method "
                                f"{info.compress_type}; numpy writes stored or deflated members only")
                why = _header_fits(z, info)
                if why:
                    raise error(f"{what} {path} is corrupt: {why}")
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise error(f"{what} {path} holds object arrays; pickled data is refused") from None
        raise error(f"{what} {path} is not a readable .npz file ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError, MemoryError, KeyError, NotImplementedError, RuntimeError) as e:
        raise error(f"cannot read {what} {path}: {type(e).__name__}: {e}") from None
