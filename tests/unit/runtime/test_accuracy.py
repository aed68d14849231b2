"""Clean accuracy (``runtime.accuracy``): what is not a classification -- one class, or no labels -- is refused in
one line."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import mstransform as mst

@pytest.mark.parametrize("case", ["one-class", "no-labels"])
def test_compare_accuracy_refuses_what_is_not_a_classification_in_one_line(case, tmp_path):
    """Accuracy needs class scores (runtime.accuracy.is_class_scores: two classes or more) and labels."""
    import onnx.helper as oh
    from helpers import tiny_model

    from mstransform.core.errors import DataError

    width = 1 if case == "one-class" else 3
    model = tmp_path / "m.onnx"
    onnx.save(tiny_model([oh.make_node("Identity", ["input"], ["scores"])], [("input", ["N", width])],
                         [("scores", ["N", width])]), model)
    data = {"input": np.zeros((4, width), np.float32)}
    if case == "one-class":
        data["labels"] = np.zeros(4, np.int64)
    np.savez(tmp_path / "d.npz", **data)
    with pytest.raises(DataError, match="needs class scores" if case == "one-class" else "no labels") as e:
        mst.compare_accuracy([model], tmp_path / "d.npz")
    assert "\n" not in str(e.value)
