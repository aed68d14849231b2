"""Unit tests of ``runtime.images``: an image decoded for an input matches the pixels it was written
from (channels converted, resized, scaled by its bit depth), folders are listed with labels in sorted
class-folder order, and a conversion is announced in one note."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mstransform.core.errors import DataError
from mstransform.runtime.images import conversion_note, list_images, read_image
from mstransform.runtime.inputs import InputSpec

needs_pil = pytest.mark.skipif(importlib.util.find_spec("PIL") is None,
                               reason="Pillow is not installed: images are decoded with Pillow")


def _spec(c=3, h=None, w=None, dtype=np.float32, name="input"):
    return InputSpec(name, np.dtype(dtype), (None, c, h, w))


def _write(path: Path, pixels: np.ndarray, **kw) -> Path:
    from PIL import Image

    Image.fromarray(pixels).save(path, **kw)
    return path


def _rgb(h=5, w=7, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@needs_pil
def test_png_rgb_reads_as_chw_floats_of_its_pixels(tmp_path):
    pixels = _rgb()
    path = _write(tmp_path / "a.png", pixels)
    got = read_image(path, _spec(3, 5, 7))
    assert got.dtype == np.float32 and got.shape == (3, 5, 7)
    np.testing.assert_array_equal(got, pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255))
    raw = read_image(path, _spec(3, 5, 7), raw=True)
    np.testing.assert_array_equal(raw, pixels.transpose(2, 0, 1).astype(np.float32))
    ints = read_image(path, _spec(3, 5, 7, dtype=np.uint8))
    assert ints.dtype == np.uint8
    np.testing.assert_array_equal(ints, pixels.transpose(2, 0, 1))


@needs_pil
def test_rgb_to_grayscale_and_grayscale_to_rgb(tmp_path):
    pixels = _rgb()
    gray = read_image(_write(tmp_path / "c.png", pixels), _spec(1, 5, 7, dtype=np.uint8))
    assert gray.shape == (1, 5, 7) and gray.dtype == np.uint8
    # ITU-R 601-2 luma, as Pillow documents for convert("L"): L = R*299/1000 + G*587/1000 + B*114/1000
    luma = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(gray[0].astype(np.float64) - luma).max() <= 1.0
    plain = np.arange(35, dtype=np.uint8).reshape(5, 7) * 7
    rgb = read_image(_write(tmp_path / "g.png", plain), _spec(3, 5, 7, dtype=np.uint8))
    assert rgb.shape == (3, 5, 7)
    for channel in rgb:
        np.testing.assert_array_equal(channel, plain)


@needs_pil
def test_sixteen_bit_grayscale_keeps_its_depth(tmp_path):
    pixels = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000 + 7).astype(np.uint16)
    path = _write(tmp_path / "deep.png", pixels)
    got = read_image(path, _spec(1, 3, 4))
    assert got.dtype == np.float32 and got.shape == (1, 3, 4)
    np.testing.assert_allclose(got[0], pixels / 65535.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(read_image(path, _spec(1, 3, 4, dtype=np.uint16))[0], pixels)


@needs_pil
def test_resized_to_the_input_or_to_size_width_first(tmp_path):
    colour = np.array([200, 40, 90], np.uint8)
    path = _write(tmp_path / "flat.png", np.broadcast_to(colour, (8, 12, 3)).copy())
    got = read_image(path, _spec(3, 4, 6, dtype=np.uint8))  # H=4, W=6
    assert got.shape == (3, 4, 6)
    np.testing.assert_array_equal(got, np.broadcast_to(colour[:, None, None], (3, 4, 6)))  # a flat image stays flat
    assert read_image(path, _spec(3, 4, 6), size=(3, 2)).shape == (3, 2, 3)  # size is (W, H), and wins
    assert read_image(path, _spec(3)).shape == (3, 8, 12)  # dynamic H, W: the image's own size


@needs_pil
def test_jpeg_reads_close_to_its_pixels(tmp_path):
    y, x = np.mgrid[0:16, 0:24]
    pixels = np.stack([x * 10, y * 15, np.full_like(x, 128)], axis=-1).astype(np.uint8)  # smooth ramps
    got = read_image(_write(tmp_path / "a.jpg", pixels, quality=95), _spec(3, 16, 24))
    assert got.shape == (3, 16, 24)
    want = pixels.transpose(2, 0, 1) / 255.0
    assert np.abs(got - want).mean() < 3 / 255 and np.abs(got - want).max() < 24 / 255


@needs_pil
def test_unreadable_image_and_wrong_rank_are_data_errors(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"^cannot read image .*bad\.png: ") as info:
        read_image(bad, _spec(3, 4, 4))
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match=r"need a model with one \(N,C,H,W\) input; 'tokens' has rank 2"):
        read_image(bad, InputSpec("tokens", np.dtype(np.int64), (None, 16)))


def test_list_images_labels_follow_sorted_class_folders(tmp_path):
    for rel in ("b_dog/1.png", "b_dog/0.JPG", "a_cat/2.jpeg", "a_cat/sub/3.bmp", "a_cat/readme.txt",
                "b_dog/x.npy"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")  # listing reads names only
    (tmp_path / "c_empty").mkdir()
    (tmp_path / "a_cat" / "folder.png").mkdir()  # a folder named like an image is not one
    files, notes = list_images(tmp_path)
    assert [(p.relative_to(tmp_path).as_posix(), label) for p, label in files] == [
        ("a_cat/2.jpeg", 0), ("a_cat/sub/3.bmp", 0), ("b_dog/0.JPG", 1), ("b_dog/1.png", 1)]
    assert notes == [f"note: class folder(s) 'c_empty' of {tmp_path} hold no images; labels still follow all 3 "
                     "sorted class folders"]


def test_list_images_flat_folder_is_unlabelled_and_empty_folder_refused(tmp_path):
    (tmp_path / "cls").mkdir()
    for rel in ("b.png", "a.webp", "cls/c.gif"):
        (tmp_path / rel).write_bytes(b"")
    files, notes = list_images(tmp_path)
    assert [(p.relative_to(tmp_path).as_posix(), label) for p, label in files] == [
        ("a.webp", None), ("b.png", None), ("cls/c.gif", None)]
    assert notes == []
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "labels.csv").write_text("x")
    listed = r"\(\.bmp, \.gif, \.jpeg, \.jpg, \.png, \.webp\)"
    with pytest.raises(DataError, match=rf"^folder .*empty holds no images {listed}$"):
        list_images(empty)


@needs_pil
def test_conversion_note_names_the_mismatch(tmp_path):
    first = _write(tmp_path / "first.png", _rgb(6, 8))  # 8x6 (WxH), RGB
    spec = InputSpec("x", np.dtype(np.float32), (None, 1, 4, 4), (None, None, None, None))
    assert conversion_note(tmp_path, first, spec) == [
        f"note: images of {tmp_path} are converted from RGB (3 channel(s)) to L (1 channel(s)) and resized "
        f"(bilinear) from 8x6 to 4x4 (WxH) to fit input 'x' [?,1,4,4] (first image first.png; --size sets the size)"]
    assert conversion_note(tmp_path, first, _spec(3, 6, 8)) == []  # it already fits
    assert conversion_note(tmp_path, first, _spec(3)) == []  # dynamic H, W: no resize
    only_size = conversion_note(tmp_path, first, _spec(3), size=(8, 8))
    assert len(only_size) == 1 and "are resized (bilinear) from 8x6 to 8x8 (WxH)" in only_size[0]
    assert "converted" not in only_size[0]
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"junk")
    assert conversion_note(tmp_path, junk, spec) == []  # reported where it is decoded
