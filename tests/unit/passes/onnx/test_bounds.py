"""What CPU runtimes make of each formulation, and that every formulation computes the ``where`` form.

* the ``bounds`` form's per-channel bounds decide exactly like ``|x - c| < t`` in the site's type,
  checked on the floats next to each bound (numpy's own subtraction is the reference);
* every formulation's hardened model gives the ``where`` model's outputs bit for bit, on the zoo
  models, in ONNX Runtime and OpenVINO (dynamic and static shapes), and on inputs placed on the
  band's edges;
* runtime graphs (docs/cpu-layout.md), counted from the runtimes themselves, fail when a
  formulation regresses: OpenVINO's runtime model (Reorder on activations, Eltwise, Subgraph,
  operator nodes fused into a Convolution) and ONNX Runtime's optimized graph (NCHWc reorders).
  Counts, not timings: they are deterministic for the pinned runtime versions.
"""
from __future__ import annotations

import collections
import contextlib
import io

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from helpers import exported, random_inputs

import mstransform as mst
import zoo
from mstransform.passes.onnx.bounds import bounds_threshold, exclusive_bounds
from mstransform.passes.onnx.recognise import find_sparsify_ops
from mstransform.runtime.openvino_session import layer_counts

NEW = ["bounds"]  # formulations that must equal ``where`` bit for bit


def _dtypes():
    import ml_dtypes

    return [np.float32, np.float16, ml_dtypes.bfloat16, np.float64]


def _neighbours(values: np.ndarray, dtype, steps=(-2, -1, 0, 1, 2)) -> list[np.ndarray]:
    """The floats ``steps`` positions away from each finite value (by bit pattern; same sign side)."""
    dtype = np.dtype(dtype)
    uint = np.dtype(f"u{dtype.itemsize}")
    out = []
    finite = np.isfinite(values.astype(np.float64))
    base = np.where(finite, values, np.zeros((), dtype)).astype(dtype)
    for s in steps:
        bits = base.view(uint).astype(np.int64)
        # away from zero for positive steps on positive values, towards it on negative ones
        moved = np.where(np.signbit(base.astype(np.float64)), bits - s, bits + s)
        moved = np.clip(moved, 0, None).astype(uint).view(dtype)
        out.append(np.where(np.isfinite(moved.astype(np.float64)), moved, base).astype(dtype))
    return out


@pytest.mark.parametrize("dtype", _dtypes(), ids=lambda d: np.dtype(d).name)
def test_bounds_decide_like_the_operator(dtype):
    rng = np.random.default_rng(3)
    n = 64
    c = rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3, n)
    t = np.abs(rng.standard_normal(n)) * 10.0 ** rng.uniform(-5, 1, n)
    c[:6], t[:6] = [0.0, 1.0, np.inf, np.nan, 2.0, -0.0], [0.5, 0.0, 1.0, 1.0, -1.0, np.inf]
    c, t = c.astype(dtype), t.astype(dtype)
    low, high = exclusive_bounds(c, t, dtype)
    probes = [(c.astype(np.float64) + t.astype(np.float64) * rng.uniform(-2, 2, (32, n))).astype(dtype)]
    for edge in (low, high, c):
        probes += [p[None] for p in _neighbours(edge, dtype)]
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dtype=np.float64).astype(dtype)
    probes.append(np.repeat(specials[:, None], n, axis=1))
    x = np.concatenate(probes).astype(dtype)
    with np.errstate(all="ignore"):
        ref = np.abs(x - c) < t  # the operator's decision, numpy in the site's type
        got = (x > low) & (x < high)
    assert ref.any() and (~ref).any()
    np.testing.assert_array_equal(got, ref)
    # the bounds are tight: the float just inside each bound is inside, the bound itself is not
    inside = np.isfinite(low.astype(np.float64)) & np.isfinite(high.astype(np.float64)) & (low < high)
    assert inside.sum() > n // 2
    with np.errstate(all="ignore"):
        assert not np.any((np.abs(low - c) < t)[inside]) and not np.any((np.abs(high - c) < t)[inside])
    # the threshold the matcher reports makes the same decisions and the same bounds
    t2 = bounds_threshold(c, low, high)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(np.abs(x - c) < t2, ref)
    again = exclusive_bounds(c, t2, dtype)
    assert np.array_equal(again[0], low) and np.array_equal(again[1], high)


# ------------------------------------------------------------------ outputs equal to ``where``

def _ov_static(path, shape):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({model.inputs[0].get_any_name(): list(shape)})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2})
    return lambda x: compiled.create_infer_request().infer({0: x})[compiled.outputs[0]]


def _runners(path, shape):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    runners = {"onnxruntime": lambda x: s.run(None, {s.get_inputs()[0].name: x})[0]}
    with contextlib.suppress(ImportError):
        import openvino  # noqa: F401

        from mstransform.runtime.openvino_session import OpenVinoSession

        o = OpenVinoSession(path, threads=2)
        runners["openvino"] = lambda x: o.run(None, {"input": x})[0]
        runners["openvino static"] = _ov_static(path, shape)
    return runners


@pytest.fixture(scope="module")
def stats_cache():
    return {}


def _stats(name, label, export_dir, cache):
    if (name, label) not in cache:
        data = {"input": random_inputs(name, 32, seed=1)}
        cache[name, label] = mst.calibrate(exported(name, label, export_dir), data, batch_size=16, progress=False)
    return cache[name, label]


@pytest.mark.parametrize("form", NEW)
@pytest.mark.parametrize("name,label", [(n, "legacy-17-folded") for n in zoo.EXPECTED]
                         + [("resnet", "dynamo-18-folded"), ("mobilenet", "legacy-17-bn")])
def test_formulation_outputs_equal_where(form, name, label, export_dir, tmp_path, stats_cache):
    path = exported(name, label, export_dir)
    stats = _stats(name, label, export_dir, stats_cache)
    files = {f: tmp_path / f"{f}.onnx" for f in ("where", form)}
    for f, out in files.items():
        mst.harden(path, stats, alpha=0.5, output=out, formulation=f)
    m = ir.load(str(files[form]))
    assert m.metadata_props["mstransform.formulation"] == form
    assert len(find_sparsify_ops(m.graph)) == len(stats)
    inserted = collections.Counter(n.op_type for n in m.graph if n.name.startswith("mstransform/"))
    if form == "bounds":  # two comparisons of x itself, no float intermediate
        assert inserted == {op: len(stats) for op in ("Greater", "Less", "And", "Where")}
    x = random_inputs(name, 5, seed=11)
    base = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = {f: {rt: run(x) for rt, run in _runners(p, x.shape).items()} for f, p in files.items()}
    for rt, ref in got["where"].items():
        assert not np.array_equal(ref, base)  # the operators moved the output: equality below is not vacuous
        np.testing.assert_array_equal(got[form][rt], ref, err_msg=f"{form} vs where on {rt}")


@pytest.mark.parametrize("form", NEW)
def test_formulation_equals_where_on_the_band_edges(form, tmp_path):
    """A model whose site is its own input (a ReLU): the input is set to the floats on either side
    of every channel's bounds, so each decision at the edge is exercised in each runtime."""
    import torch

    path = tmp_path / "relu.onnx"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(torch.nn.ReLU(), (torch.zeros(2, 16, 4, 4),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    rng = np.random.default_rng(2)
    scale = 10.0 ** rng.uniform(-2, 2, 16)
    calib = (rng.standard_normal((32, 16, 4, 4)) * scale[:, None, None] + rng.standard_normal(16)[:, None, None])
    stats = mst.calibrate(path, {"input": calib.astype(np.float32)}, progress=False)
    files = {f: tmp_path / f"{f}.onnx" for f in ("where", form)}
    for f, out in files.items():
        mst.harden(path, stats, alpha=0.7, output=out, formulation=f)
    (op,) = find_sparsify_ops(ir.load(str(files["where"])).graph)
    c, t = op.center.reshape(-1), op.threshold.reshape(-1)
    low, high = exclusive_bounds(c, t, np.float32)
    values = np.stack(_neighbours(low, np.float32) + _neighbours(high, np.float32) + _neighbours(c, np.float32))
    x = np.broadcast_to(values[:, :, None, None], (len(values), 16, 4, 4)).astype(np.float32).copy()
    with np.errstate(all="ignore"):
        ref = np.maximum(np.where(np.abs(x - c[:, None, None]) < t[:, None, None], c[:, None, None], x), 0)
    moved = np.abs(x - c[:, None, None]) < t[:, None, None]
    assert moved.any() and (~moved).any()
    for f, p in files.items():
        for rt, run in _runners(p, x.shape).items():
            np.testing.assert_array_equal(run(x), ref, err_msg=f"{f} on {rt}")


def test_matcher_refuses_bounds_no_threshold_makes(tmp_path, export_dir, stats_cache):
    path = exported("resnet", "legacy-17-folded", export_dir)
    out = tmp_path / "b.onnx"
    mst.harden(path, _stats("resnet", "legacy-17-folded", export_dir, stats_cache), alpha=0.5, output=out,
               formulation="bounds")
    m = ir.load(str(out))
    n = len(find_sparsify_ops(m.graph))
    low = next(v for k, v in m.graph.initializers.items() if k.endswith("/low"))
    arr = low.const_value.numpy().copy()
    center = m.graph.initializers[low.name[: -len("/low")] + "/center"].const_value.numpy()
    arr.flat[0] = center.flat[0] - 4 * (center.flat[0] - arr.flat[0])  # an asymmetric band: not the operator
    low.const_value = ir.tensor(arr, name=low.name)
    assert len(find_sparsify_ops(m.graph)) == n - 1


def test_bounds_in_fp16_verifies_and_keeps_the_type(tmp_path, export_dir, stats_cache):
    path = exported("resnet", "legacy-17-folded", export_dir)
    out = tmp_path / "h16.onnx"
    report = mst.harden(path, _stats("resnet", "legacy-17-folded", export_dir, stats_cache), alpha=0.4, output=out,
                        formulation="bounds", precision="fp16")
    assert any(c.startswith("numerics:") for c in report.checks)
    ops = find_sparsify_ops(ir.load(str(out)).graph)
    assert len(ops) == 5 and all(op.center.dtype == np.float16 for op in ops)


# ------------------------------------------------------------------ runtime graphs

@pytest.fixture(scope="module")
def wide_resnet(tmp_path_factory):
    """The zoo's ResNet at 16 channels (ONNX Runtime's NCHWc needs multiples of 16), every formulation."""
    d = tmp_path_factory.mktemp("layout")
    path = d / "base.onnx"
    model = zoo.ResNetCNN(c=16).eval()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        zoo.export(_with_bn_stats(model), "resnet", path, dynamo=False, opset=17)
    stats = mst.calibrate(path, {"input": random_inputs("resnet", 16, seed=1)}, progress=False)
    files = {"base": path}
    for f in ("where", "float", *NEW):
        files[f] = d / f"{f}.onnx"
        mst.harden(path, stats, alpha=0.3, output=files[f], formulation=f)
    return files, len(stats)


def _with_bn_stats(model):
    import torch

    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def ov_counts(path, shape=None) -> collections.Counter:
    openvino = pytest.importorskip("openvino")
    core = openvino.Core()
    model = core.read_model(str(path))
    if shape is not None:
        model.reshape({model.inputs[0].get_any_name(): list(shape)})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2})
    return layer_counts(compiled)


# per formulation: (Eltwise kernels per site with the batch dynamic, activation Reorders more than
# the base at a static shape: one same-layout copy between the last Convolution with a fused residual
# sum and its site's Subgraph); docs/cpu-layout.md explains each number from OpenVINO's code
OV_EXPECTED = {"where": (2, 1), "bounds": (3, 1)}


@pytest.mark.parametrize("form", ["where", *NEW])
def test_openvino_runtime_graph(form, wide_resnet):
    files, sites = wide_resnet
    eltwise_per_site, extra_static = OV_EXPECTED[form]
    base, hard = ov_counts(files["base"]), ov_counts(files[form])
    # the file as it is (batch dynamic): no layout conversion on activations, a fixed number of
    # Eltwise kernels per site (FuseEltwiseAndSimple stops where x is read a second time)
    assert hard["Reorder"] == base["Reorder"]
    assert hard["Eltwise"] <= eltwise_per_site * sites and hard["Subgraph"] == 0
    assert hard["Reorder(const)"] <= 3 * sites  # constants reordered once, at load
    assert hard["Convolution"] == base["Convolution"] and hard["fused"] == 0
    # at a static shape Snippets take each site, with its activation, into one Subgraph
    shape = (4, *zoo.INPUT_SHAPES["resnet"])
    base_s, hard_s = ov_counts(files["base"], shape), ov_counts(files[form], shape)
    assert hard_s["Subgraph"] == sites and hard_s["Eltwise"] == 0
    assert hard_s["Reorder"] <= base_s["Reorder"] + extra_static


def test_openvino_float_form_converts_layouts(wide_resnet):
    """The bool-free form is the one that costs activation reorders in OpenVINO (why it is slow there)."""
    files, sites = wide_resnet
    assert ov_counts(files["float"])["Reorder"] >= ov_counts(files["base"])["Reorder"] + sites


def ort_counts(path, tmp_path) -> collections.Counter:
    import onnx

    o = ort.SessionOptions()
    o.log_severity_level = 3
    o.optimized_model_filepath = str(tmp_path / (path.stem + ".opt.onnx"))
    ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    counts = collections.Counter()
    for n in onnx.load(o.optimized_model_filepath).graph.node:
        counts[n.op_type] += 1
        counts["activation"] += any(a.name == "activation" for a in n.attribute)
    return counts


@pytest.mark.parametrize("form", ["where", *NEW])
def test_onnxruntime_graph(form, wide_resnet, tmp_path):
    """ONNX Runtime keeps only its own op list in NCHWc (nchwc_transformer.cc): each site costs
    one ReorderOutput and at most one ReorderInput, never more, and the Conv+activation fusions
    at the sites are lost (the Conv output has two readers)."""
    files, sites = wide_resnet
    base, hard = ort_counts(files["base"], tmp_path), ort_counts(files[form], tmp_path)
    assert base["ReorderInput"] + base["ReorderOutput"] <= 2  # the base stays in NCHWc
    assert hard["ReorderOutput"] <= base["ReorderOutput"] + sites
    assert hard["ReorderInput"] <= base["ReorderInput"] + sites
    assert hard["Conv"] == base["Conv"]
    assert hard["activation"] <= base["activation"]
