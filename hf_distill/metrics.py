"""Offline classification metrics (no Hub download): accuracy and macro-F1 for `compute_metrics`."""

from __future__ import annotations

import numpy as np


def accuracy_and_macro_f1(predictions, references, num_labels: int | None = None) -> dict[str, float]:
    """Accuracy and macro-averaged F1 over the classes that occur in predictions or references."""
    predictions = np.asarray(predictions).reshape(-1)
    references = np.asarray(references).reshape(-1)
    keep = references != -100
    predictions, references = predictions[keep], references[keep]
    classes = np.arange(num_labels) if num_labels else np.union1d(predictions, references)
    f1s = []
    for c in classes:
        tp = np.sum((predictions == c) & (references == c))
        fp = np.sum((predictions == c) & (references != c))
        fn = np.sum((predictions != c) & (references == c))
        if tp + fp + fn == 0:
            continue  # class absent from both: sklearn's labels=None behaviour
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return {
        "accuracy": float(np.mean(predictions == references)) if len(references) else 0.0,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
    }


def compute_classification_metrics(eval_pred) -> dict[str, float]:
    """`Trainer(compute_metrics=...)` for sequence classification: argmax of the logits vs labels."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    return accuracy_and_macro_f1(np.argmax(logits, axis=-1), labels)
