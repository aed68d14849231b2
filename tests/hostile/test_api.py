"""Hostile calls of the Python API: the API's contract is the command line's. Every public function of
``mstransform`` and ``mstransform.passes``, fed a wrong type, a wrong value or an output that is one of
its inputs, raises one of the project's error classes (``core/errors.py``) with a one-line message,
writes nothing and leaves its inputs as they were; what is unambiguous (``bytes`` and ``os.PathLike``
paths, an ``NpzFile`` or a mapping of arrays as stats, the command line's ``NAME=AXIS`` spelling of a
batch axis) is accepted. Also here: the external data of an input model as an output, and the package
namespace."""
from __future__ import annotations

import inspect
import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import EXAMPLE
from os_cases import snapshot, stats_bytes, w  # noqa: F401 (w and stats_bytes are fixtures)

import mstransform as mst
import mstransform.passes as passes
from mstransform.core.errors import MstError, OutputError, UsageError


class PathLike:
    """An ``os.PathLike`` that is neither ``str`` nor ``pathlib.Path``."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def __fspath__(self):
        return self.path


def _tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def f(tmp_path_factory):
    """Inputs in ``ins`` (compared byte for byte after every call) and an empty ``out`` folder."""
    import torch

    root = tmp_path_factory.mktemp("hostile-api")
    ins, out = root / "ins", root / "out"
    ins.mkdir()
    out.mkdir()
    shutil.copy(EXAMPLE / "model.onnx", ins / "model.onnx")
    calib = np.load(EXAMPLE / "calib.npz")["input"]
    np.savez(ins / "data.npz", input=calib[:16])
    test = np.load(EXAMPLE / "test.npz")
    np.savez(ins / "labelled.npz", input=test["input"][:8], labels=test["labels"][:8])
    stats = mst.calibrate(ins / "model.onnx", ins / "data.npz", progress=False)
    stats.save(ins / "stats.npz")
    mst.calibrate(ins / "model.onnx", ins / "data.npz", limit=8, progress=False).save(ins / "shard.npz")
    (ins / "cache.bin").write_bytes(b"timing cache")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval()
    example = (torch.randn(2, 1, 8, 8),)
    mst.calibrate(module, example[0], progress=False).save(ins / "torch.stats.npz")
    return SimpleNamespace(ins=ins, out=out, model=ins / "model.onnx", data=ins / "data.npz",
                           labelled=ins / "labelled.npz", stats=ins / "stats.npz", shard=ins / "shard.npz",
                           cache=ins / "cache.bin", module=module, example=example,
                           torch_stats=ins / "torch.stats.npz", loaded=stats)


def _cfg():
    from mstransform.robustness.attacks import AttackConfig

    return AttackConfig(n=4, batch_size=4, apgd_iters=1, pgd_steps=1, square_queries=1,
                        attacks=("apgd-ce", "bpda"))


# A valid call of every public function (the walk changes one argument at a time), as a function of ``f``.
BASE = {
    "calibrate": lambda f: dict(model=f.model, data=f.data, progress=False, limit=8),
    "calibrate_and_harden": lambda f: dict(model=f.model, data=f.data, output=f.out / "h.onnx",
                                           stats_output=f.out / "h.stats.npz", limit=8),
    "compare_accuracy": lambda f: dict(models=[f.model], data=f.labelled),
    "find_sites": lambda f: dict(model=f.model),
    "harden": lambda f: dict(model=f.model, stats=f.stats, output=f.out / "h.onnx"),
    "harden_model": lambda f: dict(model=f.model, stats=f.stats),
    "harden_torch": lambda f: dict(model=f.module, stats=f.torch_stats, example=f.example),
    "package_torch": lambda f: dict(model=f.module, stats=f.torch_stats, example=f.example, output=f.out / "p.pt2"),
    "run": lambda f: dict(model=f.model, data=f.data, limit=8),
    "evaluate": lambda f: dict(models=[f.model], data=f.labelled, cfg=_cfg()),
    "sweep": lambda f: dict(model=f.model, stats=f.stats, data=f.labelled, alphas=[0.1], cfg=_cfg()),
    "merge_stats": lambda f: dict(paths=[f.stats, f.shard], output=f.out / "m.npz"),
    "check_trt": lambda f: dict(model=f.model),
    "build_engine": lambda f: dict(model=f.model, output=f.out / "e.plan", timing_cache=f.cache),
    "default_output": lambda f: dict(model=f.model),
    "bench": lambda f: dict(base=f.model, hardened=f.model, warmup=1, rounds=1, runs=1),
    "site_fractions": lambda f: dict(model=f.model, stats=f.stats, data=f.data, limit=8),
    "load_model": lambda f: dict(model=f.model),
    "load_stats": lambda f: dict(path=f.stats),
    "passes.find_sites": lambda f: dict(model=mst.load_model(f.model)),
    "passes.inserted": lambda f: dict(model=mst.load_model(f.model)),
}

NAN = math.nan
MISSING = "missing.file"  # a name in the inputs folder that does not exist
# A wrong value per parameter name (None: the parameter has no wrong value beyond its type).
WRONG = {
    "model": MISSING, "models": [MISSING], "data": MISSING, "stats": MISSING, "path": MISSING, "paths": [MISSING],
    "probe": MISSING, "output": "folder/", "stats_output": "folder/", "timing_cache": "folder/",
    "alpha": -1.0, "alphas": [NAN], "mode": "nope", "center": "nope", "formulation": "nope", "placement": "nope",
    "precision": "nope", "runtime": "nope", "device": "nope", "version": "0.0", "batch_size": -7, "limit": -7,
    "threads": -7, "workspace_mib": -7, "shard": (3, 2), "batch_axes": {"nope": 0}, "max_clean_drop": NAN,
    "dynamic_batch": (0, -1), "shapes": "nonsense", "example": (), "providers": ["NoSuchExecutionProvider"],
    "preprocess": None, "selection": None, "cfg": None, "log": None, "progress": None, "verify": None,
    "base": MISSING, "hardened": MISSING, "batch_sizes": [0], "warmup": -1, "rounds": -1, "runs": -1, "seed": -1,
    "extent": None, "fp16": None, "bf16": None, "ignore_fingerprint": None, "parts": None, "fresh": None,
}
OUTPUTS = ("output", "stats_output")


def _functions() -> dict:
    out = {n: getattr(mst, n) for n in mst.__all__ if inspect.isfunction(getattr(mst, n))}
    out.update({f"passes.{n}": getattr(passes, n) for n in passes.__all__ if inspect.isfunction(getattr(passes, n))})
    return out


def _path_inputs(kwargs: dict) -> list:
    """The files a base call reads, by the paths it was given."""
    found = []
    for value in kwargs.values():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, Path) and v.is_file():
                found.append(v)
    return found


def _placed(f, wrong):
    """``wrong`` with the missing file placed in the inputs folder, a folder name in the outputs folder."""
    if isinstance(wrong, list):
        return [_placed(f, w) for w in wrong]
    if wrong == MISSING:
        return f.ins / MISSING
    if isinstance(wrong, str) and wrong.endswith("/"):
        return f"{f.out}/{wrong}"
    return wrong


def _cases():
    """(function, parameter, label, value-maker): a wrong type, a wrong value and, for an output, each input."""
    rows = []
    for name, fn in _functions().items():
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            rows.append((name, p.name, "wrong-type", lambda f, kw: object()))
            if p.default is p.empty:
                rows.append((name, p.name, "none-for-required", lambda f, kw: None))
            wrong = WRONG.get(p.name, "?")
            if wrong is not None and p.name not in OUTPUTS:
                rows.append((name, p.name, "wrong-value", lambda f, kw, w=wrong: _placed(f, w)))
            if p.name in OUTPUTS:
                rows.append((name, p.name, "names-a-folder", lambda f, kw: f"{f.out}/"))
                rows.append((name, p.name, "alias-input", "ALIAS"))
    return rows


def test_every_parameter_has_a_wrong_value_and_every_function_a_base_call():
    missing = [(n, p) for n, fn in _functions().items() for p in inspect.signature(fn).parameters
               if p not in WRONG]
    assert missing == [], "add each new parameter to WRONG"
    assert sorted(_functions()) == sorted(BASE), "add each new public function to BASE"


def _one_line_error(call) -> MstError | None:
    try:
        call()
    except MstError as e:
        assert "\n" not in str(e), f"a message of more than one line: {str(e)!r}"
        return e
    return None


@pytest.mark.parametrize("name, param, label, make", [pytest.param(*c, id=f"{c[0]}-{c[1]}-{c[2]}")
                                                      for c in _cases()])
def test_public_api_walk(name, param, label, make, f):
    fn = _functions()[name]
    base = BASE[name](f)
    ins_before = _tree(f.ins)
    targets = [None]
    if make == "ALIAS":
        targets = _path_inputs(base)
        if not targets:
            pytest.skip("no path input to alias")
    try:
        for target in targets:
            kwargs = dict(base)
            kwargs[param] = target if make == "ALIAS" else make(f, kwargs)
            err = _one_line_error(lambda: fn(**kwargs))
            if make == "ALIAS" or label == "names-a-folder":
                assert isinstance(err, OutputError), f"{name}({param}={kwargs[param]!r}) was not refused: {err!r}"
            if err is not None:
                assert _tree(f.out) == {}, f"{name}: left {list(_tree(f.out))} after {err}"
    finally:
        for p in f.out.iterdir():  # a call that succeeded may write: start the next case clean
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert _tree(f.ins) == ins_before, f"{name}({param}) modified an input"


# -- the cases of issue 28, one by one -----------------------------------------------------------------

def test_harden_refuses_the_probe_file_as_output(f):
    """``harden(model, stats, "probe.npz", probe="probe.npz")`` replaced the probe with the model."""
    before = _tree(f.ins)
    for output in (f.data, os.fsencode(f.data), PathLike(f.data)):
        with pytest.raises(OutputError) as e:
            mst.harden(f.model, f.loaded, output, probe=f.data)
        assert "is the input" in str(e.value)
    link = f.out / "probe-link.npz"
    os.link(f.data, link)
    try:
        with pytest.raises(OutputError):
            mst.harden(f.model, f.loaded, f.data, probe=link)
    finally:
        link.unlink()
    assert _tree(f.ins) == before and _tree(f.out) == {}


def test_calibrate_batch_axes_of_a_float_is_refused_naming_the_parameter(f):
    with pytest.raises(UsageError) as e:
        mst.calibrate(f.model, f.data, batch_axes={"input": 0.0}, progress=False)
    assert "batch_axes" in str(e.value)


def test_calibrate_batch_axes_in_the_command_line_spelling_is_accepted(f):
    """``"input=0"`` (and a list of such strings) means what ``--batch-axis input=0`` means."""
    want = mst.calibrate(f.model, f.data, batch_axes={"input": 0}, progress=False, limit=8)
    for spelling in ("input=0", ["input=0"]):
        got = mst.calibrate(f.model, f.data, batch_axes=spelling, progress=False, limit=8)
        assert got.sha256() == want.sha256() and [r.batch_axis for r in got.inputs] == [0]
    for bad in ("input=0.5", "input", ["input=0", "input=none"], {0: 0}, {"input": True}):
        with pytest.raises(UsageError) as e:
            mst.calibrate(f.model, f.data, batch_axes=bad, progress=False)
        assert "batch_axes" in str(e.value)


def test_paths_as_bytes_and_pathlike_are_accepted(f):
    want = mst.find_sites(str(f.model)).format()
    assert mst.find_sites(os.fsencode(f.model)).format() == want
    assert mst.find_sites(PathLike(f.model)).format() == want
    stats = mst.load_stats(PathLike(f.stats))
    assert stats.sha256() == f.loaded.sha256()
    report = mst.harden(os.fsencode(f.model), os.fsencode(f.stats), PathLike(f.out / "h.onnx"), verify=False)
    assert Path(report.output) == f.out / "h.onnx" and (f.out / "h.onnx").is_file()
    (f.out / "h.onnx").unlink()


def test_stats_as_npzfile_or_mapping_of_arrays_are_accepted(f):
    """``harden(model, np.load("stats.npz"), out)``: the same model as from the file's path."""
    mst.harden(f.model, f.stats, f.out / "a.onnx", verify=False)
    with np.load(f.stats) as npz:
        mst.harden(f.model, npz, f.out / "b.onnx", verify=False)
        mst.harden(f.model, dict(npz), f.out / "c.onnx", verify=False)
    a = (f.out / "a.onnx").read_bytes()
    assert (f.out / "b.onnx").read_bytes() == a and (f.out / "c.onnx").read_bytes() == a
    for p in f.out.iterdir():
        p.unlink()


def test_stats_of_another_kind_are_refused_naming_the_parameter(f):
    from mstransform.core.errors import StatsError

    for bad in (42, [1, 2], {"format": 3}, {1: np.zeros(2)}):
        with pytest.raises((UsageError, StatsError)) as e:
            mst.harden(f.model, bad, f.out / "h.onnx")
        assert "stats" in str(e.value)
    assert _tree(f.out) == {}


def test_run_result_is_never_saved_over_what_the_run_read(f):
    """``mst.run(model, data).save(data)`` would replace the data with the predictions."""
    before = _tree(f.ins)
    result = mst.run(f.model, f.data, limit=8)
    for target in (f.data, f.model, os.fsencode(f.data), PathLike(f.model)):
        with pytest.raises(OutputError) as e:
            result.save(target)
        assert "is the input" in str(e.value)
    assert _tree(f.ins) == before
    assert result.save(f.out / "p.npz") == f.out / "p.npz"
    (f.out / "p.npz").unlink()


# -- the external data of an input model as an output ---------------------------------------------------

API_EXTERNAL = [("harden, renamed model", "harden"), ("calibrate_and_harden, renamed model", "one-step")]


@pytest.mark.parametrize("how", [c[1] for c in API_EXTERNAL], ids=[c[0] for c in API_EXTERNAL])
def test_api_refuses_the_input_data(w, how):
    before = snapshot(w)
    with pytest.raises(OutputError, match="is the input"):
        if how == "harden":
            mst.harden(w / "ext" / "renamed.onnx", w / "stats.npz", output=w / "ext" / "model.onnx")
        else:
            mst.calibrate_and_harden(w / "ext" / "renamed.onnx", w / "calib.npz", output=w / "ext" / "model.onnx",
                                     stats_output=w / "s.npz")
    assert snapshot(w) == before


# -- the package namespace ---------------------------------------------------------------------------------

def test_every_api_name_resolves_on_the_package():
    from mstransform.tools import api

    missing = [n for n in api.__all__ if not hasattr(mst, n)]
    assert missing == []
    assert all(getattr(mst, n) is getattr(api, n) for n in api.__all__)
    assert set(api.__all__) <= set(mst.__all__)
    assert {n for n, where in mst._API.items() if where == api.__name__} == set(api.__all__)  # the lazy table mirrors it
    assert [n for n in mst.__all__ if not hasattr(mst, n)] == []
    assert [n for n in passes.__all__ if not hasattr(passes, n)] == []
