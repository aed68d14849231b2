"""Calibration and evaluation across processes with ``torch.distributed``: every rank measures its
shard of the batches and every rank gets their merge by Chan's rule (``mstransform calibrate`` under
``torchrun``, rank 0 writing it), or the ranks overlay their per-image verdicts (``mstransform eval``
and ``sweep`` under ``torchrun``). The command line is the same as in one process::

    torchrun --nproc-per-node 2 -m mstransform calibrate MODEL --data DATA -o OUT [--batch-size B]
    torchrun --nproc-per-node 8 -m mstransform calibrate MODEL --data DATA -o OUT --device cuda

On the CPU the ranks talk over gloo. With ``--device cuda`` each rank takes the GPU of its
``LOCAL_RANK`` (ONNX Runtime's CUDA provider with that ``device_id``), the ranks talk over NCCL,
and the moments travel as float64 CUDA tensors (NCCL moves device memory only).

Each rank takes batches ``rank, rank + world, ...`` (the same split as ``--shard``); the
moments travel as float64 tensors (no pickling), so the merged file equals a
single-process run up to float64 rounding of the merge order.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

# Verdict characters as bytes that MIN-reduce to the evaluated one: "." (not this rank's image) is highest.
_CODES = {".": 255, "0": 0, "1": 1}


def gather_stats(stats, group=None):
    """On every rank, the exact merge of every rank's stats (ranks in order)."""
    import torch
    import torch.distributed as dist

    from mstransform.core.moments import Moments
    from mstransform.core.stats import SiteStats, Stats

    world = dist.get_world_size(group)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else None
    merged_sites = {}
    total = torch.tensor([stats.samples], dtype=torch.float64, device=device)
    dist.all_reduce(total, group=group)
    for name, s in stats.sites.items():
        m = s.moments
        absmax = m.absmax if m.absmax is not None else np.full(m.channels, np.nan)  # NaN: not measured
        packed = torch.from_numpy(np.concatenate([[m.count], m.mean, m.m2, absmax]).astype(np.float64)).to(device)
        parts = [torch.empty_like(packed) for _ in range(world)]
        dist.all_gather(parts, packed, group=group)
        acc = Moments.empty(m.channels)
        c = m.channels
        for p in parts:
            p = p.cpu().numpy()
            hi = p[1 + 2 * c:]
            acc = acc.merge(Moments(int(p[0]), p[1:1 + c], p[1 + c:1 + 2 * c], None if np.isnan(hi).all() else hi))
        merged_sites[name] = SiteStats(s.name, s.feed, s.kind, s.axis, s.rank, s.dtype, acc)
    return Stats(stats.fingerprint, stats.placement, merged_sites, int(total.item()), stats.selection)


def launched() -> tuple[int, int] | None:
    """``(rank, world size)`` when ``torchrun`` (or another ``torch.distributed`` launcher) started this
    process, else None."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def local_gpu() -> int | None:
    """This rank's GPU under ``torchrun`` (its ``LOCAL_RANK``); None in one process."""
    return int(os.environ.get("LOCAL_RANK", "0")) if launched() is not None else None


@contextlib.contextmanager
def process_group(cuda: bool = False):
    """The default process group: NCCL with each rank on the GPU of its ``LOCAL_RANK``, else gloo. A group the
    caller's own script has already made is used as it is, and left to the caller."""
    import torch
    import torch.distributed as dist

    if cuda:
        torch.cuda.set_device(local_gpu() or 0)
    if dist.is_initialized():
        yield dist.get_rank(), dist.get_world_size()
        return
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def _device():
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None


def overlay_verdicts(verdicts: list[str]) -> list[str]:
    """Every rank's verdict strings (one character per image, ``.`` where another rank evaluated it)
    overlaid into one per string, on every rank: a MIN all-reduce of bytes, no pickling."""
    import torch
    import torch.distributed as dist

    back = {v: k for k, v in _CODES.items()}
    out = []
    for text in verdicts:
        codes = torch.tensor([_CODES[c] for c in text], dtype=torch.uint8, device=_device())
        dist.all_reduce(codes, op=dist.ReduceOp.MIN)
        out.append("".join(back[int(c)] for c in codes.cpu().tolist()))
    return out


def sum_floats(values: list[float]) -> list[float]:
    """Every rank's ``values``, summed elementwise, on every rank."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def max_floats(values: list[float]) -> list[float]:
    """Every rank's ``values``, maximum elementwise, on every rank."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu().tolist()


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def calibrate_ranks(measure, *, shard=None, device=None, threads=None):
    """The stats of ``measure(shard=, providers=, threads=)`` (a calibration over this process's batches).

    In one process: ``measure`` on ``shard``. Under ``torchrun``: each rank measures batches ``rank, rank +
    world, ...`` (one intra-op thread unless ``threads`` or ``OMP_NUM_THREADS`` says otherwise), and every rank
    returns the merge of every rank's stats (the command line writes it from rank 0)."""
    from mstransform.core.errors import UsageError
    from mstransform.core.options import Device, choice
    from mstransform.runtime.session import providers_for

    if launched() is None:
        return measure(shard=shard, providers=providers_for(device), threads=threads)
    if shard is not None:
        raise UsageError("under torchrun each process calibrates its rank's batches; leave --shard out", param="shard")
    cuda = device is not None and choice(Device, device, "device") is Device.CUDA
    with process_group(cuda=cuda) as (rank, world):
        if cuda:  # the rank's own GPU (process_group made it torch's current device)
            import torch

            providers = providers_for(device, torch.cuda.current_device())
        else:
            providers = providers_for(device)
        threads = threads if threads is not None else _rank_threads()
        return gather_stats(measure(shard=(rank, world), providers=providers, threads=threads))


def _rank_threads() -> int:
    """A rank's intra-op threads: what ``OMP_NUM_THREADS`` says (torchrun sets 1 unless told), else 1."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else 1
