"""The in-graph reductions (passes/onnx/reductions.py), on tiny hand-built models and on a real export.

* the sums ONNX Runtime computes equal numpy's float64 sums within the float32 summation bound, counts and
  extents exactly, and the model is byte-identical once the context exits -- in the main graph and inside
  an ``If`` branch (only the branch taken counts);
* they run next to their sites in ONNX Runtime, not after the whole network. Appended in site order, every
  reduction ran after the network's last layer, so every site tensor of a batch stayed alive at once
  (ResNet-50, batch 32: 3.9 GB peak against 1.0 GB for plain inference). The profiler's kernel order is
  the schedule ONNX Runtime actually ran.
"""
from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from helpers import U32, exported, random_inputs
from tiny_graphs import X, if_model, relu_model, serialized, session, value

import mstransform as mst
from mstransform.passes.graph.load import load_model
from mstransform.passes.onnx.reductions import AddSiteReductionsPass, reducing


def kernel_order(model: ir.Model, feed: dict, tmp_path) -> list[str]:
    """Node names in the order ONNX Runtime's CPU provider ran them (second run; profiler on)."""
    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, str(tmp_path / "profile")
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    session.run(None, feed)
    session.run(None, feed)
    events = json.loads(open(session.end_profiling()).read())
    last = [e for e in events if e.get("name") == "model_run"][-1]
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
               and e["ts"] >= last["ts"]]
    return [e["name"][: -len("_kernel_time")] for e in sorted(kernels, key=lambda e: e["ts"])]


@pytest.mark.parametrize("fixed", [False, True], ids=["fed-shift", "fixed-shift"])
def test_each_reduction_runs_before_most_of_the_network(fixed, export_dir, tmp_path):
    """Also with fixed shifts, whose pooling ONNX Runtime rewrites into new (blocked) nodes: were those the graph's
    leaves, their order would be ORT's, not ours (every site tensor alive at once: 3.4 GB on ResNet-50, batch 32)."""
    path = exported("resnet", "legacy-17-bn", export_dir)
    model = load_model(path)
    table = mst.find_sites(path)
    feeds = list(dict.fromkeys(s.feed_name for s in table))
    values = {v.name: v for n in model.graph for v in n.outputs}
    targets = [(values[f], 1, 4) for f in feeds]
    shifts = [np.zeros(v.shape[1], np.float32) for v, _, _ in targets] if fixed else None
    x = random_inputs("resnet", 2)
    with reducing(model, targets, extent=False, fixed=shifts) as reductions:
        feed = {"input": x, **{r.shift.name: np.zeros((r.feed.shape[1], 1), np.float32)
                               for r in reductions if r.shift is not None}}
        order = kernel_order(model, feed, tmp_path)
    ours = [i for i, name in enumerate(order) if name.startswith("mst_reduce_")]
    network = [i for i, name in enumerate(order) if not name.startswith("mst_reduce_") and "Reorder" not in name]
    assert len(targets) >= 3 and ours and network
    first_site = [i for i in ours if order[i].startswith("mst_reduce_0/")]
    # the first site's reductions start before most of the network has run ...
    assert sum(i > first_site[0] for i in network) >= len(network) // 2
    # ... and the reductions start in site order, each group before the next one's
    starts = [min(i for i in ours if order[i].startswith(f"mst_reduce_{k}/")) for k in range(len(targets))]
    assert starts == sorted(starts)


# -- sums against numpy on tiny models ----------------------------------------------------------------

def numpy_sums(x: np.ndarray, axis: int, shift: np.ndarray):
    """(count per channel, sum d, sum d^2, sum |d|, max, min) in float64, d = x - shift, per channel along axis."""
    x = np.moveaxis(x.astype(np.float64), axis, -1).reshape(-1, x.shape[axis])
    d = x - shift.astype(np.float64)
    return len(x), d.sum(0), (d * d).sum(0), np.abs(d).sum(0), x.max(0), x.min(0)


def assert_sums(got, x, axis, shift, terms):
    """``got`` = (count, s1, s2, [max, min]) from ``Reduction.host_sums`` against numpy.

    Any float32 summation order of n terms errs by at most (n - 1) u sum|terms| (first order); the two-stage
    sums span ``terms`` = (terms inside one sample) + (samples) of them, the subtraction x - shift and the
    square add u and 2u per term, a per-sample mean (fixed shift) a division: (terms + 4) u bounds all."""
    count, s1, s2, extent = got
    n, r1, r2, abs1, hi, lo = numpy_sums(x, axis, shift)
    assert count == n
    bound = (terms + 4) * U32
    assert np.all(np.abs(s1 - r1) <= bound * abs1), (s1, r1)
    assert np.all(np.abs(s2 - r2) <= bound * r2), (s2, r2)
    if extent:
        np.testing.assert_array_equal(extent[0], hi)  # max and min are exact in any order
        np.testing.assert_array_equal(extent[1], lo)


@pytest.mark.parametrize("shape, axis, fixed", [
    ((3, 2, 4, 5), 1, False), ((3, 2, 4, 5), 1, True), ((4, 6, 3), 2, False), ((5, 3), 1, False),
], ids=["nchw-fed-shift", "nchw-fixed-shift", "tokens", "features"])
def test_site_reductions_equal_numpy_and_leave_the_model_as_it_was(shape, axis, fixed):
    model = relu_model(list(shape))
    before = serialized(model)
    x = (np.random.default_rng(0).standard_normal(shape) * 2 + 1).astype(np.float32)
    site = np.maximum(x, 0)  # Relu: exact in float32
    channels = shape[axis]
    shift = np.linspace(0.3, 0.9, channels).astype(np.float32)
    target = (value(model, "site"), axis, len(shape))
    with reducing(model, [target], extent=True, fixed=[shift] if fixed else None) as (r,):
        feed = {"x": x}
        if r.shift is not None:
            feed[r.shift.name] = shift.reshape(r.shift_shape)
        outs = session(model).run(list(r.fetch_names), feed)
    terms = int(np.prod(shape[1:])) // channels + shape[0]
    assert_sums(r.host_sums(outs), site, axis, shift, terms)
    assert serialized(model) == before


@pytest.mark.parametrize("axis, fixed, words", [
    (0, None, "channel axis 0 is not in 1..3"),
    (2, [np.zeros(4, np.float32)], "a fixed shift needs channel axis 1"),
    (1, [np.zeros(4, np.float32), None], "2 fixed shifts for 1 targets"),
])
def test_site_reductions_refuse_what_they_cannot_reduce(axis, fixed, words):
    model = relu_model([2, 3, 4, 5])
    before = serialized(model)
    with pytest.raises(Exception, match=words):
        AddSiteReductionsPass([(value(model, "site"), axis, 4)], fixed=fixed)(model)
    assert serialized(model) == before


def test_reductions_inside_an_if_branch_count_only_the_branch_taken():
    model = if_model()
    before = serialized(model)
    with reducing(model, [(value(model, "doubled"), 1, 2)], extent=False, channels=[3]) as (r,):
        assert r.fetch is not None  # lifted out of the branch
        s = session(model)
        shift = np.full((1, 3), 0.5, np.float32).reshape(r.shift_shape)
        taken = r.host_sums(s.run(list(r.fetch_names), {"cond": np.array(True), "x": X, r.shift.name: shift}))
        skipped = r.host_sums(s.run(list(r.fetch_names), {"cond": np.array(False), "x": X, r.shift.name: shift}))
    assert_sums(taken, 2 * X, 1, np.full(3, 0.5, np.float32), terms=2)
    assert skipped[0] == 0 and not np.any(skipped[1]) and not np.any(skipped[2])
    assert serialized(model) == before
