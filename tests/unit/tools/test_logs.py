"""What the command line says besides its results: --quiet, --verbose, --log-file, warnings at their source,
a mistyped command, messages in the words the user typed, and a --version that imports nothing heavy."""
from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import numpy as np
import pytest
from helpers import EXAMPLE, run_cli

MODEL, CALIB = EXAMPLE / "model.onnx", EXAMPLE / "calib.npz"


def calibrate(tmp_path, *flags, data=CALIB):
    return run_cli("calibrate", MODEL, "--data", data, "--limit", 256, "-o", tmp_path / "s.npz", *flags)


def test_notes_by_default_and_quiet_keeps_results_and_warnings(tmp_path):
    loud = calibrate(tmp_path)
    assert loud.code == 0 and "calibrating 7 site(s)" in loud.err and "calibrated 7 site(s)" in loud.out
    quiet = calibrate(tmp_path, "--quiet")
    assert quiet.code == 0 and quiet.err == "" and "calibrated 7 site(s)" in quiet.out
    # a warning is not a note: it survives --quiet (pixels 0..255 as floats, which are not scaled, fed to a
    # model that expects 0..1)
    with np.load(CALIB) as z:
        np.savez(tmp_path / "raw255.npz", input=z["input"].astype(np.float32))
    r = calibrate(tmp_path, "-q", data=tmp_path / "raw255.npz")
    lines = r.err.splitlines()
    assert r.code == 0 and lines and all(line.startswith("mstransform: warning: ") for line in lines), r.err


def test_library_records_only_under_verbose_and_always_in_the_log_file(tmp_path):
    """A library's warning and log record (here raised from inside a run, as a library would) stay out of the
    console unless --verbose, and are in the log file in any case."""
    from mstransform.tools.logs import Output

    def library_chatter():
        warnings.warn("a library's deprecation", FutureWarning)
        logging.getLogger("somelib").warning("a library's log record")

    for verbose in (False, True):
        err = tmp_path / f"err{verbose}.txt"
        with open(err, "w") as stream:
            saved, sys.stderr = sys.stderr, stream
            try:
                out = Output(verbose=verbose, keep=True)
                library_chatter()
                out.log_to(tmp_path / f"log{verbose}.txt")
                out.close()
            finally:
                sys.stderr = saved
        console, log = err.read_text(), (tmp_path / f"log{verbose}.txt").read_text()
        assert ("a library's deprecation" in console) is verbose and ("somelib: warning" in console) is verbose
        assert "a library's deprecation" in log and "a library's log record" in log
    assert not [h for h in logging.getLogger().handlers if type(h).__module__ == "mstransform.tools.logs"]


def test_log_file_holds_notes_and_the_error_line_and_is_an_output(tmp_path):
    log = tmp_path / "run.log"
    r = calibrate(tmp_path, "--quiet", "--log-file", log)
    assert r.code == 0 and "calibrating 7 site(s)" in log.read_text()  # hidden from the console, kept here
    bad = run_cli("calibrate", MODEL, "--data", tmp_path / "missing.npz", "-o", tmp_path / "t.npz", "--log-file", log)
    assert bad.code == 5 and bad.err.strip().splitlines()[-1] in log.read_text()
    before = CALIB.read_bytes()
    clash = calibrate(tmp_path, "--log-file", CALIB)
    assert clash.code == 6 and CALIB.read_bytes() == before


@pytest.mark.parametrize("typed, meant", [("calibrte", "calibrate"), ("sitse", "sites"), ("bech", "bench")])
def test_a_mistyped_command_names_the_nearest(typed, meant, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_cli(typed, "model.onnx")
    assert r.code == 2 and r.err == f"mstransform: error: unknown command {typed!r}; did you mean {meant!r}? " \
                                    "(see `mstransform --help`)\n"


def test_a_model_file_named_like_a_command_is_still_hardened(tmp_path, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(MODEL, tmp_path / "sitse")
    r = run_cli("sitse", "--data", CALIB, "--limit", 64, "--alpha", 0.2, "-o", tmp_path / "h.onnx")
    assert r.code == 0, r.err


def test_messages_name_the_flag_on_the_command_line_and_the_parameter_in_python(tmp_path):
    import mstransform as mst

    other = tmp_path / "other.npz"
    stats = mst.calibrate(MODEL, str(CALIB), limit=128, progress=False)
    stats.save(other)
    # a model with other weights: the same architecture, trained otherwise (one weight changed)
    import onnx

    m = onnx.load(str(MODEL))
    w = next(t for t in m.graph.initializer if len(t.dims) == 4)
    arr = onnx.numpy_helper.to_array(w).copy()
    arr.flat[0] += 1.0
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    onnx.save(m, str(tmp_path / "retrained.onnx"))
    r = run_cli(tmp_path / "retrained.onnx", "--stats", other, "-o", tmp_path / "h.onnx")
    assert r.code == 4 and r.err.rstrip().endswith("or pass --ignore-fingerprint"), r.err
    from mstransform.core.errors import StatsError

    with pytest.raises(StatsError) as e:
        mst.harden(tmp_path / "retrained.onnx", stats, tmp_path / "h2.onnx")
    assert str(e.value).endswith("or pass ignore_fingerprint=True")


def test_run_on_cpu_prints_no_provider_note_unless_verbose():
    r = run_cli("run", MODEL, "--data", EXAMPLE / "test.npz", "--limit", 16)
    assert r.code == 0 and "preferred order" not in r.out + r.err
    v = run_cli("-v", "run", MODEL, "--data", EXAMPLE / "test.npz", "--limit", 16)
    assert v.code == 0 and "providers: preferred order" in v.err


def test_openvino_with_cuda_names_the_flag_given():
    r = run_cli("run", MODEL, "--data", EXAMPLE / "test.npz", "--device", "cuda", "--runtime", "openvino")
    assert r.code == 2 and r.err.startswith("mstransform: error: --device cuda does not apply to OpenVINO")


def test_version_imports_no_model_library():
    code = ("import sys; from mstransform.tools.cli import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('onnx', 'onnx_ir', 'onnxruntime', 'torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["mstransform 0.2.0", "[]"]


def test_hardening_a_torch_export_warns_nothing():
    """The project's own calls raise no warning at their source (a deepcopy of an exported module did)."""
    import torch
    import torch.nn as nn

    import mstransform as mst

    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    ep = torch.export.export(m, (torch.randn(2, 4),), dynamic_shapes=({0: torch.export.Dim("b")},))
    stats = mst.calibrate(ep, torch.randn(64, 4), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mst.harden_torch(ep, stats, 0.2)


def on_terminal(*argv) -> str:
    """What ``mstransform ARGV`` writes to a 120-column terminal on its standard error (bars drawn)."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "mstransform", *map(str, argv)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=child)
    os.close(child)
    raw = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        raw += chunk
    assert proc.wait(timeout=300) == 0, raw.decode(errors="replace")[-500:]
    os.close(main)
    return raw.decode(errors="replace")


def test_the_calibrate_header_is_printed_above_the_progress_bar(tmp_path):
    """On a terminal the bar is drawn; the header line must stand on its own line, not be appended to the bar."""
    text = on_terminal("calibrate", MODEL, "--data", CALIB, "--batch-size", 100, "-o", tmp_path / "s.npz")
    assert "calibrating:" in text  # the bar was drawn
    header = next(line for line in text.split("\n") if "calibrating 7 site(s)" in line)
    assert header.rstrip("\r").split("\r")[-1].startswith("calibrating 7 site(s)"), repr(header)


def test_eval_says_the_work_ahead_and_an_estimate_under_one_bar(tmp_path):
    """Before the first attack: models x images x attacks and their iterations; after the first chunk an
    estimate; one bar over every model's chunks (not one per model)."""
    text = on_terminal("eval", MODEL, EXAMPLE / "std.onnx", "--data", EXAMPLE / "test.npz", "-n", 24,
                       "--batch-size", 8, "--apgd-iters", 2, "--square-queries", 5)
    lines = [line.rstrip("\r").split("\r")[-1] for line in text.split("\n")]
    assert ("work ahead: 2 model(s) x 24 image(s) in 3 chunk(s) of up to 8 x 4 attack(s): apgd-ce (2 iterations), "
            "apgd-dlr (2 iterations), square (5 queries), bpda (2 iterations)") in lines
    assert any(line.startswith("estimate: about ") and "for the 5 chunk(s) left" in line for line in lines)
    assert "evaluating:" in text and "0/6 [" in text  # one bar, drawn at the start, over both models' 6 chunks
    assert "attacking " not in text
