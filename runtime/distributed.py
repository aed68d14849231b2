"""Calibration across processes with ``torch.distributed`` (gloo): every rank measures
its shard of the batches, rank 0 gathers the moments and merges them exactly.

Launch::

    torchrun --nproc-per-node 2 -m mstransform.runtime.distributed MODEL DATA OUT [--batch-size B]

Each rank takes batches ``rank, rank + world, ...`` (the same split as ``--shard``); the
moments travel as float64 tensors (no pickling), so the merged file equals a
single-process run up to float64 rounding of the merge order.
"""
from __future__ import annotations

import argparse

import numpy as np


def gather_stats(stats, group=None):
    """On rank 0, the exact merge of every rank's stats (ranks in order); None elsewhere."""
    import torch
    import torch.distributed as dist

    from mstransform.core.moments import Moments
    from mstransform.core.stats import SiteStats, Stats

    world, rank = dist.get_world_size(group), dist.get_rank(group)
    merged_sites = {}
    total = torch.tensor([stats.samples], dtype=torch.float64)
    dist.all_reduce(total, group=group)
    for name, s in stats.sites.items():
        m = s.moments
        packed = torch.from_numpy(np.concatenate([[m.count], m.mean, m.m2, m.absmax]).astype(np.float64))
        parts = [torch.empty_like(packed) for _ in range(world)]
        dist.all_gather(parts, packed, group=group)
        if rank == 0:
            acc = Moments.empty(m.channels)
            c = m.channels
            for p in parts:
                p = p.numpy()
                acc = acc.merge(Moments(int(p[0]), p[1:1 + c], p[1 + c:1 + 2 * c], p[1 + 2 * c:]))
            merged_sites[name] = SiteStats(s.name, s.feed, s.kind, s.axis, s.rank, s.dtype, acc)
    if rank != 0:
        return None
    return Stats(stats.fingerprint, stats.placement, merged_sites, int(total.item()), stats.selection)


def main(argv=None) -> int:
    import torch.distributed as dist

    from mstransform.runtime.calibrate import calibrate_onnx

    ap = argparse.ArgumentParser(description="calibrate under torchrun (gloo)")
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("output")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int)
    a = ap.parse_args(argv)
    dist.init_process_group("gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        local = calibrate_onnx(a.model, a.data, batch_size=a.batch_size, limit=a.limit, progress=False,
                               shard=(rank, world), threads=1)
        merged = gather_stats(local)
        if merged is not None:
            merged.save(a.output)
            print(f"rank 0: merged {world} shard(s), {merged.samples} sample(s); wrote {a.output}")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
