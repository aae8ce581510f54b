"""Transfer sets (Bucila et al., 2006; Hinton et al., 2015): unlabelled data labelled by the teacher, mixed in.

A transfer set is unlabelled text (any amount) that the teacher labels with its soft targets, once
(`hf_distill.cache_teacher_outputs`, or `label_with_teacher` under the transfer-set name). `mix_transfer_set`
adds it to the labelled set at a chosen ratio: its rows carry `labels = -100`, which the DistillationTrainer
reads as "no hard label, soft targets only", so labelled and transfer rows share batches. `mark_unlabelled`
turns missing labels (None) into -100; `labelled_only` keeps the rows with a label (what a hard-label baseline
can train on).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from .cache import cache_teacher_outputs
from .positions import IGNORE_INDEX

logger = logging.getLogger(__name__)

UNLABELLED = IGNORE_INDEX  # the old name, kept importable


def _row_has_label(value) -> bool:
    if isinstance(value, list):  # token-level labels: labelled if any token is
        return any(v != IGNORE_INDEX for v in value)
    return value is not None and value != IGNORE_INDEX


def mix_transfer_set(labelled, transfer, ratio: float | None = None, seed: int = 0, label_column: str = "labels"):
    """`labelled` followed by `round(ratio * labelled rows)` rows of `transfer` (all of it when `ratio` is None).

    The transfer rows are a seeded sample without replacement, in their original order; their labels are
    set to -100 whatever they held (a transfer set is unlabelled by definition), and only the columns of
    `labelled` are kept. Both datasets must already be tokenised the same way (and cached the same way if
    they carry teacher outputs). The Trainer shuffles the mixed rows every epoch.
    """
    from datasets import concatenate_datasets

    _check_mix_inputs(labelled, transfer, ratio, label_column)
    # Per *labelled* row: rows of `labelled` without a label (e.g. augmented copies mixed in before) do not count.
    n_labelled = sum(_row_has_label(v) for v in labelled[label_column])
    n = len(transfer) if ratio is None else round(ratio * n_labelled)
    if n > len(transfer):
        raise ValueError(
            f"ratio {ratio} asks for {n} transfer rows but the transfer set has {len(transfer)}; lower the "
            "ratio or pass ratio=None to use all of it."
        )
    rows = (
        np.sort(np.random.default_rng(seed).choice(len(transfer), size=n, replace=False))
        if n < len(transfer)
        else np.arange(len(transfer))
    )
    picked = _unlabelled_like(transfer.select(rows.tolist()), labelled, label_column)
    logger.info("mixed %d labelled rows with %d transfer rows (ratio %s)", len(labelled), n, ratio)
    return concatenate_datasets([labelled, picked])


def _check_mix_inputs(labelled, transfer, ratio: float | None, label_column: str) -> None:
    """Refuses a negative ratio, a labelled set without `label_column`, and a transfer set lacking its columns."""
    if ratio is not None and not ratio >= 0:
        raise ValueError(
            f"ratio must be >= 0 (transfer rows per labelled row) or None for the whole transfer set, got {ratio}."
        )
    if label_column not in labelled.column_names:
        raise ValueError(f"the labelled set has no {label_column!r} column (columns: {labelled.column_names}).")
    missing = [c for c in labelled.column_names if c != label_column and c not in transfer.column_names]
    if missing:
        raise ValueError(
            f"the transfer set lacks the labelled set's columns {missing}: tokenise it (and cache the "
            "teacher's outputs on it) the same way as the labelled set."
        )


def _unlabelled_like(picked, labelled, label_column: str):
    """`picked` with every label set to -100 (per token when `labelled`'s labels are token-level), reduced to
    `labelled`'s columns and cast to its features."""
    token_level = bool(len(labelled)) and isinstance(labelled[0][label_column], list)

    def unlabel(example):
        value = [IGNORE_INDEX] * len(example["input_ids"]) if token_level else IGNORE_INDEX
        return {label_column: value}

    if label_column in picked.column_names:
        picked = picked.remove_columns(label_column)
    picked = (
        picked.map(unlabel, desc="unlabelling the transfer set")
        if len(picked)
        else picked.add_column(label_column, [])
    )
    return picked.select_columns(labelled.column_names).cast(labelled.features)


def labelled_only(dataset, label_column: str = "labels"):
    """The rows of `dataset` that carry a label (not -100): what a hard-label student can learn from."""
    keep = [i for i, v in enumerate(dataset[label_column]) if _row_has_label(v)]
    return dataset.select(keep)


def label_with_teacher(
    teacher: nn.Module,
    dataset,
    *,
    batch_size: int = 32,
    data_collator=None,
    output_field: str = "logits",
    column: str = "teacher_logits",
    device: str | torch.device | None = None,
):
    """Return `dataset` with a `column` holding the teacher's raw `output_field` for each example (float32).

    The full-logits case of `hf_distill.cache.cache_teacher_outputs`, under the transfer-set name: sequence-level
    logits are stored as C values per example, token-level ones for the example's real tokens (L_i x C); the soft
    targets at any temperature T are `softmax(teacher_logits / T)`. Under the default column name the
    DistillationTrainer trains on them without running the teacher.

    Args:
        teacher: the teacher model (run once, without gradients).
        dataset: a tokenised `datasets.Dataset`.
        batch_size: examples per teacher forward.
        data_collator: builds the teacher's batches (default: padding collator of `cache_teacher_outputs`).
        output_field: the teacher output to store, e.g. "logits" or "start_logits".
        column: the new column's name; it must not exist yet.
        device: where the teacher runs (default: its own device).
    """
    if column in dataset.column_names:
        raise ValueError(f"the dataset already has a {column!r} column; pass another `column=` name or remove it.")
    labelled = cache_teacher_outputs(
        teacher, dataset, batch_size=batch_size, data_collator=data_collator, output_field=output_field, device=device
    )
    return labelled if column == "teacher_logits" else labelled.rename_column("teacher_logits", column)


def mark_unlabelled(dataset, label_column: str = "labels"):
    """Replace missing labels (None) with -100 so unlabelled and labelled examples can share a batch.

    Sequence-level labels become -100 (-100.0 for float regression labels), token-level label lists
    a list of -100, one per input token. The trainer then takes the hard loss over the labelled examples only and
    the soft loss over all.

    Args:
        dataset: a `datasets.Dataset` whose `label_column` holds None for the unlabelled examples.
        label_column: the column of the labels.
    """
    if label_column not in dataset.column_names:
        raise ValueError(f"the dataset has no {label_column!r} column (columns: {dataset.column_names}).")

    token_level = any(isinstance(v, list) for v in dataset[label_column] if v is not None)

    def fill(example):
        value = example[label_column]
        if value is None:  # token-level labels: one -100 per token
            value = [IGNORE_INDEX] * len(example["input_ids"]) if token_level else IGNORE_INDEX
        return {label_column: value}

    return dataset.map(fill, desc="marking unlabelled examples")
