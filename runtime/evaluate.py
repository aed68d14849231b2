"""Clean accuracy of an ONNX model on labelled data, straight from ONNX Runtime."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mstransform.errors import DataError


@dataclass
class Accuracy:
    correct: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.correct / max(self.total, 1)


def predict(session, batches) -> tuple[np.ndarray, np.ndarray]:
    """Arg-max predictions of the first output and the labels, over all batches."""
    out = session.get_outputs()[0].name
    preds, labels = [], []
    for batch in batches:
        if batch.labels is None:
            raise DataError("evaluation data has no labels; add a 'labels' array (or use class sub-folders)")
        logits = session.run([out], batch.inputs)[0]
        preds.append(np.asarray(logits).reshape(len(batch), -1).argmax(axis=1))
        labels.append(batch.labels)
    return np.concatenate(preds), np.concatenate(labels)


def accuracy(session, batches) -> Accuracy:
    p, y = predict(session, batches)
    return Accuracy(int((p == y).sum()), int(len(y)))
