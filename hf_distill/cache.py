"""Cached teacher outputs: their format (the columns), `cache_teacher_outputs` and the collator.

Run a teacher once over a dataset, then distil without it:

    python -m hf_distill.cache --teacher_model_name_or_path TEACHER --data_file train.csv \\
        --text_column text --output_dir train_cached            # full logits (small label sets)
    python -m hf_distill.cache --teacher_model_name_or_path gpt2 --dataset_path tokenized/ \\
        --task causal-lm --top_k 32 --temperature 2 --output_dir cached   # top-k for large vocabularies

The output is a `datasets` folder (`save_to_disk`) with the teacher columns beside the inputs; give it
(`load_from_disk`) to `DistillationTrainer(student, None, args, train_dataset=...)`. The command line (argument
checks, data files, the output folder's rules) is `hf_distill/recipes/cache_cli.py`; this module needs none of it.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch
from torch import nn

from .modeling import eval_mode, forward_params, unwrap_peft

logger = logging.getLogger(__name__)

# Columns a cached dataset carries, and the number of dims of one example's value for sequence-level
# outputs (token-level outputs have one more: the example's real tokens first).
CACHE_COLUMNS = {
    "teacher_logits": 1,  # (C,) raw logits, any temperature can be applied later
    "teacher_topk_indices": 1,  # (k,) class / token ids of the k largest teacher logits
    "teacher_topk_values": 1,  # (k,) their raw logits
    "teacher_topk_rest": 0,  # () teacher probability of all other classes, at teacher_temperature
    "teacher_temperature": 0,  # () the temperature the rest mass was computed at
    "teacher_input_hash": 0,  # () fingerprint of the row's input_ids (`input_hash`), checked by the collator
}
# Why a fingerprint: a sequence-level cache (one logits vector per example) shifted by one row against its inputs
# has the right shapes everywhere and would train silently on the wrong targets. Token-level rows are also checked
# against the number of real tokens. Caches written before this column existed have no check.
INPUT_HASH = "teacher_input_hash"


def input_hash(input_ids) -> int:
    """A short stable fingerprint of one example's input_ids: the first 8 bytes of blake2b, as a signed int64."""
    data = np.asarray(input_ids, dtype="<i8").tobytes()  # fixed width and byte order: the same on every machine
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def has_cached_outputs(dataset) -> bool:
    """Whether `dataset` (a datasets.Dataset or anything with column_names) carries cached teacher outputs."""
    columns = getattr(dataset, "column_names", None) or []
    return "teacher_logits" in columns or "teacher_topk_indices" in columns


def cached_teacher_outputs(batch: dict) -> list[dict] | None:
    """A batch's cached teacher outputs in the form a teacher forward has: [{"logits": tensor or TopKTargets}]."""
    from .objective import TopKTargets

    if "teacher_logits" in batch:
        return [{"logits": batch["teacher_logits"]}]
    if "teacher_topk_indices" in batch:
        return [
            {
                "logits": TopKTargets(
                    batch["teacher_topk_indices"], batch["teacher_topk_values"], batch["teacher_topk_rest"]
                )
            }
        ]
    return None


def cache_teacher_outputs(
    teacher: nn.Module,
    dataset,
    *,
    top_k: int | None = None,
    temperature: float = 2.0,
    batch_size: int = 32,
    data_collator=None,
    output_field: str = "logits",
    device: str | torch.device | None = None,
):
    """Run the teacher once over a tokenized `datasets.Dataset`; return it with the teacher's outputs as columns.

    `top_k=None` stores the full logits (`teacher_logits`), right for small label sets: training on them
    equals training with the live teacher at any temperature. `top_k=k` stores, for large vocabularies,
    the k largest logits and their ids plus the probability mass of the rest at `temperature` (which the
    trainer then requires). Token-level outputs are stored for the example's real tokens only
    (attention_mask == 1). The DistillationTrainer reads these columns and then needs no teacher.

    Args:
        teacher: the teacher model; it runs in eval mode without gradients, and its mode is restored after.
        dataset: a tokenized `datasets.Dataset` (the columns the teacher's forward takes, labels are left out).
        top_k: None for full logits, or how many of the largest logits to keep per position.
        temperature: the temperature of the top-k rest mass (training must use the same one).
        batch_size: examples per teacher forward.
        data_collator: builds the teacher's batches (default: `transformers.default_data_collator`).
        output_field: the teacher output to cache, e.g. "logits" or "start_logits".
        device: where the batches go (default: the teacher's device).
    """
    from transformers import default_data_collator

    features = _teacher_features(teacher, dataset, top_k)
    device = torch.device(device) if device is not None else next(teacher.parameters()).device
    with torch.no_grad(), eval_mode(teacher):
        columns = _run_teacher(
            teacher,
            dataset,
            features,
            data_collator or default_data_collator,
            device,
            batch_size,
            output_field,
            top_k,
            temperature,
        )
    for name, values in columns.items():
        dataset = dataset.add_column(name, values)
    logger.info(
        "cached the teacher's %s for %d examples (%s)",
        output_field,
        len(dataset),
        "full logits" if top_k is None else f"top-{top_k}",
    )
    return dataset


def _teacher_features(teacher: nn.Module, dataset, top_k: int | None) -> list[str]:
    """The dataset columns the teacher's forward takes (labels left out), after checking the arguments."""
    from transformers.utils import find_labels

    taken = [c for c in CACHE_COLUMNS if c in dataset.column_names]
    if taken:
        raise ValueError(f"the dataset already has cached teacher columns {taken}; remove them to cache again.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None for full logits), got {top_k}.")
    accepted = forward_params(teacher)
    label_names = set(find_labels(type(unwrap_peft(teacher))))
    features = [c for c in dataset.column_names if c in accepted and c not in label_names]
    if not features:
        raise ValueError(
            f"none of the dataset's columns {dataset.column_names} is an input of {type(teacher).__name__}.forward; "
            "tokenize the dataset first (input_ids, attention_mask, ...)."
        )
    return features


def _run_teacher(
    teacher,
    dataset,
    features,
    collate,
    device,
    batch_size: int,
    output_field: str,
    top_k: int | None,
    temperature: float,
) -> dict[str, list]:
    """{cache column: one value per example}, batch by batch (under no_grad, teacher in eval mode)."""
    columns: dict[str, list] = {}
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]  # dict of column -> list
        examples = [{c: rows[c][i] for c in features} for i in range(len(rows[features[0]]))]
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(examples).items()}
        outputs = teacher(**batch)
        if output_field not in outputs:
            raise ValueError(f"the teacher returned no {output_field!r} (it returned {list(outputs.keys())}).")
        logits = outputs[output_field].float()  # (B, C) or (B, L, C)
        mask = batch.get("attention_mask")
        for name, values in _cache_values(logits, top_k, temperature).items():
            for i in range(logits.shape[0]):
                v = values[i]
                if logits.dim() == 3 and mask is not None:
                    v = v[mask[i].bool()]  # (L_i, ...): the example's real tokens
                columns.setdefault(name, []).append(v.cpu().tolist())
        if "input_ids" in rows:  # the fingerprint the collator checks each row against
            columns.setdefault(INPUT_HASH, []).extend(input_hash(ids) for ids in rows["input_ids"])
    return columns


def _cache_values(logits: torch.Tensor, top_k: int | None, temperature: float) -> dict[str, torch.Tensor]:
    if top_k is None:
        return {"teacher_logits": logits}
    k = min(top_k, logits.shape[-1])
    values, indices = logits.topk(k, dim=-1)  # (..., k)
    log_p = torch.log_softmax(logits / temperature, dim=-1)
    kept = torch.logsumexp(log_p.gather(-1, indices), dim=-1).exp()  # (...,)
    rest = (1.0 - kept).clamp_min(0.0)
    return {
        "teacher_topk_indices": indices.int(),
        "teacher_topk_values": values,
        "teacher_topk_rest": rest,
        "teacher_temperature": torch.full_like(rest, float(temperature)),
    }


class CachedOutputsCollator:
    """Wraps a data collator: batches the cached teacher columns beside what the wrapped collator builds.

    Token-level values (one row per real token) are scattered into the positions where the batch's
    attention_mask is 1, so right and left padding both line up; padding positions hold zeros. Rows that carry
    `teacher_input_hash` are checked against their own input_ids first; the fingerprint is not batched.
    """

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features):
        self._check_fingerprints(features)
        present = [c for c in CACHE_COLUMNS if c in features[0] and c != INPUT_HASH]
        batch = self.collator([{k: v for k, v in f.items() if k not in CACHE_COLUMNS} for f in features])
        for name in present:
            rows = [torch.as_tensor(f[name]) for f in features]
            batch[name] = self._stack(name, rows, batch.get("attention_mask"))
        return batch

    @staticmethod
    def _check_fingerprints(features) -> None:
        for i, f in enumerate(features):
            if f.get(INPUT_HASH) is None:
                continue  # a cache written before the fingerprint existed: nothing to check
            if "input_ids" not in f:
                raise ValueError(
                    f"example {i} of the batch carries a cached {INPUT_HASH!r} but no input_ids to check it against; "
                    "keep the input_ids column in the dataset."
                )
            if input_hash(f["input_ids"]) != int(f[INPUT_HASH]):
                raise ValueError(
                    f"example {i} of the batch: the cached teacher outputs no longer match their inputs (the "
                    f"input_ids fingerprint differs from the cached {INPUT_HASH!r}; rows were reordered, shifted or "
                    "re-tokenized after caching). Re-run `python -m hf_distill.cache` or `cache_teacher_outputs` "
                    "on this exact dataset."
                )

    @staticmethod
    def _stack(name: str, rows: list[torch.Tensor], attention_mask) -> torch.Tensor:
        if rows[0].dim() == CACHE_COLUMNS[name]:
            return torch.stack(rows)  # sequence-level: (B, ...)
        if attention_mask is None:
            raise ValueError(f"token-level cached column {name!r} needs an attention_mask in the batch to line up.")
        mask = attention_mask.bool()  # (B, L)
        out = torch.zeros((*mask.shape, *rows[0].shape[1:]), dtype=rows[0].dtype)  # (B, L, ...)
        for i, row in enumerate(rows):
            if row.shape[0] != int(mask[i].sum()):
                raise ValueError(
                    f"example {i} of the batch has {int(mask[i].sum())} real tokens but {row.shape[0]} cached "
                    f"{name!r} rows: the dataset was tokenized differently when the teacher outputs were cached."
                )
            out[i, mask[i]] = row
        return out


if __name__ == "__main__":  # `python -m hf_distill.cache ...`: the command line lives with the recipes
    from hf_distill.recipes.cache_cli import main

    main()
