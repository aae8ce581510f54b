"""Prompt / completion data for causal-LM distillation.

A dataset holds either `prompt` and `completion` columns (plain text, or lists of chat messages as in
TRL's conversational datasets) or a `messages` column in chat format (a list of {"role", "content"}; the
last message is the assistant's answer, the ones before it are the prompt); chat data is rendered with
the tokenizer's chat template. Every example becomes

    input_ids = prompt ids + completion ids (+ eos)
    labels    = -100 on the prompt, the completion ids (+ eos) after it

so that the student's own loss, and the soft loss through `completion_mask`, count completion tokens
only. `PromptCompletionCollator` pads the sequences on the right (training) and, for on-policy
generation, also returns the prompts padded on the left.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
PROMPT_COMPLETION = ("prompt", "completion")
MESSAGES = "messages"
# Keys the collator adds next to input_ids / attention_mask / labels; the trainer reads them, models never see them.
COMPLETION_MASK = "completion_mask"
PROMPT_INPUT_IDS = "prompt_input_ids"
PROMPT_ATTENTION_MASK = "prompt_attention_mask"
# (B, L) teacher position paired with each student position, -1 where none (hf_distill.cross_tokenizer).
TEACHER_POSITION = "teacher_position"


def data_format(column_names: Sequence[str]) -> str:
    """'prompt_completion' or 'messages' for a dataset's columns; a ValueError for anything else."""
    columns = set(column_names)
    if set(PROMPT_COMPLETION) <= columns:
        return "prompt_completion"
    if MESSAGES in columns:
        return "messages"
    raise ValueError(
        f"the dataset has columns {sorted(columns)} but causal-LM distillation needs either 'prompt' and "
        "'completion' columns (plain text) or a 'messages' column in chat format ([{'role': ..., 'content': ...}, "
        "...], the last message being the answer). Rename the columns (dataset.rename_column) or build them."
    )


def split_chat(messages: list[dict], tokenizer) -> tuple[str, str]:
    """(prompt text, completion text) of a conversation, rendered with the tokenizer's chat template.

    The prompt is every message but the last, followed by the template's generation prompt; the
    completion is the rest of the rendered conversation (the last message and its end-of-turn markup).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the data is in chat format ('messages') but the tokenizer has no chat_template; set "
            "tokenizer.chat_template, or give 'prompt' / 'completion' columns instead."
        )
    if not messages or len(messages) < 2 or messages[-1].get("role") != "assistant":
        roles = [m.get("role") for m in messages or []]
        raise ValueError(
            f"a conversation with roles {roles} has no answer to learn: chat examples need at least one prompt "
            "message followed by a final 'assistant' message (the completion)."
        )
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError(
            "the chat template renders the conversation without its prompt as a prefix of the whole conversation "
            "(it rewrites earlier turns), so prompt and completion cannot be separated; use 'prompt' / "
            "'completion' columns instead."
        )
    return prompt, full[len(prompt) :]


def encode_example(
    prompt_ids: Sequence[int], completion_ids: Sequence[int], max_length: int, where: str = "an example"
) -> dict[str, list[int]]:
    """{"input_ids", "labels"} for one example; the completion is cut to fit `max_length` tokens.

    Raises a ValueError for an empty completion, or a prompt that leaves no room for a completion
    token (prompts are never cut: that would change the question).
    """
    prompt_ids, completion_ids = list(prompt_ids), list(completion_ids)
    if not completion_ids:
        raise ValueError(
            f"{where} has an empty completion: there is nothing to distil. Drop it (dataset.filter) or give it a "
            "completion."
        )
    if len(prompt_ids) >= max_length:
        raise ValueError(
            f"{where} has a prompt of {len(prompt_ids)} tokens, which leaves no room for a completion within "
            f"max_length={max_length}; raise max_length or shorten / drop long prompts before training."
        )
    completion_ids = completion_ids[: max_length - len(prompt_ids)]
    return {
        "input_ids": prompt_ids + completion_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
    }


def end_token_id(tokenizer) -> int | None:
    """The token that ends a completion: eos, or [SEP] for BERT-style tokenizers without one."""
    eos = getattr(tokenizer, "eos_token_id", None)
    return eos if eos is not None else getattr(tokenizer, "sep_token_id", None)


def tokenize_prompt_completion(dataset, tokenizer, max_length: int, append_eos: bool = True, desc: str | None = None):
    """Map a `datasets.Dataset` in either format to {"input_ids", "labels"} (see `encode_example`).

    Texts are tokenised without special tokens (a chat template writes its own); the tokenizer's bos
    token, if it has one, starts each plain-text prompt, and the end token (`end_token_id`) closes
    each completion when `append_eos`, so that the student learns where to stop generating.
    """
    kind = data_format(dataset.column_names)
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = end_token_id(tokenizer) if append_eos else None

    def encode(batch, indices):
        if kind == "messages":
            pairs = [split_chat(m, tokenizer) for m in batch[MESSAGES]]
        else:  # conversational prompt / completion (lists of messages, as in TRL datasets) go through the template
            pairs = [
                split_chat(list(p) + list(c), tokenizer) if isinstance(p, list) and isinstance(c, list) else (p, c)
                for p, c in zip(batch["prompt"], batch["completion"])
            ]
        templated = kind == "messages" or isinstance(batch["prompt"][0], list)  # the template writes its own bos
        rows = {"input_ids": [], "labels": []}
        for index, (prompt, completion) in zip(indices, pairs):
            if completion is None or not str(completion).strip():
                raise ValueError(
                    f"example {index} has an empty completion: there is nothing to distil. Drop it (dataset.filter) "
                    "or give it a completion."
                )
            p = tokenizer(str(prompt or ""), add_special_tokens=False)["input_ids"]
            if not templated and bos is not None and (not p or p[0] != bos):
                p = [bos] + p
            c = tokenizer(str(completion), add_special_tokens=False)["input_ids"]
            if eos is not None and c[-1:] != [eos]:  # a chat template may already end the turn with it
                c = c + [eos]
            example = encode_example(p, c, max_length, where=f"example {index}")
            rows["input_ids"].append(example["input_ids"])
            rows["labels"].append(example["labels"])
        return rows

    return dataset.map(
        encode,
        batched=True,
        with_indices=True,
        remove_columns=dataset.column_names,
        desc=desc or "tokenizing prompt/completion",
    )


def prompt_length(labels: Sequence[int]) -> int:
    """Tokens before the first completion token (the first label that is not -100)."""
    for i, label in enumerate(labels):
        if label != IGNORE_INDEX:
            return i
    return len(labels)


def next_token_mask(completion_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: positions whose logits predict a completion token (causal LMs predict the next token).

    Position i scores token i + 1, so the mask is `completion_mask` shifted left by one; the last
    position predicts nothing in the batch.
    """
    mask = torch.zeros_like(completion_mask, dtype=torch.bool)  # (B, L)
    mask[:, :-1] = completion_mask[:, 1:].bool()
    return mask


def _pad(rows: list[list[int]], value: int, left: bool, multiple: int | None) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    if multiple:
        width = -(-width // multiple) * multiple
    # One tensor from padded Python lists: far cheaper than a tensor per row (collation is on the step's path).
    padded = [[value] * (width - len(r)) + list(r) if left else list(r) + [value] * (width - len(r)) for r in rows]
    return torch.tensor(padded, dtype=torch.long).reshape(len(rows), width)  # (B, L)


def pad_prompt_completion(
    prompts: list[list[int]],
    completions: list[list[int]],
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
    completion_labels: list[list[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """The training batch of prompt + completion rows (right padding) and the prompts alone (left padding).

    input_ids / attention_mask / labels / completion_mask: (B, L), prompt then completion then padding.
    prompt_input_ids / prompt_attention_mask: (B, P), padding then prompt, ready for `generate`.
    `completion_labels` (default: the completions) keeps -100 inside a completion where the data has it.
    """
    sequences = [p + c for p, c in zip(prompts, completions)]
    completion_labels = completions if completion_labels is None else completion_labels
    labels = [[IGNORE_INDEX] * len(p) + c for p, c in zip(prompts, completion_labels)]
    input_ids = _pad(sequences, pad_token_id, left=False, multiple=pad_to_multiple_of)  # (B, L)
    attention_mask = _pad([[1] * len(s) for s in sequences], 0, left=False, multiple=pad_to_multiple_of)
    labels = _pad(labels, IGNORE_INDEX, left=False, multiple=pad_to_multiple_of)
    prompt_ids = _pad(prompts, pad_token_id, left=True, multiple=None)  # (B, P)
    prompt_mask = _pad([[1] * len(p) for p in prompts], 0, left=True, multiple=None)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        COMPLETION_MASK: (labels != IGNORE_INDEX).long(),
        PROMPT_INPUT_IDS: prompt_ids,
        PROMPT_ATTENTION_MASK: prompt_mask,
    }


class PromptCompletionCollator:
    """Batches {"input_ids", "labels"} examples (from `tokenize_prompt_completion`) for causal-LM distillation.

    Returns the padded training batch with `completion_mask` (1 on completion tokens) and the prompts
    padded on the left (`prompt_input_ids`, `prompt_attention_mask`) for on-policy generation. The
    prompt of an example is everything before its first label that is not -100.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError(
                "PromptCompletionCollator needs a pad_token_id; for tokenizers without a pad token (GPT-2, Llama) "
                "set tokenizer.pad_token = tokenizer.eos_token first."
            )
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    @classmethod
    def from_tokenizer(cls, tokenizer, pad_to_multiple_of: int | None = None) -> PromptCompletionCollator:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls(pad, pad_to_multiple_of)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        prompts, completions, completion_labels = [], [], []
        for f in features:
            ids, labels = list(f["input_ids"]), list(f["labels"])
            if len(ids) != len(labels):
                raise ValueError(f"an example has {len(ids)} input_ids but {len(labels)} labels; they must align.")
            n = prompt_length(labels)
            prompts.append(ids[:n])
            completions.append(ids[n:])
            completion_labels.append(labels[n:])
        return pad_prompt_completion(
            prompts, completions, self.pad_token_id, self.pad_to_multiple_of, completion_labels
        )


@torch.no_grad()
def completion_nll(model, batch: dict, chunk_size: int | None = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: (sum of next-token negative log-likelihoods over its completion tokens, their number), (B,) each.

    Per-token cross-entropy = sum / count over the examples; perplexity = exp of it. With `chunk_size`,
    and a model whose logits come from an output embedding, the logits are computed chunk by chunk over
    the completion positions only, so that the full (B, L, V) logits are never held; otherwise one
    forward gives them.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: LoRA layers stay active
    labels = batch["labels"]  # (B, L), -100 outside the completions
    targets = labels[:, 1:]  # (B, L-1): position i predicts token i + 1
    keep = targets != IGNORE_INDEX
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(targets)[keep]  # (N,) row ids
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if chunk_size and head is not None and getattr(base, "base_model", base) is not base:
        hidden = base.base_model(**inputs).last_hidden_state[:, :-1][keep]  # (N, d), completion positions only
        y = targets[keep]  # (N,)
        nll = (
            torch.cat(
                [
                    F.cross_entropy(head(hidden[i : i + chunk_size]).float(), y[i : i + chunk_size], reduction="none")
                    for i in range(0, hidden.shape[0], chunk_size)
                ]
            )
            if hidden.shape[0]
            else hidden.new_zeros(0, dtype=torch.float32)
        )  # (N,), one (chunk, V) block at a time
    else:
        logits = model(**inputs).logits[:, :-1].float()  # (B, L-1, V)
        nll = F.cross_entropy(logits[keep], targets[keep], reduction="none")  # (N,)
    per_row = torch.zeros(labels.shape[0], device=nll.device).index_add_(0, rows, nll.float())  # (B,)
    return per_row, keep.sum(1)


def soft_token_mask(inputs: dict) -> torch.Tensor | None:
    """(B, L) positions whose next-token distribution the soft loss compares, for causal-LM batches.

    Prompt/completion batches (with `completion_mask`): the positions that predict a completion token.
    Other batches: the real tokens (attention_mask), as before; None without an attention mask.
    Batches aligned with the teachers' positions (`teacher_position`, routing / cross-tokenizer): the positions
    paired with a teacher position (a subset of the above).
    """
    aligned = inputs.get(TEACHER_POSITION)
    if torch.is_tensor(aligned):
        return aligned >= 0
    completion = inputs.get(COMPLETION_MASK)
    if torch.is_tensor(completion):
        return next_token_mask(completion)
    return inputs.get("attention_mask")
