"""The attacks (``robustness.attacks``): a first output without class scores is refused in one line, and an attack
that leaves the threat model is a verification error."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper
import onnxruntime as ort
import pytest
from helpers import tiny_model

from mstransform.core.errors import VerificationError


@pytest.mark.parametrize("shape", [[1, 1], [1, 2, 5], [1]], ids=["one-class", "rank-3", "rank-1"])
def test_eval_refuses_a_first_output_without_class_scores(shape):
    """Class scores are decided by runtime.accuracy.is_class_scores, as for accuracy and ``run``."""
    from mstransform.core.errors import DataError
    from mstransform.robustness.attacks import check_classifier

    k = int(np.prod(shape))
    proto = tiny_model([onnx.helper.make_node("Reshape", ["x", "shape"], ["y"])], [("x", [1, k])], [("y", shape)],
                       consts={"shape": np.array(shape, np.int64)})
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x, y = np.zeros((4, k), np.float32), np.zeros(4, np.int64)
    with pytest.raises(DataError, match="not \\(batch, classes\\)") as e:
        check_classifier(session, x, y)
    assert "\n" not in str(e.value)


def test_an_attack_that_leaves_the_threat_model_is_a_verification_error():
    from mstransform.robustness.attacks import AttackConfig, _check_budget

    x = np.full((2, 4), 0.5, np.float32)
    _check_budget(x + 0.1, x, AttackConfig(eps=0.1), "square")  # on the boundary: counts
    with pytest.raises(VerificationError, match="left the threat model"):
        _check_budget(x + 0.2, x, AttackConfig(eps=0.1), "square")
