"""hf_distill.metrics against scikit-learn, the reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score
from transformers import EvalPrediction

from hf_distill.metrics import accuracy_and_macro_f1, compute_classification_metrics


@pytest.mark.parametrize(
    "seed, n, classes, num_labels",
    [
        (0, 50, 3, None),
        (1, 7, 5, None),  # some classes occur only in predictions or only in references
        (2, 40, 3, 5),  # classes 3 and 4 never occur: they score 0 with num_labels
        (3, 200, 10, 10),
        (4, 1, 2, None),
    ],
)
def test_matches_sklearn(seed, n, classes, num_labels):
    rng = np.random.default_rng(seed)
    refs = rng.integers(0, classes, n)
    preds = np.where(rng.random(n) < 0.6, refs, rng.integers(0, classes, n))
    labels = list(range(num_labels)) if num_labels else None
    got = accuracy_and_macro_f1(preds, refs, num_labels)
    assert got["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    assert got["macro_f1"] == pytest.approx(f1_score(refs, preds, average="macro", labels=labels, zero_division=0))


def test_ignored_positions_and_token_shapes():
    refs = np.array([[0, 1, -100], [2, -100, -100]])  # (B, L) token labels with padding
    preds = np.array([[0, 2, 1], [2, 0, 0]])
    kept = refs != -100
    got = accuracy_and_macro_f1(preds, refs)
    assert got["accuracy"] == pytest.approx(accuracy_score(refs[kept], preds[kept]))  # 2 of 3
    assert got["macro_f1"] == pytest.approx(f1_score(refs[kept], preds[kept], average="macro"))


def test_trainer_hook_takes_the_argmax_of_the_logits():
    logits = np.array([[2.0, 0.1, 0.0], [0.0, 0.0, 3.0], [1.0, 5.0, 0.0], [0.0, 1.0, 0.5]])
    labels = np.array([0, 2, 2, 1])
    got = compute_classification_metrics(EvalPrediction(predictions=(logits,), label_ids=labels))
    assert got == {"accuracy": 0.75, "macro_f1": pytest.approx(f1_score(labels, [0, 2, 1, 1], average="macro"))}


@pytest.mark.parametrize(
    "preds, refs, message",
    [
        ([1, 2], [1, 2, 3], "2 predictions for 3 references"),
        ([1], [-100], "no references"),
    ],
)
def test_bad_inputs(preds, refs, message):
    with pytest.raises(ValueError, match=message):
        accuracy_and_macro_f1(preds, refs)
