"""Unit tests of ``core.guards``: what a path argument may be, when two paths are one file, which
inputs are refused before they are opened, which outputs are refused before any work, and the
mapping of an OSError to the one-line error of its class."""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from mstransform.core import guards
from mstransform.core.errors import DataError, ModelError, OutputError, StatsError, UsageError


class _FsPath:
    """An ``os.PathLike`` that is neither str nor Path."""

    def __init__(self, text):
        self.text = text

    def __fspath__(self):
        return self.text


# -- path_arg ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value,expected", [("a/b.onnx", Path("a/b.onnx")), (b"a/b.onnx", Path("a/b.onnx")),
                                            (Path("x.npz"), Path("x.npz")), (_FsPath("y.npz"), Path("y.npz"))],
                         ids=["str", "bytes", "Path", "PathLike"])
def test_path_arg_accepts_every_spelling_of_a_path(value, expected):
    got = guards.path_arg(value, "model")
    assert isinstance(got, Path) and got == expected


@pytest.mark.parametrize("value,words", [(3, "not int"), (["a"], "not list"), (None, "not NoneType"),
                                         ("a\0b", "not a valid file name"), ("", "not a valid file name"),
                                         (_FsPath(3), "is not a file path")],
                         ids=["int", "list", "None", "NUL", "empty", "bad-fspath"])
def test_path_arg_refuses_non_paths_naming_the_parameter(value, words):
    with pytest.raises(UsageError) as info:
        guards.path_arg(value, "stats")
    assert info.value.param == "stats" and words in str(info.value)
    assert str(info.value).startswith("stats ") and "\n" not in str(info.value)


def test_path_arg_optional_and_error_class():
    assert guards.path_arg(None, "output", optional=True) is None
    with pytest.raises(DataError) as info:
        guards.path_arg(1.5, "data", DataError)
    assert type(info.value) is DataError and info.value.param == "data" and "not float" in str(info.value)


# -- same_file / file_id -----------------------------------------------------------------------
def test_same_file_through_links_and_not_for_different_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x")
    b.write_bytes(b"x")  # same content, another file
    os.link(a, tmp_path / "hard")
    (tmp_path / "soft").symlink_to(a)
    st = os.stat(a)
    assert guards.file_id(a) == (st.st_dev, st.st_ino)
    assert guards.file_id(tmp_path / "hard") == guards.file_id(a) == guards.file_id(tmp_path / "soft")
    assert guards.file_id(tmp_path / "missing") is None
    assert guards.same_file(a, tmp_path / "hard") and guards.same_file(a, tmp_path / "soft")
    assert guards.same_file(a, tmp_path / "sub" / ".." / "a")  # by resolved path, even with no file
    assert not guards.same_file(a, b)
    assert not guards.same_file(tmp_path / "missing1", tmp_path / "missing2")


# -- check_readable ----------------------------------------------------------------------------
def test_check_readable_regular_file_missing_and_folder(tmp_path):
    f = tmp_path / "stats.npz"
    f.write_bytes(b"PK")
    assert guards.check_readable(str(f), StatsError, "stats file") == f
    with pytest.raises(StatsError, match=r"^stats file .*nope\.npz does not exist$"):
        guards.check_readable(tmp_path / "nope.npz", StatsError, "stats file")
    assert guards.check_readable(tmp_path / "nope.npz", StatsError, "stats file", missing_ok=True) == \
        tmp_path / "nope.npz"
    with pytest.raises(DataError, match="is a folder, not a file"):
        guards.check_readable(tmp_path, DataError, "data")
    assert guards.check_readable(tmp_path, DataError, "data", folder=True) == tmp_path


def test_check_readable_refuses_fifo_and_device_without_opening(tmp_path):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)  # opening it for reading would block: the test would hang
    with pytest.raises(ModelError) as info:
        guards.check_readable(fifo, ModelError, "model file")
    assert type(info.value) is ModelError and "is a FIFO (named pipe), not a regular file" in str(info.value)
    assert str(fifo) in str(info.value)
    with pytest.raises(DataError, match="is a character device, not a regular file or folder"):
        guards.check_readable("/dev/zero", DataError, "data", folder=True)


def test_special_kind_from_mode():
    assert guards.special_kind(stat.S_IFREG | 0o644) is None
    assert guards.special_kind(stat.S_IFDIR | 0o755) is None
    assert guards.special_kind(stat.S_IFIFO) == "a FIFO (named pipe)"
    assert guards.special_kind(stat.S_IFBLK) == "a block device"
    assert guards.special_kind(stat.S_IFSOCK) == "a socket"


# -- check_outputs / check_output_path -----------------------------------------------------------
def test_output_equal_to_an_input_is_refused_also_through_links(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    os.link(model, tmp_path / "hard.onnx")
    (tmp_path / "soft.onnx").symlink_to(model)
    for out in (model, tmp_path / "hard.onnx", tmp_path / "soft.onnx", tmp_path / "." / "model.onnx"):
        with pytest.raises(OutputError, match=r"is the input .*model\.onnx; choose another output"):
            guards.check_output_path(out, model)
    assert model.read_bytes() == b"onnx"
    assert guards.check_output_path(tmp_path / "out.onnx", model) == tmp_path / "out.onnx"


def test_two_outputs_the_same_file_refused_and_absent_outputs_kept(tmp_path):
    a = tmp_path / "o.npz"
    with pytest.raises(OutputError, match="two outputs are the same file"):
        guards.check_outputs([a, tmp_path / "x" / ".." / "o.npz"], [])
    got = guards.check_outputs([None, a, str(tmp_path / "r.json")], [None])
    assert got == [None, a, tmp_path / "r.json"]


def test_model_output_companion_counts_against_inputs_and_outputs(tmp_path):
    data = tmp_path / "m.onnx.data"
    data.write_bytes(b"weights")  # an input model's external data
    out = tmp_path / "m.onnx"
    assert guards.check_output_path(out, data) == out  # not a model output: its .data is not written
    with pytest.raises(OutputError, match=r"m\.onnx\.data \(the external data of output .*m\.onnx\) is the input"):
        guards.check_output_path(out, data, model=True)
    with pytest.raises(OutputError, match="two outputs are the same file"):
        guards.check_outputs([out, data], [], models=[out])  # the model's .data is also the second output


def test_output_that_names_a_folder_or_a_device_or_a_missing_folder(tmp_path):
    with pytest.raises(OutputError, match="names a folder"):
        guards.check_output_path(str(tmp_path) + os.sep)
    with pytest.raises(OutputError, match="is a folder; give a regular file name"):
        guards.check_output_path(tmp_path)
    with pytest.raises(OutputError, match="not a regular file"):
        guards.check_output_path("/dev/null")
    with pytest.raises(OutputError, match="output folder .*missing does not exist"):
        guards.check_output_path(tmp_path / "missing" / "o.onnx")
    with pytest.raises(OutputError, match=r"file name too long \(300 bytes"):
        guards.check_output_path(tmp_path / ("n" * 300))


# -- classify_os_error / as_output_error -------------------------------------------------------
@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "disk full while writing"),
                                        (errno.EACCES, "cannot write"),
                                        (errno.ENAMETOOLONG, "cannot write")],
                         ids=["ENOSPC", "EACCES", "ENAMETOOLONG"])
def test_as_output_error_is_one_line_naming_the_path(tmp_path, code, words):
    path = tmp_path / "out.onnx"
    err = guards.as_output_error(OSError(code, os.strerror(code), str(path)), path)
    text = str(err)
    assert type(err) is OutputError and err.exit_code == 6
    assert text.startswith(words) and str(path) in text and "\n" not in text
    if code != errno.ENOSPC:
        assert text.endswith(os.strerror(code))


def test_classify_os_error_by_the_file_it_names(tmp_path):
    out, data = tmp_path / "o.onnx", tmp_path / "imgs"
    roles = [(data, DataError, "data"), (out, OutputError, "output"), (None, StatsError, "stats")]
    full = guards.classify_os_error(OSError(errno.ENOSPC, "No space left on device", str(out)), roles)
    assert type(full) is OutputError and str(full) == f"disk full while writing {out}; free space and run again"
    tmp = guards.classify_os_error(OSError(errno.EACCES, "Permission denied", str(tmp_path / ".mstransform-o.x")),
                                   roles)  # the temporary file beside the output is the output's
    assert type(tmp) is OutputError and str(tmp) == f"cannot write {out}: Permission denied"
    inside = guards.classify_os_error(OSError(errno.ENOENT, "No such file", str(data / "cat" / "1.png")), roles)
    assert type(inside) is DataError and str(inside) == f"data {data / 'cat' / '1.png'} does not exist"
    long = guards.classify_os_error(OSError(errno.ENAMETOOLONG, "File name too long", str(out)), roles)
    assert type(long) is OutputError and str(long) == f"cannot write {out}: File name too long"
    elsewhere = guards.classify_os_error(OSError(errno.ENOSPC, "No space left on device", "/elsewhere"), roles)
    assert type(elsewhere) is OutputError and str(elsewhere) == "cannot write /elsewhere: No space left on device"
    assert guards.classify_os_error(OSError(errno.EACCES, "Permission denied", "/elsewhere"), roles) is None
