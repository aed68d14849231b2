"""`mstransform run` on any model: every output written (`-o OUT.npz`), joined along its own batch axis;
predictions and accuracy only where the first output holds class scores (on the shipped example: the
provider it ran on, the accuracy, the predictions file).

Each reference is ONNX Runtime run here, directly, on the same batches of the same data; the joining
along each output's batch axis and the accuracy are numpy's."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnxruntime as ort
import pytest
from helpers import EXAMPLE, run_cli

import mstransform as mst

F = onnx.TensorProto.FLOAT
# float32 products of a few dozen terms, run by two sessions on equal batches: a bound with room for
# another summation order, far below any difference a wrong join or a wrong batch would make
CLOSE = {"rtol": 1e-5, "atol": 1e-6}


def _close(got: np.ndarray, want: np.ndarray, **tolerance) -> None:
    """``got`` has ``want``'s type and shape, and its values within ``tolerance`` (CLOSE by default)."""
    assert (got.dtype, got.shape) == (want.dtype, want.shape)
    np.testing.assert_allclose(got, want, **(tolerance or CLOSE))


def _model(path, nodes, inputs, outputs, consts, opset=17):
    """An ONNX model from helper nodes; ``inputs``/``outputs``: (name, element type, shape or None)."""
    def info(name, dtype, shape):
        return oh.make_tensor_value_info(name, dtype, shape)

    graph = oh.make_graph(nodes, "m", [info(*v) for v in inputs], [info(*v) for v in outputs],
                          [onh.from_array(np.asarray(a), n) for n, a in consts.items()])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _reference(path, name: str, x: np.ndarray, batch: int) -> list[dict[str, np.ndarray]]:
    """ONNX Runtime's outputs on each batch of ``x`` (samples along axis 0), one dict per batch."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(None, {name: x[i:i + batch]}))) for i in range(0, len(x), batch)]


def _detector(tmp_path, rng):
    """boxes [N, 7, 4] and scores [N, 7] from one image, and an anchor table [7, 4] with no batch axis."""
    consts = {"wb": rng.standard_normal((192, 28)).astype(np.float32) * 0.1,
              "ws": rng.standard_normal((192, 7)).astype(np.float32) * 0.1,
              "box_shape": np.array([-1, 7, 4], np.int64),
              "anchor_table": rng.standard_normal((7, 4)).astype(np.float32)}
    nodes = [oh.make_node("Flatten", ["images"], ["flat"]),
             oh.make_node("MatMul", ["flat", "wb"], ["b"]), oh.make_node("Reshape", ["b", "box_shape"], ["boxes"]),
             oh.make_node("MatMul", ["flat", "ws"], ["s"]), oh.make_node("Sigmoid", ["s"], ["scores"]),
             oh.make_node("Identity", ["anchor_table"], ["anchors"])]
    path = _model(tmp_path / "det.onnx", nodes, [("images", F, ["N", 3, 8, 8])],
                  [("boxes", F, ["N", 7, 4]), ("scores", F, ["N", 7]), ("anchors", F, [7, 4])], consts)
    return path, consts["anchor_table"]


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_detector_outputs_of_two_ranks_and_a_table(tmp_path):
    rng = np.random.default_rng(0)
    model, anchors = _detector(tmp_path, rng)
    x = rng.standard_normal((20, 3, 8, 8)).astype(np.float32)
    data = _npz(tmp_path / "d.npz", images=x, labels=rng.integers(0, 7, 20))
    r = run_cli("run", model, "--data", data, "--batch-size", "8", "-o", tmp_path / "out.npz")
    assert r.code == 0, r.err
    ref = _reference(model, "images", x, 8)
    with np.load(tmp_path / "out.npz", allow_pickle=False) as got:
        assert list(got.files) == ["boxes", "scores", "anchors"]
        _close(got["boxes"], np.concatenate([b["boxes"] for b in ref]))
        _close(got["scores"], np.concatenate([b["scores"] for b in ref]))
        _close(got["anchors"], anchors, rtol=0, atol=0)
        assert got["boxes"].shape == (20, 7, 4)
    assert "outputs for 20 sample(s)" in r.out and "accuracy" not in r.out and "predictions" not in r.out
    result = mst.run(model, data, batch_size=8)  # the command prints the result's format(), then what it wrote
    assert r.out.splitlines()[:2] == result.format().splitlines()
    assert result.format().splitlines()[1] == ("outputs for 20 sample(s): boxes [20,7,4] float32 (batch axis 0), "
                                               "scores [20,7] float32 (batch axis 0), anchors [7,4] float32 "
                                               "(no batch axis)")
    err = r.err.splitlines()
    assert any(line.startswith("note: output 'anchors'") and "no batch axis" in line and "later" not in line
               for line in err), r.err
    assert any(line.startswith("mstransform: warning:") and "labels" in line and "'boxes'" in line
               for line in err), r.err


def test_predictions_file_refused_where_there_are_no_class_scores(tmp_path):
    rng = np.random.default_rng(1)
    model, _ = _detector(tmp_path, rng)
    data = _npz(tmp_path / "d.npz", images=rng.standard_normal((4, 3, 8, 8)).astype(np.float32))
    old = tmp_path / "p.npy"
    old.write_bytes(b"an earlier file")
    r = run_cli("run", model, "--data", data, "-o", old)
    assert r.code == 2 and r.err.count("\n") == 1 and "-o" in r.err and ".npz" in r.err, r.err
    assert old.read_bytes() == b"an earlier file"


def test_embedding_model(tmp_path):
    rng = np.random.default_rng(2)
    consts = {"w": rng.standard_normal((16, 128)).astype(np.float32), "bias": rng.standard_normal(128).astype(np.float32)}
    nodes = [oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("Add", ["h", "bias"], ["a"]),
             oh.make_node("Tanh", ["a"], ["embedding"])]
    model = _model(tmp_path / "emb.onnx", nodes, [("x", F, ["batch", 16])], [("embedding", F, ["batch", 128])],
                   consts)
    x = rng.standard_normal((30, 16)).astype(np.float32)
    data = _npz(tmp_path / "x.npz", x=x)
    r = run_cli("run", model, "--data", data, "--batch-size", "16", "-o", tmp_path / "e.npz")
    assert r.code == 0, r.err
    expected = np.concatenate([b["embedding"] for b in _reference(model, "x", x, 16)])
    with np.load(tmp_path / "e.npz", allow_pickle=False) as got:
        assert list(got.files) == ["embedding"]
        _close(got["embedding"], expected)
    result = mst.run(model, data, batch_size=16)  # the API gives the same arrays
    _close(result.outputs["embedding"], expected)
    assert result.output_axes == {"embedding": 0}


def _sequence_model(tmp_path, rng, declared: bool):
    """y [N, T, 6] with a dynamic non-batch dim T, the same sequence-first [T, N, 6] (its samples on axis 1),
    the indices of inputs above 0.5, [3, nnz] (a shape that depends on the data), and the mean over the
    batch [T, 4] (no batch axis; other values in every batch)."""
    consts = {"w": rng.standard_normal((4, 6)).astype(np.float32), "half": np.array(0.5, np.float32)}
    nodes = [oh.make_node("MatMul", ["x", "w"], ["y"]), oh.make_node("Transpose", ["y"], ["seq_first"], perm=[1, 0, 2]),
             oh.make_node("Greater", ["x", "half"], ["above"]), oh.make_node("NonZero", ["above"], ["hits"]),
             oh.make_node("ReduceMean", ["x"], ["batch_mean"], axes=[0], keepdims=0)]
    shapes = ({"y": ["N", "T", 6], "seq_first": ["T", "N", 6], "hits": [3, "nnz"], "batch_mean": ["T", 4]} if declared
              else {"y": [None] * 3, "seq_first": [None] * 3, "hits": [None] * 2,
                    "batch_mean": [None] * 2})  # unnamed dims: no names to go by
    outputs = [("y", F, shapes["y"]), ("seq_first", F, shapes["seq_first"]),
               ("hits", onnx.TensorProto.INT64, shapes["hits"]), ("batch_mean", F, shapes["batch_mean"])]
    return _model(tmp_path / "seq.onnx", nodes, [("x", F, ["N", "T", 4])], outputs, consts)


@pytest.mark.parametrize("declared,n,t", [(True, 8, 4), (True, 10, 5), (False, 10, 5)],
                         ids=["names, T equal to the batch", "names", "unnamed dims, a short last batch"])
def test_dynamic_non_batch_dim_and_a_sequence_first_output(tmp_path, declared, n, t):
    rng = np.random.default_rng(3)
    model = _sequence_model(tmp_path, rng, declared)
    x = rng.standard_normal((n, t, 4)).astype(np.float32)
    data = _npz(tmp_path / "x.npz", x=x)
    r = run_cli("run", model, "--data", data, "--batch-size", "4", "-o", tmp_path / "o.npz")
    assert r.code == 0, r.err
    ref = _reference(model, "x", x, 4)
    with np.load(tmp_path / "o.npz", allow_pickle=False) as got:
        _close(got["y"], np.concatenate([b["y"] for b in ref], axis=0))
        _close(got["seq_first"], np.concatenate([b["seq_first"] for b in ref], axis=1))
        _close(got["hits"], ref[0]["hits"], rtol=0, atol=0)
        _close(got["batch_mean"], ref[0]["batch_mean"])
    assert "seq_first [%d,%d,6] float32 (batch axis 1)" % (t, n) in r.out
    err = r.err.splitlines()
    assert any(line.startswith("note: output 'hits'") and ("changes shape between batches" in line
               or "later batches gave other values" in line) for line in err), r.err  # nnz may repeat
    assert any(line.startswith("note: output 'batch_mean'") and "no batch axis" in line
               and "later batches gave other values" in line for line in err), r.err


def _classifier(tmp_path, rng):
    consts = {"w1": rng.standard_normal((20, 16)).astype(np.float32), "b1": rng.standard_normal(16).astype(np.float32),
              "w2": rng.standard_normal((16, 5)).astype(np.float32)}
    nodes = [oh.make_node("Gemm", ["x", "w1", "b1"], ["h"]), oh.make_node("Relu", ["h"], ["features"]),
             oh.make_node("MatMul", ["features", "w2"], ["logits"])]
    return _model(tmp_path / "cls.onnx", nodes, [("x", F, ["N", 20])],
                  [("logits", F, ["N", 5]), ("features", F, ["N", 16])], consts)


def test_classifier_with_labels(tmp_path):
    rng = np.random.default_rng(4)
    model = _classifier(tmp_path, rng)
    x = rng.standard_normal((50, 20)).astype(np.float32)
    ref = _reference(model, "x", x, 16)
    logits = np.concatenate([b["logits"] for b in ref])
    labels = np.where(rng.random(50) < 0.6, logits.argmax(1), rng.integers(0, 5, 50))
    data = _npz(tmp_path / "d.npz", x=x, labels=labels)
    r = run_cli("run", model, "--data", data, "--batch-size", "16", "-o", tmp_path / "preds.npy")
    assert r.code == 0, r.err
    correct = int((logits.argmax(1) == labels).sum())
    assert r.out.splitlines()[1] == f"accuracy {100 * correct / 50:.2f}% ({correct}/50)"
    result = mst.run(model, data, batch_size=16)
    assert result.format() == "\n".join(r.out.splitlines()[:2])
    assert json.loads(json.dumps(result.to_dict()))["accuracy"] == {"correct": correct, "total": 50,
                                                                  "percent": 100 * correct / 50}
    np.testing.assert_array_equal(np.load(tmp_path / "preds.npy", allow_pickle=False), logits.argmax(1))
    r = run_cli("run", model, "--data", data, "--batch-size", "16", "-o", tmp_path / "out.npz")
    assert r.code == 0, r.err
    with np.load(tmp_path / "out.npz", allow_pickle=False) as got:
        assert list(got.files) == ["logits", "features"]
        _close(got["logits"], logits)
        _close(got["features"], np.concatenate([b["features"] for b in ref]))


def test_classifier_with_batch_one_baked_in(tmp_path):
    """A dynamic batch declared on the input, batch 1 baked into a Reshape (logits declared [1, 5]): run
    one sample at a time, the scores are still joined, predicted and scored."""
    rng = np.random.default_rng(6)
    consts = {"w": rng.standard_normal((20, 5)).astype(np.float32), "one_row": np.array([1, 5], np.int64)}
    nodes = [oh.make_node("MatMul", ["x", "w"], ["s"]), oh.make_node("Reshape", ["s", "one_row"], ["logits"])]
    model = _model(tmp_path / "b1.onnx", nodes, [("x", F, ["N", 20])], [("logits", F, [1, 5])], consts)
    x = rng.standard_normal((6, 20)).astype(np.float32)
    logits = np.concatenate([b["logits"] for b in _reference(model, "x", x, 1)])
    labels = np.array([logits[0].argmax(), logits[1].argmin(), *logits[2:].argmax(1)])
    data = _npz(tmp_path / "d.npz", x=x, labels=labels)
    r = run_cli("run", model, "--data", data, "--batch-size", "1", "-o", tmp_path / "out.npz")
    assert r.code == 0, r.err
    assert r.out.splitlines()[1] == "accuracy 83.33% (5/6)" and "note:" not in r.err, r.out + r.err
    with np.load(tmp_path / "out.npz", allow_pickle=False) as got:
        _close(got["logits"], logits)


def test_openvino_writes_the_same_outputs(tmp_path):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    rng = np.random.default_rng(5)
    model, anchors = _detector(tmp_path, rng)
    x = rng.standard_normal((20, 3, 8, 8)).astype(np.float32)
    data = _npz(tmp_path / "d.npz", images=x)
    r = run_cli("run", model, "--data", data, "--batch-size", "8", "--runtime", "openvino", "-o", tmp_path / "ov.npz")
    assert r.code == 0, r.err
    assert r.out.startswith("OpenVINO ")
    ref = _reference(model, "images", x, 8)
    with np.load(tmp_path / "ov.npz", allow_pickle=False) as got:
        assert list(got.files) == ["boxes", "scores", "anchors"]
        # another runtime's kernels: float32 sums of 192 terms in another order
        _close(got["boxes"], np.concatenate([b["boxes"] for b in ref]), rtol=1e-4, atol=1e-5)
        _close(got["scores"], np.concatenate([b["scores"] for b in ref]), rtol=1e-4, atol=1e-5)
        _close(got["anchors"], anchors, rtol=0, atol=0)
    seq = _sequence_model(tmp_path, rng, declared=False)
    xs = rng.standard_normal((10, 5, 4)).astype(np.float32)
    r = run_cli("run", seq, "--data", _npz(tmp_path / "s.npz", x=xs), "--batch-size", "4", "--runtime", "openvino",
                "-o", tmp_path / "ovs.npz")
    assert r.code == 0, r.err
    ref = _reference(seq, "x", xs, 4)
    with np.load(tmp_path / "ovs.npz", allow_pickle=False) as got:
        _close(got["seq_first"], np.concatenate([b["seq_first"] for b in ref], axis=1),
                                   rtol=1e-4, atol=1e-5)
        _close(got["hits"], ref[0]["hits"], rtol=0, atol=0)


# -- the classifier's predictions and accuracy on the shipped example ------------------------------------

def test_run_reports_cpu_and_accuracy(cli):
    r = cli("run", EXAMPLE / "model.onnx", "--data", EXAMPLE / "test.npz", "--limit", "500")
    assert r.code == 0, r.err
    first = r.out.splitlines()[0]
    assert first.startswith("ONNX Runtime ") and first.endswith(" on CPUExecutionProvider")  # why: under --verbose
    acc = float(r.out.split("accuracy ")[1].split("%")[0])
    assert 80 < acc <= 100


def test_run_writes_predictions(cli, tmp_path):
    out = tmp_path / "p.npy"
    r = cli("run", EXAMPLE / "model.onnx", "--data", EXAMPLE / "calib.npz", "--limit", "10", "-o", out)
    assert r.code == 0 and np.load(out, allow_pickle=False).shape == (10,)
