"""Transfer sets (Bucila et al., 2006; Hinton et al., 2015): unlabelled data labelled by the teacher.

`label_with_teacher` runs a teacher once over a dataset and stores its raw logits with each example;
the soft targets at any temperature T are `softmax(teacher_logits / T)`, so T can be chosen later.
`mark_unlabelled` turns missing labels (None) into -100, the value the trainer reads as "no label":
such examples train on the soft target only.
"""

from __future__ import annotations

import torch
from datasets import Dataset
from torch import nn

from .cache import cache_teacher_outputs
from .positions import IGNORE_INDEX

UNLABELLED = IGNORE_INDEX  # the old name, kept importable


def label_with_teacher(
    teacher: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 32,
    data_collator=None,
    output_field: str = "logits",
    column: str = "teacher_logits",
    device: str | torch.device | None = None,
) -> Dataset:
    """Return `dataset` with a `column` holding the teacher's raw `output_field` for each example (float32).

    The full-logits case of `hf_distill.cache.cache_teacher_outputs` (see there), kept under the transfer-set name:
    sequence-level logits are stored as C values per example, token-level ones for the example's real tokens
    (L_i x C). Under the default column name the DistillationTrainer trains on them without running the teacher.
    """
    if column in dataset.column_names:
        raise ValueError(f"the dataset already has a {column!r} column; pass another `column=` name or remove it.")
    labelled = cache_teacher_outputs(
        teacher, dataset, batch_size=batch_size, data_collator=data_collator, output_field=output_field, device=device
    )
    return labelled if column == "teacher_logits" else labelled.rename_column("teacher_logits", column)


def mark_unlabelled(dataset: Dataset, label_column: str = "labels") -> Dataset:
    """Replace missing labels (None) with -100 so unlabelled and labelled examples can share a batch.

    Sequence-level labels become -100 (-100.0 for float regression labels), token-level label lists
    a list of -100, one per input token. The trainer then takes the hard loss over the labelled examples only and
    the soft loss over all.
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
