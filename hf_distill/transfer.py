"""Transfer sets (Bucila et al., 2006; Hinton et al., 2015): unlabelled data labelled by the teacher.

`label_with_teacher` runs a teacher once over a dataset and stores its raw logits with each example;
the soft targets at any temperature T are `softmax(teacher_logits / T)`, so T can be chosen later.
`mark_unlabelled` turns missing labels (None) into -100, the value the trainer reads as "no label":
such examples train on the soft target only.
"""

from __future__ import annotations

import logging

import torch
from datasets import Dataset
from torch import nn
from transformers import default_data_collator
from transformers.utils import find_labels

from .trainer import _forward_params

logger = logging.getLogger(__name__)

UNLABELLED = -100  # the label value of an example without a label (as PyTorch's ignore_index)


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
    """Return `dataset` with a `column` holding the teacher's `output_field` for each example (float32).

    Only the columns the teacher's forward accepts are fed to it (labels never are). Sequence-level
    logits (B, C) are stored as C values per example; token-level logits (B, L, C) as the example's
    own length L_i x C (padding added by the collator is cut off). The teacher runs in eval mode
    without gradients; its train/eval mode is restored afterwards.
    """
    if column in dataset.column_names:
        raise ValueError(f"the dataset already has a {column!r} column; pass another `column=` name or remove it.")
    accepted = _forward_params(teacher)
    label_names = set(find_labels(type(teacher.get_base_model() if hasattr(teacher, "get_base_model") else teacher)))
    features = [c for c in dataset.column_names if (accepted is None or c in accepted) and c not in label_names]
    if not features:
        raise ValueError(
            f"none of the dataset's columns {dataset.column_names} is an input of {type(teacher).__name__}.forward; "
            "tokenize the dataset first (input_ids, attention_mask, ...)."
        )
    collate = data_collator or default_data_collator
    device = torch.device(device) if device is not None else next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    stored = []
    try:
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                rows = dataset[start : start + batch_size]  # dict of column -> list
                examples = [{c: rows[c][i] for c in features} for i in range(len(rows[features[0]]))]
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(examples).items()}
                outputs = teacher(**batch)
                if output_field not in outputs:
                    raise ValueError(
                        f"the teacher returned no {output_field!r} (it returned {list(outputs.keys())}); "
                        "pass output_field= one of those."
                    )
                logits = outputs[output_field].float().cpu()  # (B, C) or (B, L, C)
                for i, example in enumerate(examples):
                    z = logits[i]
                    if z.dim() == 2 and "input_ids" in example:
                        z = z[: len(example["input_ids"])]  # (L_i, C): drop the collator's padding
                    stored.append(z.tolist())
    finally:
        teacher.train(was_training)
    logger.info("labelled %d examples with the teacher's %s", len(stored), output_field)
    return dataset.add_column(column, stored)


def mark_unlabelled(dataset: Dataset, label_column: str = "labels") -> Dataset:
    """Replace missing labels (None) with -100 so unlabelled and labelled examples can share a batch.

    Sequence-level labels become -100 (-100.0 for float regression labels), token-level label lists
    a list of -100, one per input token. The trainer then takes the hard loss over the labelled examples only and the soft loss over all.
    """
    if label_column not in dataset.column_names:
        raise ValueError(f"the dataset has no {label_column!r} column (columns: {dataset.column_names}).")

    token_level = any(isinstance(v, list) for v in dataset[label_column] if v is not None)

    def fill(example):
        value = example[label_column]
        if value is None:  # token-level labels: one -100 per token
            value = [UNLABELLED] * len(example["input_ids"]) if token_level else UNLABELLED
        return {label_column: value}

    return dataset.map(fill, desc="marking unlabelled examples")
