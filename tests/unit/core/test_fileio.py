"""Unit tests of ``core.fileio``: an output is written whole or not at all, under a temporary name of
its own that never outlives the call, with the mode ``open()`` would give it."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from mstransform.core import fileio
from mstransform.core.errors import OutputError


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_output_replaces_with_the_new_bytes(tmp_path):
    target = tmp_path / "stats.npz"
    target.write_bytes(b"old")
    old_inode = os.stat(target).st_ino
    with fileio.atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target and tmp.name.startswith(".mstransform-stats.npz.")
        tmp.write_bytes(b"new bytes")
        assert target.read_bytes() == b"old"  # nothing is visible before the block ends
    assert target.read_bytes() == b"new bytes"
    assert os.stat(target).st_ino != old_inode  # renamed into place, not rewritten in place
    assert _listing(tmp_path) == ["stats.npz"]


def test_atomic_output_keeps_the_old_file_when_the_body_raises(tmp_path):
    target = tmp_path / "report.json"
    target.write_bytes(b"old")
    with pytest.raises(ZeroDivisionError):
        with fileio.atomic_output(target) as tmp:
            tmp.write_bytes(b"half a fi")
            1 / 0
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["report.json"]
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C too
        with fileio.atomic_output(tmp_path / "new.json") as tmp:
            tmp.write_bytes(b"x")
            raise KeyboardInterrupt
    assert _listing(tmp_path) == ["report.json"]


def test_atomic_output_maps_a_failed_write_and_refuses_a_device(tmp_path):
    target = tmp_path / "o.npz"
    with pytest.raises(OutputError, match=r"^disk full while writing .*o\.npz; free space and run again$"):
        with fileio.atomic_output(target) as tmp:
            raise OSError(28, os.strerror(28), str(tmp))  # ENOSPC on the temporary file
    assert _listing(tmp_path) == []
    with pytest.raises(OutputError, match="not a regular file; refusing to replace it"):
        with fileio.atomic_output("/dev/null"):
            pytest.fail("the body must not run")  # pragma: no cover
    with pytest.raises(OutputError, match=r"^cannot write .*missing.*o\.npz: No such file or directory$"):
        with fileio.atomic_output(tmp_path / "missing" / "o.npz"):
            pytest.fail("the body must not run")  # pragma: no cover


def test_output_mode_and_written_files_respect_the_umask(tmp_path, umask_027):
    assert fileio.output_mode() == 0o640
    with fileio.atomic_output(tmp_path / "a.bin") as tmp:
        assert stat.S_IMODE(os.stat(tmp).st_mode) == 0o600  # private while it is written
        tmp.write_bytes(b"a")
    assert stat.S_IMODE(os.stat(tmp_path / "a.bin").st_mode) == 0o640
    os.umask(0o002)
    assert fileio.output_mode() == 0o664
    fileio.write_json(tmp_path / "b.json", {"k": 1})
    assert stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode) == 0o664


def test_write_json_reads_back_with_json(tmp_path):
    doc = {"alpha": 0.25, "sites": ["relu_1", "gelu"], "nested": {"n": 3, "none": None}, "path": tmp_path}
    out = fileio.write_json(str(tmp_path / "r.json"), doc)
    assert out == tmp_path / "r.json"
    text = out.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert json.loads(text) == {**doc, "path": str(tmp_path)}  # what json cannot hold is written as str
    with pytest.raises(ValueError):  # NaN is not JSON: nothing written, the old file stays
        fileio.write_json(out, {"x": float("nan")})
    assert json.loads(out.read_text())["alpha"] == 0.25
    assert _listing(tmp_path) == ["r.json"]


def test_publishing_renames_the_file_and_its_companion(tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"old model")
    with fileio.publishing(out) as pub:
        assert pub.path.name == "model.onnx" and pub.path.parent != tmp_path
        assert pub.path.parent.parent == tmp_path and pub.path.parent.name.startswith(".mstransform-")
        pub.path.write_bytes(b"new model")
        (pub.path.parent / "model.onnx.data").write_bytes(b"weights")
        assert out.read_bytes() == b"old model"
    assert out.read_bytes() == b"new model" and (tmp_path / "model.onnx.data").read_bytes() == b"weights"
    assert _listing(tmp_path) == ["model.onnx", "model.onnx.data"]  # the private folder is gone
    assert [p for p, _ in pub.published] == [tmp_path / "model.onnx.data", out]  # companion first
    assert [ident for _, ident in pub.published] == [fileio.file_id(p) for p, _ in pub.published]


def test_publishing_failure_leaves_the_old_files_and_retract_removes_only_ours(tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="verification failed"):
        with fileio.publishing(out) as pub:
            pub.path.write_bytes(b"new")
            (pub.path.parent / "model.onnx.data").write_bytes(b"w")
            raise RuntimeError("verification failed")
    assert out.read_bytes() == b"old" and _listing(tmp_path) == ["model.onnx"]
    with fileio.publishing(out) as pub:
        pub.path.write_bytes(b"mine")
    other = tmp_path / "other.bin"
    other.write_bytes(b"theirs")
    os.replace(other, out)  # someone else's file now sits at the output
    pub.retract()
    assert out.read_bytes() == b"theirs" and pub.published == []
    with fileio.publishing(out) as pub:
        pub.path.write_bytes(b"mine again")
    pub.retract()
    assert not out.exists()


def test_publishing_without_companion_and_into_a_folder_name(tmp_path):
    out = tmp_path / "stats.npz"
    with fileio.publishing(out, companions=()) as pub:
        pub.path.write_bytes(b"s")
        (pub.path.parent / "stats.npz.data").write_bytes(b"ignored")
    assert _listing(tmp_path) == ["stats.npz"] and out.read_bytes() == b"s"
    with pytest.raises(OutputError, match="names a folder"):
        with fileio.publishing(tmp_path / "sub" / ".."):
            pytest.fail("the body must not run")  # pragma: no cover


@pytest.mark.parametrize("suffix", ["/", "/.", "/.."])
def test_a_name_that_can_only_be_a_folder_is_refused_before_pathlib_drops_its_separator(tmp_path, suffix):
    """``Path("newdir/")`` is ``newdir``: the check reads the name as given, so nothing named ``newdir`` appears."""
    target = str(tmp_path / "newdir") + suffix
    for write in (fileio.publishing, fileio.atomic_output):
        with pytest.raises(OutputError, match="names a folder"):
            with write(target):
                pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []
