"""Safe ``.npz`` reading shared by stats and data files: never unpickles, one clear error."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np


def read_npz(path: Path, error: type[Exception], what: str) -> dict[str, np.ndarray]:
    """All arrays of ``path``; ``error(message)`` on anything unreadable, pickled or missing."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise error(f"{what} {path} is not a readable .npz file (no zip header)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise error(f"{what} {path} holds object arrays; pickled data is refused") from None
        raise error(f"{what} {path} is not a readable .npz file ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise error(f"cannot read {what} {path}: {e}") from None
