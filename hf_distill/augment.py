"""Data augmentation for distillation (TinyBERT, Jiao et al. 2020; MixKD, Liang et al. 2021).

Augmented copies of the training texts are labelled by the teacher only: they carry no hard label
(`labels = -100`, which the DistillationTrainer reads as "soft targets only"), so a corrupted text whose
true class may have changed is never trained towards the original label. The teacher's soft target on
the corrupted text is what the student learns; that is what makes the copies useful and safe.

    texts = augment_texts(train_texts, n_copies=4, seed=0, mask_token=tokenizer.mask_token)
    # or, with a masked LM whose top candidates replace words (TinyBERT's contextual replacement):
    texts = augment_texts(train_texts, 4, seed=0, mlm=mlm_model, mlm_tokenizer=mlm_tokenizer)

Every copy is a pure function of (seed, example index, copy index): the same seed gives the same copies
whatever the batching, another seed gives other copies. Operations work on whitespace-separated words:

- "mask":    a chosen word becomes the mask token (or, with an MLM, one of its top-k candidates for it);
- "drop":    a chosen word is deleted (word dropout);
- "shuffle": a span of up to `span` words is shuffled in place (once per copy, when the text is long enough).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from .modeling import eval_mode
from .positions import IGNORE_INDEX

logger = logging.getLogger(__name__)

OPERATIONS = ("mask", "drop", "shuffle")
UNLABELLED = IGNORE_INDEX  # the old name, kept importable


def _check(n_copies: int, prob: float, operations: Sequence[str], span: int) -> None:
    if not isinstance(n_copies, int) or n_copies < 0:
        raise ValueError(f"n_copies must be an integer >= 0 (augmented copies per example), got {n_copies!r}.")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1] (the chance that a word is masked or dropped), got {prob}.")
    unknown = [op for op in operations if op not in OPERATIONS]
    if unknown or not operations:
        raise ValueError(f"operations must be a non-empty subset of {OPERATIONS}, got {list(operations)}.")
    if span < 2:
        raise ValueError(f"span must be >= 2 words (a shuffled span of one word changes nothing), got {span}.")


def _corrupt(
    words: list[str], rng: np.random.Generator, prob: float, operations: Sequence[str], span: int, mask_token: str
) -> list[str]:
    """One augmented copy of `words`: each word is masked or dropped with probability `prob`, then a span shuffled."""
    word_ops = [op for op in operations if op in ("mask", "drop")]
    out = []
    for w in words:
        if word_ops and rng.random() < prob:
            if word_ops[rng.integers(len(word_ops))] == "mask":
                out.append(mask_token)
            continue  # masked or dropped
        out.append(w)
    if not out:  # never return an empty text: keep one word
        out = [words[rng.integers(len(words))]] if words else []
    if "shuffle" in operations and len(out) >= 2:
        width = int(rng.integers(2, min(span, len(out)) + 1))
        start = int(rng.integers(0, len(out) - width + 1))
        out[start : start + width] = [out[start + i] for i in rng.permutation(width)]
    return out


def augment_texts(
    texts: Sequence[str],
    n_copies: int,
    seed: int = 0,
    *,
    prob: float = 0.15,
    operations: Sequence[str] = OPERATIONS,
    span: int = 3,
    mask_token: str = "[MASK]",
    mlm=None,
    mlm_tokenizer=None,
    top_k: int = 5,
    batch_size: int = 64,
) -> list[str]:
    """`n_copies` corrupted copies of each text, copy c of text i at position `i * n_copies + c`.

    With a masked LM (`mlm` + `mlm_tokenizer`), masked words are replaced by one of the MLM's `top_k`
    single-token candidates for that position (sampled with the copy's seed, the original word excluded)
    instead of staying masked. Without one, masked words keep `mask_token` (use the student tokenizer's).
    """
    _check(n_copies, prob, operations, span)
    if (mlm is None) != (mlm_tokenizer is None):
        raise ValueError("give both mlm and mlm_tokenizer (a masked LM and its tokenizer) or neither.")
    if mlm is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (MLM candidates to sample a replacement from), got {top_k}.")
    if mlm is not None:
        mask_token = mlm_tokenizer.mask_token
        if mask_token is None:
            raise ValueError("mlm_tokenizer has no mask token; give the tokenizer of a masked language model.")
    out, rngs = [], []
    for i, text in enumerate(texts):
        words = str(text).split()
        for c in range(n_copies):
            rng = np.random.default_rng([seed, i, c])  # a copy depends on (seed, example, copy) only
            out.append(_corrupt(words, rng, prob, operations, span, mask_token))
            rngs.append(rng)
    if mlm is not None:
        out = _fill_masks(out, rngs, mlm, mlm_tokenizer, top_k, batch_size, texts, n_copies)
    return [" ".join(words) for words in out]


@torch.no_grad()
def _fill_masks(copies: list[list[str]], rngs, mlm, tokenizer, top_k: int, batch_size: int, texts, n_copies):
    """Replace every mask word of every copy by one of the MLM's top-k whole-word candidates."""
    mask = tokenizer.mask_token
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    # Whole-word, non-special candidates only: a '##' piece or [CLS] would not make a word.
    special = set(tokenizer.all_special_ids)
    banned = torch.tensor([t.startswith("##") or i in special for i, t in enumerate(vocab)])
    device = next(mlm.parameters()).device
    todo = [k for k, words in enumerate(copies) if mask in words]
    with eval_mode(mlm):
        for start in range(0, len(todo), batch_size):
            rows = todo[start : start + batch_size]
            enc = tokenizer([" ".join(copies[k]) for k in rows], return_tensors="pt", padding=True, truncation=True)
            logits = mlm(**{k: v.to(device) for k, v in enc.items()}).logits.float().cpu()  # (B, L, V)
            logits[..., banned[: logits.shape[-1]]] = float("-inf")
            for b, k in enumerate(rows):
                positions = (enc["input_ids"][b] == tokenizer.mask_token_id).nonzero().flatten().tolist()
                originals = str(texts[k // n_copies]).split()
                candidates = logits[b, positions].topk(top_k + 1, dim=-1).indices  # (M, top_k + 1)
                words, m = copies[k], 0
                for w_idx, w in enumerate(words):
                    if w != mask or m >= len(positions):  # truncated masks stay masked
                        continue
                    options = [vocab[t] for t in candidates[m].tolist()]
                    options = [o for o in options if o not in originals][:top_k] or options[:top_k]
                    words[w_idx] = options[int(rngs[k].integers(len(options)))]
                    m += 1
    return copies


def augment_dataset(
    dataset,
    text_column: str,
    n_copies: int,
    seed: int = 0,
    *,
    label_column: str | None = "labels",
    keep_columns: Sequence[str] = (),
    **kwargs,
):
    """A `datasets.Dataset` of `n_copies` augmented copies per row of `dataset` (see `augment_texts`).

    The copies hold `text_column`, `label_column` = -100 (no hard label: the teacher's soft targets are
    all the student gets on them), `augment_source` (the row each copy comes from) and `keep_columns`
    copied from their source row (e.g. a second text column left untouched). Tokenise them, then label
    them with the teacher once (`hf_distill.cache_teacher_outputs`) or let the trainer run the teacher.
    """
    from datasets import Dataset

    if text_column not in dataset.column_names:
        raise ValueError(f"text_column {text_column!r} is not a column of the dataset ({dataset.column_names}).")
    missing = [c for c in keep_columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"keep_columns {missing} are not columns of the dataset ({dataset.column_names}).")
    texts = augment_texts(dataset[text_column], n_copies, seed, **kwargs)
    source = [i for i in range(len(dataset)) for _ in range(n_copies)]
    data = {text_column: texts, "augment_source": source}
    for c in keep_columns:
        values = dataset[c]
        data[c] = [values[i] for i in source]
    if label_column is not None:
        data[label_column] = [IGNORE_INDEX] * len(texts)
    logger.info("augmented %d examples into %d copies (seed %d)", len(dataset), len(texts), seed)
    return Dataset.from_dict(data)
