"""Signals: SIGINT and SIGTERM mid-run and while the command still imports its libraries (one line, exit 130,
nothing left behind), and a closed pipe on standard output (exit 141, as a shell reports for ls or git,
and no line)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import EXAMPLE
from os_cases import CLI as SCRIPT

MODEL, CALIB = EXAMPLE / "model.onnx", EXAMPLE / "calib.npz"
CLI = [sys.executable, "-m", "mstransform.tools.entry"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_calibration_leaves_nothing(sig, tmp_path):
    """The signal goes out once the run shows progress (its first line on stderr), not after a fixed delay."""
    big = tmp_path / "big.npz"
    np.savez(big, input=np.random.default_rng(0).integers(0, 255, (60000, 1, 28, 28), dtype=np.uint8))
    out = tmp_path / "stats.npz"
    proc = subprocess.Popen([*CLI, "calibrate", str(MODEL), "--data", str(big), "--batch-size", "1", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()
    assert first.startswith("calibrating"), first
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and ("interrupted" in err or "terminated" in err), err
    assert sorted(os.listdir(tmp_path)) == ["big.npz"]


STARTUP = """
import importlib.abc, os, signal, sys
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), {sig})
        return None
sys.meta_path.insert(0, Hook())
from mstransform.tools.entry import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize("module", ["numpy", "onnx", "onnx_ir", "sympy", "onnxruntime", "tqdm"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_startup_imports(module, sig, tmp_path):
    """The signal arrives while the command is still importing its libraries: one line, exit 130."""
    out = tmp_path / "s.npz"
    argv = ["calibrate", str(MODEL), "--data", str(CALIB), "-o", str(out)]
    r = subprocess.run([sys.executable, "-c", STARTUP.format(module=module, sig=int(sig), argv=argv)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 130, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()


def test_closed_pipe_exits_quietly():
    """`mstransform sites m.onnx | head -c 1`: status 141 (128 + SIGPIPE, as a shell reports for ls or git), no line."""
    r, wr = os.pipe()
    os.close(r)  # the reader has gone before the first write: deterministic
    try:
        p = subprocess.run([*SCRIPT, "sites", str(MODEL)], stdout=wr, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(wr)
    assert p.returncode == 141 and p.stderr == "", (p.returncode, p.stderr)
