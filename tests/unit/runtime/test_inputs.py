"""Models as other exporters write them: dynamic and legacy dims, several inputs, integer inputs,
control flow and fp16, each on a small hand-built graph against a float64 numpy reference."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from mstransform.core.stats import Stats

RNG = np.random.default_rng(0)
W = (RNG.standard_normal((4, 3, 3, 3)) * 0.4).astype(np.float32)
B = (RNG.standard_normal(4) * 0.2).astype(np.float32)


def _save(path, nodes, inputs, outputs, inits, opset=11, ir_version=6):
    graph = h.make_graph(nodes, "m", inputs, outputs, inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], producer_name="hand-built")
    model.ir_version = ir_version
    legacy = any(d.HasField("dim_value") and d.dim_value <= 0 for v in graph.input for d in v.type.tensor_type.shape.dim)
    onnx.checker.check_model(model, full_check=not legacy)  # strict inference reads -1 as a size
    onnx.save(model, str(path))
    return path


def conv_np(x: np.ndarray, w: np.ndarray = W, b: np.ndarray = B) -> np.ndarray:
    """3x3 convolution with padding 1 in float64 (the independent reference)."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    n, _, hh, ww = x.shape
    out = np.zeros((n, w.shape[0], hh - 2, ww - 2))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", x[:, :, i:i + hh - 2, j:j + ww - 2], w[:, :, i, j].astype(np.float64))
    return out + b.astype(np.float64)[None, :, None, None]


def check_stats(stats_path: Path, site_values: dict[str, np.ndarray]) -> None:
    """Each site's mean and variance against float64 numpy over all its values (channel axis 1)."""
    stats = Stats.load(stats_path)
    for name, x in site_values.items():
        st = stats.sites[name].moments
        flat = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
        np.testing.assert_allclose(st.mean, flat.mean(1), rtol=0, atol=1e-5 * flat.std(1).max())
        np.testing.assert_allclose(st.var, flat.var(1), rtol=1e-4)


# -- dynamic spatial dims that the network constrains (a detector needs multiples of 32) --------
def _detector(path, dims):
    """Conv -> Relu -> MaxPool 2x2 -> Upsample 2x -> Add to the pre-pool tensor: H and W must be even."""
    x = h.make_tensor_value_info("x", T.FLOAT, dims)
    y = h.make_tensor_value_info("y", T.FLOAT, [dims[0], 4, dims[2], dims[3]])
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["c"], ["r"]),
             h.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Resize", ["p", "roi", "scales"], ["u"], mode="nearest"),
             h.make_node("Add", ["u", "c"], ["y"])]
    inits = [nh.from_array(W, "w"), nh.from_array(B, "b"), nh.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             nh.from_array(np.zeros(0, np.float32), "roi")]
    return _save(path, nodes, [x], [y], inits)


@pytest.mark.parametrize("dims", [["N", 3, "H", "W"], [-1, 3, -1, -1], [0, 3, 0, 0], [None, 3, None, None]],
                         ids=["named", "minus-one", "zero", "unnamed"])
def test_dynamic_and_legacy_dims_calibrate_and_the_users_command_works(tmp_path, cli, dims):
    """Every non-positive or symbolic dim is dynamic; the self-check probes with the recorded sample shape
    (a probe with spatial size 1 fails in the MaxPool/Add, as on a real detector)."""
    model = _detector(tmp_path / "det.onnx", dims)
    x = RNG.standard_normal((16, 3, 48, 64)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    r = cli("calibrate", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "s.npz")
    assert r.code == 0, r.err
    check_stats(tmp_path / "s.npz", {next(iter(Stats.load(tmp_path / "s.npz").sites)): conv_np(x)})
    record = json.loads(str(np.load(tmp_path / "s.npz")["inputs"]))
    assert record == [{"name": "x", "dtype": "float32", "shape": [1, 3, 48, 64], "batch_axis": 0}]
    r = cli(model, "--stats", tmp_path / "s.npz", "--alpha", "0.2")  # the user's exact command
    assert r.code == 0, r.err
    assert "max |diff| = 0" in r.out and (tmp_path / "det.meansparse.onnx").exists()


def test_data_beside_stats_probes_on_real_samples(tmp_path, cli):
    model = _detector(tmp_path / "det.onnx", ["N", 3, "H", "W"])
    x = RNG.standard_normal((8, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    assert cli("calibrate", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "s.npz").code == 0
    r = cli(model, "--stats", tmp_path / "s.npz", "--data", tmp_path / "d.npz", "-o", tmp_path / "h.onnx")
    assert r.code == 0, r.err
    assert "1 operator(s) vs numpy reference, max |diff| = 0" in r.out


def test_a_probe_the_model_rejects_is_one_line_naming_the_step(tmp_path, cli):
    model = _detector(tmp_path / "det.onnx", ["N", 3, "H", "W"])
    np.savez(tmp_path / "d.npz", x=RNG.standard_normal((8, 3, 32, 32)).astype(np.float32))
    np.savez(tmp_path / "odd.npz", x=RNG.standard_normal((2, 3, 33, 33)).astype(np.float32))
    assert cli("calibrate", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "s.npz").code == 0
    r = cli(model, "--stats", tmp_path / "s.npz", "--data", tmp_path / "odd.npz", "-o", tmp_path / "h.onnx")
    lines = r.err.strip().splitlines()
    assert r.code == 7 and len(lines) == 1 and "self-check" in lines[0] and "ONNX Runtime failed" in lines[0], r.err
    assert not (tmp_path / "h.onnx").exists()


# -- several inputs: a state with its batch axis second, a scalar sample rate ------------------
def _vad(path):
    """y = Relu(Gemm(input) * sr/16000 + Sum(state over its first axis)), like a streaming detector's step."""
    inp = h.make_tensor_value_info("input", T.FLOAT, ["batch", 6])
    state = h.make_tensor_value_info("state", T.FLOAT, [2, "batch", 4])
    sr = h.make_tensor_value_info("sr", T.INT64, [])
    y = h.make_tensor_value_info("y", T.FLOAT, ["batch", 4])
    nodes = [h.make_node("Gemm", ["input", "w", "b"], ["g"], transB=1),
             h.make_node("Cast", ["sr"], ["srf"], to=T.FLOAT), h.make_node("Div", ["srf", "k"], ["ratio"]),
             h.make_node("Mul", ["g", "ratio"], ["gs"]),
             h.make_node("ReduceSum", ["state"], ["st"], axes=[0], keepdims=0),
             h.make_node("Add", ["gs", "st"], ["pre"]), h.make_node("Relu", ["pre"], ["y"])]
    inits = [nh.from_array(WG, "w"), nh.from_array(BG, "b"), nh.from_array(np.array(16000, np.float32), "k")]
    return _save(path, nodes, [inp, state, sr], [y], inits)


WG = (RNG.standard_normal((4, 6)) * 0.5).astype(np.float32)
BG = (RNG.standard_normal(4) * 0.1).astype(np.float32)


def _vad_reference(inp, state, sr):
    return (inp.astype(np.float64) @ WG.T.astype(np.float64) + BG) * (float(sr) / 16000) + state.astype(np.float64).sum(0)


def test_several_inputs_non_first_batch_axis_and_an_unscaled_integer_scalar(tmp_path, cli):
    model = _vad(tmp_path / "vad.onnx")
    inp = RNG.standard_normal((32, 6)).astype(np.float32)
    state = RNG.standard_normal((2, 32, 4)).astype(np.float32)
    sr = np.array(8000, np.int64)  # scaled by 1/255 and cast back it would become 31
    np.savez(tmp_path / "d.npz", input=inp, state=state, sr=sr)
    r = cli("calibrate", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "s.npz", "--batch-size", "5")
    assert r.code == 0, r.err
    stats = Stats.load(tmp_path / "s.npz")
    assert [(i.name, i.batch_axis) for i in stats.inputs] == [("input", 0), ("state", 1), ("sr", None)]
    assert stats.inputs[2].value.item() == 8000
    check_stats(tmp_path / "s.npz", {next(iter(stats.sites)): _vad_reference(inp, state, sr)})
    r = cli(model, "--stats", tmp_path / "s.npz", "--alpha", "0.3")
    assert r.code == 0 and "max |diff| = 0" in r.out, r.err


def test_batch_axis_given_by_the_user(tmp_path, cli):
    model = _vad(tmp_path / "vad.onnx")
    inp, state = RNG.standard_normal((8, 6)).astype(np.float32), RNG.standard_normal((2, 8, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", input=inp, state=state, sr=np.array(16000))
    r = cli("calibrate", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "s.npz", "--batch-axis", "state=0")
    assert r.code == 5 and "different sample counts" in r.err and "--batch-axis" in r.err
    r = cli("calibrate", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "s.npz", "--batch-axis", "nope=0")
    assert r.code == 2 and "unknown input 'nope'" in r.err


def test_batches_formed_by_the_user_pass_through_untouched(tmp_path):
    import mstransform as mst

    path = _vad(tmp_path / "vad.onnx")
    batches = [{"input": RNG.standard_normal((4, 6)).astype(np.float32),
                "state": RNG.standard_normal((2, 4, 4)).astype(np.float32), "sr": np.array(16000)}
               for _ in range(3)]
    stats = mst.calibrate(path, iter(batches), progress=False)
    ref = np.concatenate([_vad_reference(b["input"], b["state"], 16000) for b in batches])
    st = next(iter(stats.sites.values())).moments
    np.testing.assert_allclose(st.mean, ref.mean(0), atol=1e-5)
    np.testing.assert_allclose(st.var, ref.var(0), rtol=1e-4)


def test_integer_image_model_input_is_not_scaled(tmp_path, cli):
    """A model that takes uint8 pixels and scales them itself gets them as they are."""
    x = h.make_tensor_value_info("x", T.UINT8, ["N", 3, 8, 8])
    y = h.make_tensor_value_info("y", T.FLOAT, ["N", 4, 8, 8])
    nodes = [h.make_node("Cast", ["x"], ["xf"], to=T.FLOAT), h.make_node("Mul", ["xf", "s"], ["xs"]),
             h.make_node("Conv", ["xs", "w", "b"], ["c"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["c"], ["y"])]
    model = _save(tmp_path / "u8.onnx", nodes, [x], [y],
                  [nh.from_array(W, "w"), nh.from_array(B, "b"), nh.from_array(np.array(1 / 255, np.float32), "s")])
    pixels = RNG.integers(0, 256, (10, 3, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=pixels)
    assert cli("calibrate", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "s.npz").code == 0
    site = next(iter(Stats.load(tmp_path / "s.npz").sites))
    check_stats(tmp_path / "s.npz", {site: conv_np(pixels.astype(np.float32) * np.float32(1 / 255))})


# -- control flow ----------------------------------------------------------------------------------
def _branch(tag, w):
    nodes = [h.make_node("Conv", ["x", f"w{tag}", "b"], [f"c{tag}"], pads=[1, 1, 1, 1], name=f"conv_{tag}"),
             h.make_node("Relu", [f"c{tag}"], [f"r{tag}"], name="relu"),
             h.make_node("ReduceMean", [f"r{tag}"], [f"o{tag}"], axes=[2, 3], keepdims=0)]
    return h.make_graph(nodes, tag, [], [h.make_tensor_value_info(f"o{tag}", T.FLOAT, ["N", 4])])


def _if_model(path):
    x = h.make_tensor_value_info("x", T.FLOAT, ["N", 3, 8, 8])
    sr = h.make_tensor_value_info("sr", T.INT64, [])
    y = h.make_tensor_value_info("y", T.FLOAT, ["N", 4])
    nodes = [h.make_node("Equal", ["sr", "k"], ["is16k"]),
             h.make_node("If", ["is16k"], ["y"], then_branch=_branch("a", W), else_branch=_branch("b", W), name="If_0")]
    inits = [nh.from_array(W, "wa"), nh.from_array(-W, "wb"), nh.from_array(B, "b"),
             nh.from_array(np.array(16000, np.int64), "k")]
    return _save(path, nodes, [x, sr], [y], inits)


def test_sites_inside_if_branches_are_found_calibrated_and_hardened(tmp_path, cli):
    model = _if_model(tmp_path / "if.onnx")
    r = cli("sites", model)
    assert r.code == 0 and "2 site(s)" in r.out and "If_0:then_branch/relu" in r.out and "If_0:else_branch" in r.out
    x = RNG.standard_normal((12, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, sr=np.array(16000))
    r = cli("calibrate", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "s.npz", "--batch-size", "5")
    assert r.code == 0 and "1 site(s) inside branches or loops that no sample reached" in r.err, r.err
    stats = Stats.load(tmp_path / "s.npz")
    assert list(stats.sites) == ["If_0:then_branch/relu"] and stats.unreached == ("If_0:else_branch/relu",)
    check_stats(tmp_path / "s.npz", {"If_0:then_branch/relu": conv_np(x)})
    r = cli(model, "--stats", tmp_path / "s.npz", "--alpha", "0.5", "-o", tmp_path / "h.onnx")
    assert r.code == 0 and "inserted 1 sparsify" in r.out and "max |diff| = 0" in r.out, r.err
    # the hardened branch against the paper's operator on numpy's convolution
    import onnxruntime as ort

    st = stats.sites["If_0:then_branch/relu"].moments
    c, t = st.mean.astype(np.float32), (0.5 * np.sqrt(st.var)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "h.onnx")).run(None, {"x": x, "sr": np.array(16000)})[0]
    conv = conv_np(x).astype(np.float32)
    sp = np.where(np.abs(conv - c[None, :, None, None]) < t[None, :, None, None], c[None, :, None, None], conv)
    np.testing.assert_allclose(got, np.maximum(sp, 0).mean(axis=(2, 3)), atol=1e-5)
    # the other branch is untouched
    other = ort.InferenceSession(str(tmp_path / "h.onnx")).run(None, {"x": x, "sr": np.array(8000)})[0]
    np.testing.assert_allclose(other, np.maximum(conv_np(x, -W), 0).mean(axis=(2, 3)), atol=1e-5)


def test_sites_inside_a_loop_body_count_every_iteration(tmp_path, cli):
    body = h.make_graph([h.make_node("Identity", ["cond_in"], ["cond_out"]),
                         h.make_node("Conv", ["xin", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                         h.make_node("Relu", ["c"], ["xout"], name="relu")], "body",
                        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cond_in", T.BOOL, []),
                         h.make_tensor_value_info("xin", T.FLOAT, ["N", 4, 8, 8])],
                        [h.make_tensor_value_info("cond_out", T.BOOL, []),
                         h.make_tensor_value_info("xout", T.FLOAT, ["N", 4, 8, 8])])
    w4 = (RNG.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32)
    x = h.make_tensor_value_info("x", T.FLOAT, [-1, 4, 8, 8])
    y = h.make_tensor_value_info("y", T.FLOAT, [-1, 4, 8, 8])
    model = _save(tmp_path / "loop.onnx", [h.make_node("Loop", ["n", "t", "x"], ["y"], body=body, name="Loop_0")],
                  [x], [y], [nh.from_array(w4, "w"), nh.from_array(B, "b"), nh.from_array(np.array(3, np.int64), "n"),
                             nh.from_array(np.array(True), "t")], opset=13, ir_version=7)
    data = RNG.standard_normal((10, 4, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=data)
    assert cli("calibrate", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "s.npz").code == 0
    seen, cur = [], data
    for _ in range(3):
        c = conv_np(cur, w4)
        seen.append(c)
        cur = np.maximum(c, 0)
    check_stats(tmp_path / "s.npz", {"Loop_0:body/relu": np.concatenate(seen)})
    r = cli(model, "--stats", tmp_path / "s.npz", "-o", tmp_path / "h.onnx")
    assert r.code == 0 and "max |diff| = 0" in r.out, r.err


def test_fp16_model_calibrates_and_hardens(tmp_path, cli):
    x = h.make_tensor_value_info("x", T.FLOAT16, ["N", 3, "H", "W"])
    y = h.make_tensor_value_info("y", T.FLOAT16, ["N", 4, "H", "W"])
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["c"], ["y"])]
    model = _save(tmp_path / "half.onnx", nodes, [x], [y],
                  [nh.from_array(W.astype(np.float16), "w"), nh.from_array(B.astype(np.float16), "b")], opset=13)
    data = RNG.standard_normal((10, 3, 16, 16)).astype(np.float16)
    np.savez(tmp_path / "d.npz", x=data)
    assert cli("calibrate", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "s.npz").code == 0
    stats = Stats.load(tmp_path / "s.npz")
    site = next(iter(stats.sites.values()))
    assert site.dtype == "float16" and stats.inputs[0].dtype == "float16"
    ref = conv_np(data.astype(np.float32), W.astype(np.float16).astype(np.float32), B.astype(np.float16).astype(np.float32))
    flat = np.moveaxis(ref, 1, 0).reshape(4, -1)
    # fp16 site values: the calibration sees values rounded to fp16 (relative error 2^-11)
    np.testing.assert_allclose(site.moments.mean, flat.mean(1), atol=2e-3 * flat.std(1).max())
    r = cli(model, "--stats", tmp_path / "s.npz")
    assert r.code == 0 and "numerics: 1 operator(s)" in r.out, r.err


def test_sites_inside_a_scan_body_count_every_step(tmp_path, cli):
    """A recurrent cell as a Scan over the sequence axis (scan_output_axes given): h_t = Relu(x_t W + h_{t-1})."""
    w = (RNG.standard_normal((4, 4)) * 0.5).astype(np.float32)
    body = h.make_graph([h.make_node("MatMul", ["xt", "w"], ["m"], name="mm"),
                         h.make_node("Add", ["m", "s"], ["a"], name="add"),
                         h.make_node("Relu", ["a"], ["hh"], name="relu"),
                         h.make_node("Identity", ["hh"], ["s_out"]), h.make_node("Identity", ["hh"], ["y_t"])], "body",
                        [h.make_tensor_value_info("s", T.FLOAT, ["N", 4]), h.make_tensor_value_info("xt", T.FLOAT, ["N", 4])],
                        [h.make_tensor_value_info("s_out", T.FLOAT, ["N", 4]),
                         h.make_tensor_value_info("y_t", T.FLOAT, ["N", 4])])
    scan = h.make_node("Scan", ["s0", "x"], ["sf", "y"], body=body, num_scan_inputs=1, scan_input_axes=[1],
                       scan_output_axes=[1], name="Scan_0")
    model = _save(tmp_path / "scan.onnx", [scan],
                  [h.make_tensor_value_info("s0", T.FLOAT, ["N", 4]), h.make_tensor_value_info("x", T.FLOAT, ["N", 5, 4])],
                  [h.make_tensor_value_info("sf", T.FLOAT, ["N", 4]), h.make_tensor_value_info("y", T.FLOAT, ["N", 5, 4])],
                  [nh.from_array(w, "w")], opset=16, ir_version=8)
    x = RNG.standard_normal((6, 5, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, s0=np.zeros((6, 4), np.float32))
    assert cli("calibrate", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "s.npz").code == 0
    state, pre = np.zeros((6, 4)), []
    for t in range(5):  # the recurrence in float64: the Relu's input at every step
        a = x[:, t].astype(np.float64) @ w.astype(np.float64) + state
        pre.append(a)
        state = np.maximum(a, 0)
    stats = Stats.load(tmp_path / "s.npz")
    st = stats.sites["Scan_0:body/relu"].moments
    flat = np.concatenate(pre)  # (steps * N, C): channel axis 1 of each step's (N, C)
    assert st.count == 30
    np.testing.assert_allclose(st.mean, flat.mean(0), atol=1e-5 * flat.std(0).max())
    np.testing.assert_allclose(st.var, flat.var(0), rtol=1e-4)
    r = cli(model, "--stats", tmp_path / "s.npz", "-o", tmp_path / "h.onnx")
    assert r.code == 0 and "1 operator(s) vs numpy reference, max |diff| = 0" in r.out, r.err
