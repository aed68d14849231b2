"""Clean accuracy of an ONNX model on labelled data, straight from ONNX Runtime."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mstransform.core.errors import DataError
from mstransform.runtime.session import run_step


@dataclass
class Accuracy:
    correct: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.correct / max(self.total, 1)


def predict(session, batches, require_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Arg-max predictions of the first output and the labels (None if the data has none)."""
    out = session.get_outputs()[0].name
    preds, labels = [], []
    for batch in batches:
        if batch.labels is None and require_labels:
            raise DataError("evaluation data has no labels; add a 'labels' array (or use class sub-folders)")
        logits = np.asarray(run_step(session, [out], batch.inputs, DataError,
                                     f"inference, batch starting at sample {batch.start}")[0])
        if logits.ndim != 2 or logits.shape[0] != len(batch):
            raise DataError(f"output {out!r} has shape {list(logits.shape)}, not (batch, classes): "
                            "accuracy needs class scores")
        if batch.labels is not None and len(batch.labels) and (batch.labels.min() < 0
                                                               or batch.labels.max() >= logits.shape[1]):
            raise DataError(f"labels must lie in 0..{logits.shape[1] - 1} (the model's classes); found "
                            f"{int(batch.labels.min())}..{int(batch.labels.max())}")
        preds.append(logits.argmax(axis=1))
        if batch.labels is not None:
            labels.append(batch.labels)
    p = np.concatenate(preds)
    return p, (np.concatenate(labels) if labels and sum(map(len, labels)) == len(p) else None)


def accuracy(session, batches) -> Accuracy:
    p, y = predict(session, batches)
    return Accuracy(int((p == y).sum()), int(len(y)))
