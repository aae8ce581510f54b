"""Offline classification metrics (no Hub download, no scikit-learn at run time): accuracy and macro-F1.

They match `sklearn.metrics.accuracy_score` and `f1_score(average="macro")` (tested against them): without
`num_labels` the classes are those that occur in the predictions or the references (sklearn's `labels=None`);
with it, all `num_labels` classes count, a class absent from both scoring 0 (`labels=range(num_labels)`,
`zero_division=0`). References equal to -100 (padding / ignored tokens) are left out.
"""

from __future__ import annotations

import numpy as np

from .positions import IGNORE_INDEX


def accuracy_and_macro_f1(predictions, references, num_labels: int | None = None) -> dict[str, float]:
    """{"accuracy", "macro_f1"} of integer predictions against integer references (any shape, flattened)."""
    predictions = np.asarray(predictions).reshape(-1)
    references = np.asarray(references).reshape(-1)
    if predictions.shape != references.shape:
        raise ValueError(f"{predictions.size} predictions for {references.size} references.")
    keep = references != IGNORE_INDEX
    predictions, references = predictions[keep], references[keep]
    if len(references) == 0:
        raise ValueError("no references to score (all are -100 or the evaluation set is empty).")
    classes = np.arange(num_labels) if num_labels else np.union1d(predictions, references)
    # per class: 2 TP / (2 TP + FP + FN) = 2 TP / (predicted + actual)
    tp = np.array([np.sum((predictions == c) & (references == c)) for c in classes])
    predicted = np.array([np.sum(predictions == c) for c in classes])
    actual = np.array([np.sum(references == c) for c in classes])
    denominator = predicted + actual
    f1 = np.divide(2 * tp, denominator, out=np.zeros(len(classes)), where=denominator > 0)
    return {"accuracy": float(np.mean(predictions == references)), "macro_f1": float(np.mean(f1))}


def compute_classification_metrics(eval_pred) -> dict[str, float]:
    """`Trainer(compute_metrics=...)` for sequence classification: argmax of the logits vs labels."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    return accuracy_and_macro_f1(np.argmax(logits, axis=-1), labels)
