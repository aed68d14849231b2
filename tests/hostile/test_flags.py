"""Hostile flags (exit 2): values out of their bounds (alpha, eps, batch size, images, queries, threads, the
clean-accuracy budget), NaN where a number must be finite, patterns and names that match nothing,
unknown options, missing flags and conflicting repeats, all refused before any work; and a device or
execution provider this machine lacks (exit 8, a missing dependency). Each gives one line, its exit
code, no new file, inputs intact."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from helpers import EXAMPLE, bad_input_cases, check_bad_input, run_cli

MODEL, CALIB, TEST = EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", EXAMPLE / "test.npz"


@pytest.fixture(scope="module")
def bad(tmp_path_factory, example_hardened):
    """The folder the outputs of the table below would go to; it must gain no file from any case."""
    tmp = tmp_path_factory.mktemp("hostile-flags")
    return SimpleNamespace(tmp=tmp, stats=example_hardened.stats, out=tmp / "o.onnx", s=tmp / "s.npz", folder=tmp,
                           protected=[MODEL, CALIB, TEST, example_hardened.stats])


def _harden(f, *flags):
    return [MODEL, "--stats", f.stats, *flags, "-o", f.out]


def _calibrate(f, *flags):
    return ["calibrate", MODEL, "--data", CALIB, *flags, "-o", f.s]


# (label, argv of the prepared files, exit code, words in the message)
FLAG_CASES = [
    # numbers out of their bounds
    ("negative alpha", lambda f: _harden(f, "--alpha", "-0.1"), 2, ">= 0"),
    ("NaN alpha", lambda f: _harden(f, "--alpha", "nan"), 2, "finite"),
    ("absurd alpha", lambda f: _harden(f, "--alpha", "1e9"), 2, "below 100"),
    ("batch size 0", lambda f: _calibrate(f, "--batch-size", "0"), 2, "--batch-size"),
    ("absurd batch", lambda f: ["calibrate", MODEL, "--data", CALIB, "--batch-size", "1000000000", "-o",
                                f.tmp / "x.npz"], 2, "--batch-size"),
    ("size NaN", lambda f: _calibrate(f, "--size", "nan,28"), 2, "finite"),
    ("bad shard", lambda f: _calibrate(f, "--shard", "3/2"), 2, "shard"),
    ("eps out of the box", lambda f: ["eval", MODEL, "--data", TEST, "--eps", "1e9"], 2, "--eps"),
    ("zero images", lambda f: ["eval", MODEL, "--data", TEST, "-n", "0"], 2, "-n/--images"),
    ("absurd queries", lambda f: ["eval", MODEL, "--data", TEST, "--square-queries", "10000000000"], 2,
     "--square-queries"),
    ("negative budget", lambda f: ["sweep", MODEL, "--stats", f.stats, "--data", TEST, "--max-clean-drop", "-1"], 2,
     "--max-clean-drop"),
    # names and patterns
    ("alpha for unknown site", lambda f: _harden(f, "--alpha", "nosuch=0.1"), 2, "matches no site"),
    ("invalid regex", lambda f: ["sites", MODEL, "--include", "("], 2, "--include"),
    ("bad axis override", lambda f: ["sites", MODEL, "--axis", "/Relu=x"], 2, "integer axis"),
    ("axis for unknown site", lambda f: ["sites", MODEL, "--axis", "nosuch=1"], 2, "unknown site"),
    ("unknown TensorRT version", lambda f: ["check-trt", MODEL, "--trt-version", "1.0"], 2, "trt-version"),
    # options
    ("neither stats nor data", lambda f: [MODEL, "-o", f.out], 2, "--stats"),
    ("unknown option", lambda f: [MODEL, "--stats", f.stats, "--frobnicate"], 2, "unrecognized"),
]


@bad_input_cases(FLAG_CASES)
def test_hostile_flag(label, argv, code, words, bad):
    check_bad_input(label, argv(bad), code, words, bad.folder, bad.protected)


def test_absurd_threads_pass_where_no_session_opens():
    """`sites` opens no session: the bound applies where threads are used (next test)."""
    r = run_cli("--threads", "100000", "sites", MODEL)
    assert r.code == 0, r.err


def test_thread_bound_is_checked_before_work(tmp_path):
    r = run_cli("--threads", "100000", "calibrate", MODEL, "--data", CALIB, "-o", tmp_path / "s.npz")
    assert r.code == 2 and "--threads" in r.err and len(r.err.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_conflicting_repeat_of_batch_axis_is_a_usage_error(tmp_path):
    base = ["calibrate", EXAMPLE / "model.onnx", "--data", EXAMPLE / "val.npz", "--limit", "8",
            "-o", tmp_path / "s.npz"]
    r = run_cli(*base, "--batch-axis", "input=1", "--batch-axis", "input=0")
    assert r.code == 2 and r.err.count("\n") == 1 and "--batch-axis" in r.err and "input" in r.err, r.err
    assert list(tmp_path.iterdir()) == []
    r = run_cli(*base, "--batch-axis", "input=0", "--batch-axis", "input=0")
    assert r.code == 0, r.err


# -- devices and execution providers -----------------------------------------------------------------------
def _ort_has(provider: str) -> bool:
    import onnxruntime as ort

    return provider in ort.get_available_providers()


@pytest.mark.skipif(_ort_has("CUDAExecutionProvider"), reason="CUDA provider present")
@pytest.mark.parametrize("command", ["calibrate", "run"])
def test_device_cuda_without_cuda_is_a_missing_dependency(command, tmp_path):
    args = {"calibrate": ["calibrate", EXAMPLE / "model.onnx", "--data", EXAMPLE / "val.npz", "-o", tmp_path / "s.npz"],
            "run": ["run", EXAMPLE / "model.onnx", "--data", EXAMPLE / "val.npz"]}[command]
    r = run_cli(*args, "--device", "cuda")
    assert r.code == 8, r.err
    assert r.err.count("\n") == 1 and "CUDAExecutionProvider" in r.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(_ort_has("TensorrtExecutionProvider"), reason="TensorRT provider present")
def test_a_provider_missing_from_this_build_is_a_missing_dependency():
    r = run_cli("run", EXAMPLE / "model.onnx", "--data", EXAMPLE / "val.npz", "--providers",
                "TensorrtExecutionProvider")
    assert r.code == 8 and r.err.count("\n") == 1 and "TensorrtExecutionProvider" in r.err, r.err


def test_a_provider_name_onnxruntime_does_not_know_is_a_usage_error():
    r = run_cli("run", EXAMPLE / "model.onnx", "--data", EXAMPLE / "val.npz", "--providers", "CUDAProvider")
    assert r.code == 2 and r.err.count("\n") == 1 and "--providers" in r.err, r.err
