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

    def to_dict(self) -> dict:
        """The accuracy for machines: samples right, samples scored, the percentage."""
        return {"correct": self.correct, "total": self.total, "percent": self.percent}

    def format(self) -> str:
        """One line for people: ``accuracy 97.50% (39/40)``."""
        return f"accuracy {self.percent:.2f}% ({self.correct}/{self.total})"


def is_class_scores(array: np.ndarray, samples: int | None = None, batch_axis: int | None = 0) -> bool:
    """Whether ``array`` holds class scores: ``(samples, classes)`` floats, two classes or more (``samples``
    None: one sample or more). The one test that ``run``, accuracy, ``eval``, calibration and the self-check apply."""
    return (array.ndim == 2 and batch_axis == 0 and array.shape[1] >= 2
            and (array.shape[0] >= 1 if samples is None else array.shape[0] == samples)
            and (array.dtype.kind == "f" or array.dtype.name == "bfloat16"))


def not_class_scores(name: str, array: np.ndarray, needs: str) -> DataError:
    """The error for an output ``name`` that :func:`is_class_scores` refused, where ``needs`` them."""
    return DataError(f"output {name!r} has shape {list(array.shape)} ({array.dtype}), not (batch, classes) "
                     f"floats with two classes or more: {needs} needs class scores")


def check_labels(labels: np.ndarray, classes: int) -> None:
    """DataError unless every label names one of ``classes`` classes."""
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"labels must lie in 0..{classes - 1} (the model's classes); found "
                        f"{int(labels.min())}..{int(labels.max())}")


def score(scores: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, Accuracy | None]:
    """Arg-max predictions of ``(samples, classes)`` scores, and their accuracy where ``labels`` exist."""
    preds = scores.argmax(axis=1)
    if labels is None:
        return preds, None
    check_labels(labels, scores.shape[1])
    return preds, Accuracy(int((preds == labels).sum()), int(len(labels)))


def predict(session, batches) -> tuple[np.ndarray, np.ndarray]:
    """Arg-max predictions of the first output and the labels; DataError where the data has none."""
    out = session.get_outputs()[0].name
    preds, labels = [], []
    for batch in batches:
        if batch.labels is None:
            raise DataError("evaluation data has no labels; add a 'labels' array (or use class sub-folders)")
        logits = np.asarray(run_step(session, [out], batch.inputs, DataError,
                                     f"inference, batch starting at sample {batch.start}")[0])
        if not is_class_scores(logits, len(batch)):
            raise not_class_scores(out, logits, "accuracy")
        check_labels(batch.labels, logits.shape[1])
        labels.append(batch.labels)
        preds.append(logits.argmax(axis=1))
    return np.concatenate(preds), np.concatenate(labels)


def accuracy(session, batches) -> Accuracy:
    p, y = predict(session, batches)
    return Accuracy(int((p == y).sum()), int(len(y)))
