"""Calibration across processes (``runtime.distributed``): ``mstransform calibrate`` under torchrun gives the
statistics of one process."""
from __future__ import annotations

import numpy as np
from helpers import ingraph_tolerance

import mstransform as mst
from mstransform.core.stats import Stats


def test_torchrun_ranks_merge_into_one_pass(tmp_path):
    """`mstransform calibrate` under torchrun: two gloo ranks, each calibrating every other batch, merged and
    written by rank 0: the same statistics as one process, within twice the in-graph bound (the batches are the same, the
    shifts differ)."""
    import subprocess
    import sys

    from helpers import EXAMPLE

    model, data, out = EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", tmp_path / "ranks.npz"
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous (port 0 is not accepted there)
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("PYTEST", "OMP"))}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port,
                        "-m", "mstransform", "calibrate", str(model), "--data", str(data), "-o", str(out), "--limit",
                        "256", "--batch-size", "32"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("wrote") == 1  # rank 0 alone writes and says so
    merged, one = Stats.load(out), mst.calibrate(model, data, limit=256, batch_size=32, progress=False)
    assert merged.samples == one.samples == 256
    for name, s in one.sites.items():
        a, b = s.moments, merged.sites[name].moments
        mean_f, var_f = ingraph_tolerance((32, a.channels, a.count // 256), 1, 32)
        assert a.count == b.count
        assert np.all(np.abs(a.mean - b.mean) <= 2 * mean_f * np.sqrt(a.var) + 1e-300)
        assert np.all(np.abs(a.var - b.var) <= 2 * var_f * a.var + 1e-300)
        np.testing.assert_array_equal(a.absmax, b.absmax)


def test_calibrate_in_a_users_own_process_group_uses_it_and_leaves_it(tmp_path):
    """A user's torchrun script that made its own gloo group first: ``mst.calibrate`` measures within that group
    (one rank here: every batch, the counts of one process), returns the stats, and leaves the group standing."""
    import os
    import socket
    import subprocess
    import sys

    from helpers import EXAMPLE

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    script = (
        "import sys, torch.distributed as dist, mstransform as mst\n"
        "dist.init_process_group('gloo')\n"
        f"s = mst.calibrate({str(EXAMPLE / 'model.onnx')!r}, {str(EXAMPLE / 'calib.npz')!r}, limit=64, progress=False)\n"
        "print(s.samples, len(s), dist.is_initialized())\n"
        "dist.destroy_process_group()\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST")},
           "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["64", str(len(mst.find_sites(EXAMPLE / "model.onnx"))), "True"]


def test_two_ranks_in_a_users_own_group_each_get_the_merge_of_one_pass(tmp_path):
    """Two torchrun ranks whose script made its own gloo group: each rank's ``mst.calibrate`` returns the same
    merged stats (every rank, not rank 0 alone), equal to one process over the same batches within twice the
    in-graph bound, and the group still stands afterwards."""
    import os
    import socket
    import subprocess
    import sys

    from helpers import EXAMPLE

    model, data = EXAMPLE / "model.onnx", EXAMPLE / "calib.npz"
    script = tmp_path / "ranks.py"
    script.write_text(
        "import sys, torch.distributed as dist, mstransform as mst\n"
        "dist.init_process_group('gloo')\n"
        f"s = mst.calibrate({str(model)!r}, {str(data)!r}, limit=256, batch_size=32, progress=False)\n"
        f"s.save({str(tmp_path)!r} + f'/rank{{dist.get_rank()}}.npz')\n"
        "assert dist.is_initialized()\n"
        "dist.destroy_process_group()\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "OMP"))}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port,
                        str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ranks = [Stats.load(tmp_path / f"rank{i}.npz") for i in (0, 1)]
    one = mst.calibrate(model, data, limit=256, batch_size=32, progress=False)
    assert ranks[0].samples == ranks[1].samples == one.samples == 256
    for name, s in one.sites.items():
        a, b, c = s.moments, ranks[0].sites[name].moments, ranks[1].sites[name].moments
        np.testing.assert_array_equal(b.mean, c.mean)
        np.testing.assert_array_equal(b.m2, c.m2)
        mean_f, var_f = ingraph_tolerance((32, a.channels, a.count // 256), 1, 32)
        assert a.count == b.count
        assert np.all(np.abs(a.mean - b.mean) <= 2 * mean_f * np.sqrt(a.var) + 1e-300)
        assert np.all(np.abs(a.var - b.var) <= 2 * var_f * a.var + 1e-300)
