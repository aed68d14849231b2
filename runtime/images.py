"""Folders of images as model input: listing with class labels, and decoding one image.

Images are read with Pillow: converted to the model's channel count (L or RGB; 16-bit grayscale kept
at 16 bits) and resized (bilinear) to its height and width, or ``size``. A decompression bomb is
refused. For a float input the pixels come out in [0, 1] by their own bit depth (1/255 or 1/65535),
or raw where the user gives a scale; for an integer input, as the integers they are.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from mstransform.core.errors import DataError
from mstransform.runtime.inputs import InputSpec

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def read_image(path: Path, spec: InputSpec, size: tuple[int, int] | None = None, *, raw: bool = False) -> np.ndarray:
    """One image as (C, H, W) for input ``spec``: float in [0, 1] by its own bit depth (``raw``: unscaled
    floats, for a user's scale), its raw integers for an integer input."""
    from PIL import Image, UnidentifiedImageError

    c, size = _target(spec, size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                deep = im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I") and c == 1
                im = im.convert("I" if deep else "L" if c == 1 else "RGB")  # convert("L") would clip 16 bits to 8
                if size is not None and im.size != tuple(size):
                    im = im.resize(tuple(size), Image.BILINEAR)
                arr = (np.clip(np.asarray(im, dtype=np.int64), 0, 65535).astype(np.uint16) if deep
                       else np.asarray(im, dtype=np.uint8))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"image {path} is too large to decode safely ({str(e).split('.')[0]})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if not spec.is_float:
        return arr
    if raw:
        return arr.astype(np.float32)
    return arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)


def _target(spec: InputSpec, size: tuple[int, int] | None) -> tuple[int, tuple[int, int] | None]:
    """The channel count and (W, H) images are converted to for input ``spec``."""
    shape = spec.shape or (None, 3, None, None)
    if len(shape) != 4:
        raise DataError(f"image folders need a model with one (N,C,H,W) input; {spec.name!r} has rank {len(shape)}")
    c = shape[1] or 3
    return c, size or ((shape[3], shape[2]) if shape[2] and shape[3] else None)


def conversion_note(root: Path, first: Path, spec: InputSpec, size: tuple[int, int] | None = None) -> list[str]:
    """One ``note:`` line where the images (judged by the first, read from its header only) are converted
    to another channel count or resized to fit input ``spec``; none where they already fit."""
    from PIL import Image

    c, size = _target(spec, size)
    try:
        with Image.open(first) as im:
            mode, have = im.mode, im.size
    except Exception:  # an unreadable image is reported, in one line, where it is decoded
        return []
    try:
        channels = Image.getmodebands(mode)
    except (KeyError, ValueError):
        channels = 1  # the 16-bit grayscale modes
    done = []
    if channels != c:
        done.append(f"converted from {mode} ({channels} channel(s)) to {'L' if c == 1 else 'RGB'} ({c} channel(s))")
    if size is not None and tuple(have) != tuple(size):
        done.append(f"resized (bilinear) from {have[0]}x{have[1]} to {size[0]}x{size[1]} (WxH)")
    if not done:
        return []
    return [f"note: images of {root} are {' and '.join(done)} to fit input {spec.name!r} {spec.describe_shape()} "
            f"(first image {first.name}; --size sets the size)"]


def list_images(root: Path) -> tuple[list[tuple[Path, int | None]], list[str]]:
    """The images under ``root``, sorted, and notes. Where every image sits in a sub-folder, each
    sub-folder of ``root`` is a class (sorted names, empty ones included, so labels keep their
    meaning when a class has no images here); images directly in ``root`` make an unlabelled set."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise DataError(f"folder {root} holds no images ({', '.join(sorted(IMAGE_EXTS))})")
    if any(p.parent == root for p in files):
        return [(p, None) for p in files], []
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    index = {d.name: i for i, d in enumerate(classes)}
    labelled = [(p, index[p.relative_to(root).parts[0]]) for p in files]
    counts = np.bincount([lab for _, lab in labelled], minlength=len(classes))
    empty = [classes[i].name for i in np.flatnonzero(counts == 0)]
    notes = [f"note: class folder(s) {', '.join(map(repr, empty[:5]))}{' ...' if len(empty) > 5 else ''} of {root} "
             f"hold no images; labels still follow all {len(classes)} sorted class folders"] if empty else []
    return labelled, notes
