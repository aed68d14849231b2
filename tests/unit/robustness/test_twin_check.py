"""The proof that the twin is the deployed model (``robustness.twin_check``): the plain and hardened example pass,
planted errors in weights, centers, thresholds or channel order are refused, and a flip one rounding step from
a band edge is counted, not refused; decisions are compared as decisions (a value at its center, or far outside
the band, is the same whichever way it is decided)."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import pytest
import torch
from example_data import example_images
from helpers import EXAMPLE

from mstransform.core.errors import VerificationError
from mstransform.robustness.twin import OnnxTwin, Unit
from mstransform.robustness.twin_check import check_twin, decision_flips

MODEL = EXAMPLE / "model.onnx"


def test_twin_is_the_deployed_model(example_hardened):
    for path, ops in ((MODEL, 0), (example_hardened.hardened, 7)):
        report = check_twin(OnnxTwin(path), path, example_images(64))
        assert report.operators == ops and report.max_rel_diff <= 1e-4
    assert len(OnnxTwin(example_hardened.hardened).units) == 7


def _plant(twin: OnnxTwin, error: str) -> None:
    unit = twin.units[2]
    if error == "weights":
        with torch.no_grad():
            next(iter(twin.weights.values())).mul_(1.01)
    elif error == "center":
        unit.center = unit.center + unit.threshold  # shifts the band by a whole threshold
    elif error == "threshold":
        unit.threshold = unit.threshold * 1.5
    elif error == "dropped":
        i = twin.program.index(unit)
        twin.program[i] = Unit(unit.x, unit.y, unit.center, torch.zeros_like(unit.threshold))  # never replaces
    elif error == "axis":  # per-channel constants applied to the wrong channels
        unit.center = unit.center.flip(1)
        unit.threshold = unit.threshold.flip(1)


@pytest.mark.parametrize("error", ["weights", "center", "threshold", "dropped", "axis"])
def test_twin_check_refuses_planted_errors(example_hardened, error):
    path = example_hardened.hardened
    twin = OnnxTwin(path)
    _plant(twin, error)
    with pytest.raises(VerificationError, match="twin"):
        check_twin(twin, path, example_images(32))


def test_twin_check_counts_a_flip_at_the_band_edge(tmp_path):
    """A value one rounding step from the edge may be decided either way: reported, not refused."""
    t = np.float32(0.5)
    below = np.nextafter(t, np.float32(0))  # the largest float32 below t: replaced by ORT
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 1, 4])
    consts = [onnx.numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w"),
              onnx.numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.float32), "c"),
              onnx.numpy_helper.from_array(np.full((1, 1, 1, 1), t, np.float32), "t")]
    nodes = [onnx.helper.make_node("Conv", ["x", "w"], ["h"]), onnx.helper.make_node("Sub", ["h", "c"], ["d"]),
             onnx.helper.make_node("Abs", ["d"], ["a"]), onnx.helper.make_node("Less", ["a", "t"], ["m"]),
             onnx.helper.make_node("Where", ["m", "c", "h"], ["s"]), onnx.helper.make_node("Relu", ["s"], ["y"])]
    graph = onnx.helper.make_graph(nodes, "edge", [x], [y], consts)
    path = tmp_path / "edge.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8), str(path))
    twin = OnnxTwin(path)
    with torch.no_grad():
        next(iter(twin.weights.values())).mul_(1 + 2.0**-22)  # a rounding-sized difference before the operator
    inp = np.array([[[[below, 0.1, 0.9, -2.0]]]], np.float32)
    report = check_twin(twin, path, inp)
    assert report.flips == 1 and report.max_rel_diff < 1e-6


# -- the twin check on trained weights ---------------------------------------------------------------

F32 = np.float32

@pytest.mark.parametrize("case", ["dead-channel", "constant-background", "saturated", "edge", "far"])
def test_twin_decisions_are_compared_as_decisions(case):
    """Planted cases of trained networks: a value equal to its center (a dead filter gives exactly its bias,
    which is the mean) is the same whichever way it is decided; only a flip far from the edge is a defect."""
    c, t = np.array([[0.5]], F32), np.array([[0.25]], F32)
    if case == "dead-channel":  # both sides exactly the center
        x_twin = x_ort = np.full((1, 4), 0.5, F32)
    elif case == "constant-background":  # ORT exactly the center, the twin one rounding step away
        x_ort = np.full((1, 4), 0.5, F32)
        x_twin = np.nextafter(x_ort, F32(1))
    elif case == "saturated":  # far outside the band on both sides, kept
        x_ort = np.full((1, 4), 80.0, F32)
        x_twin = x_ort + F32(1e-5)
    elif case == "edge":  # one ulp either side of the edge: a real flip
        x_ort = np.full((1, 1), np.nextafter(F32(0.75), F32(0)), F32)
        x_twin = np.full((1, 1), F32(0.75), F32)
    else:  # a twin unit with the wrong threshold replaces what ORT keeps
        x_twin = x_ort = np.full((1, 1), 0.9, F32)
        flips = decision_flips((x_twin, c, t * 2), (x_ort, c, t))
        assert flips.all()
        return
    flips = decision_flips((x_twin, c, t), (x_ort, c, t))
    assert flips.any() == (case == "edge"), case
