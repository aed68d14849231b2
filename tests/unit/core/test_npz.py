"""Unit tests of ``core.npz.read_npz``: arrays come back as numpy wrote them; anything pickled,
truncated, not a zip or announcing more data than it holds is refused, in one line of the caller's
error class, before any array is loaded (and never by unpickling)."""
from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest

from mstransform.core.errors import DataError, StatsError
from mstransform.core.npz import read_npz


class _Sentinel:
    """Unpickling it creates the folder ``marker``: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text and text
    return text


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["stored", "deflated"])
def test_arrays_read_back_as_numpy_wrote_them(tmp_path, save):
    rng = np.random.default_rng(0)
    arrays = {"mean": rng.standard_normal((3, 4)).astype(np.float32), "count": np.arange(7, dtype=np.int64),
              "mask": np.array([True, False]), "half": np.ones((2, 0, 5), np.float16),
              "scalar": np.array(2.5), "fortran": np.asfortranarray(rng.standard_normal((4, 3)))}
    save(tmp_path / "s.npz", **arrays)
    got = read_npz(tmp_path / "s.npz", StatsError, "stats file")
    assert sorted(got) == sorted(arrays)
    for name, want in arrays.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        np.testing.assert_array_equal(got[name], want)


def test_pickled_object_array_refused_without_running_code(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.npz"
    np.savez(path, ok=np.zeros(2), evil=np.array([_Sentinel(marker)], dtype=object))
    with pytest.raises(DataError) as info:
        read_npz(path, DataError, "data file")
    assert type(info.value) is DataError
    assert _one_line(info.value) == f"data file {path} holds object arrays; pickled data is refused"
    assert not marker.exists()


def test_truncated_zip_refused(tmp_path):
    path = tmp_path / "cut.npz"
    np.savez(path, a=np.arange(1000, dtype=np.float64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # still starts like a zip, has no central directory
    with pytest.raises(StatsError) as info:
        read_npz(path, StatsError, "stats file")
    text = _one_line(info.value)
    assert text.startswith(f"cannot read stats file {path}: BadZipFile: ")


def test_non_zip_file_refused(tmp_path):
    path = tmp_path / "plain.npz"
    np.save(tmp_path / "plain.npy", np.zeros(3))  # a .npy, not an .npz
    os.replace(tmp_path / "plain.npy", path)
    with pytest.raises(StatsError) as info:
        read_npz(path, StatsError, "stats file")
    assert _one_line(info.value) == f"stats file {path} is not a readable .npz file (no zip header)"
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(StatsError, match="no zip header"):
        read_npz(empty, StatsError, "stats file")


def test_member_announcing_an_enormous_shape_refused_before_loading(tmp_path):
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    header = len(member.getvalue())
    member.write(np.zeros(4).tobytes())  # 32 bytes where 8 TB are announced
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", member.getvalue())
    with pytest.raises(DataError) as info:
        read_npz(path, DataError, "data file")
    assert _one_line(info.value) == (f"data file {path} is corrupt: member 'x.npy' announces "
                                     f"{8 * 10**12} bytes of data but holds {32}")
    assert header == 128  # the member's own size minus its header is what was compared


def test_member_of_an_unknown_compression_or_npy_version_refused(tmp_path):
    path = tmp_path / "bz.npz"
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as z:
        z.writestr("a.npy", buf.getvalue())
    with pytest.raises(StatsError, match=r"is corrupt: member 'a\.npy' uses zip compression method 12"):
        read_npz(path, StatsError, "stats file")
    bad = buf.getvalue()
    bad = bad[:6] + b"\x09\x00" + bad[8:]  # .npy format version 9.0
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.npy", bad)
    with pytest.raises(StatsError) as info:
        read_npz(path, StatsError, "stats file")
    assert _one_line(info.value) == f"stats file {path} is corrupt: member 'a.npy' has .npy format version (9, 0)"


def test_missing_file_and_folder_refused_in_the_given_class(tmp_path):
    with pytest.raises(DataError) as info:
        read_npz(tmp_path / "none.npz", DataError, "data file")
    assert _one_line(info.value) == f"data file {tmp_path / 'none.npz'} does not exist"
    with pytest.raises(StatsError, match="is a folder, not a file"):
        read_npz(tmp_path, StatsError, "stats file")
