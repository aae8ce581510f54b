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

from .chunked import OutputHead, accepts_logits_to_keep, chunked_token_nll, next_token_nll
from .data_checks import check_chat_column, check_text_column
from .layers import gathered_parameters
from .modeling import unwrap_peft
from .positions import COMPLETION_MASK, IGNORE_INDEX, next_labels

# Old homes of names that now live in hf_distill.positions, kept importable.
from .positions import next_token_mask as next_token_mask
from .positions import soft_token_mask as soft_token_mask

logger = logging.getLogger(__name__)

PROMPT_COMPLETION = ("prompt", "completion")
MESSAGES = "messages"
# Keys the collator adds next to input_ids / attention_mask / labels (and COMPLETION_MASK, see
# hf_distill.positions); the trainer reads them, models never see them.
PROMPT_INPUT_IDS = "prompt_input_ids"
PROMPT_ATTENTION_MASK = "prompt_attention_mask"


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


def split_chat(messages: list[dict], tokenizer, where: str = "a conversation") -> tuple[str, str]:
    """(prompt text, completion text) of a conversation, rendered with the tokenizer's chat template.

    The prompt is every message but the last, followed by the template's generation prompt; the
    completion is the rest of the rendered conversation (the last message and its end-of-turn markup).

    Args:
        messages: [{"role": ..., "content": ...}, ...], the last one the assistant's answer.
        tokenizer: a tokenizer with a `chat_template`.
        where: which example this is (e.g. "example 3 of --train_file chat.jsonl"), for the error messages.
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
            f"message followed by a final 'assistant' message (the completion). ({where})"
        )
    try:
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as e:  # jinja2's TemplateError: the template's raise_exception(...), e.g. "roles must alternate"
        if not type(e).__module__.startswith("jinja2"):
            raise
        roles = [m.get("role") for m in messages]
        raise ValueError(
            f"{where}: the tokenizer's chat template refused the conversation with roles {roles}: {e}. Change that "
            "row to the roles and order the template accepts (e.g. fold a 'system' message into the first 'user' "
            "message, alternate 'user' and 'assistant'), or use a tokenizer whose template accepts them."
        ) from None
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


def _is_blank(value) -> bool:
    missing = value is None or (isinstance(value, float) and value != value)  # None / NaN
    return missing or (isinstance(value, str) and not value.strip())


def check_prompt_completion(dataset, source: str | None = None) -> str:
    """The format of `dataset` ('prompt_completion' or 'messages') after checking every row's values: strings, or
    lists of chat messages (prompt and completion alike); a completion is never empty, a prompt never None.

    Args:
        dataset: a `datasets.Dataset` with prompt / completion or messages columns.
        source: where its rows come from, e.g. "--train_file train.jsonl" (for the messages).
    """
    kind = data_format(dataset.column_names)
    if kind == "messages":
        check_chat_column(dataset[MESSAGES], MESSAGES, source)
        return kind
    prompts, completions = list(dataset["prompt"]), list(dataset["completion"])
    of = f" of {source}" if source else ""
    for row, completion in enumerate(completions):
        if _is_blank(completion) or (isinstance(completion, (list, tuple)) and not completion):
            raise ValueError(
                f"example {row}{of} has an empty completion: there is nothing to distil. Drop it (dataset.filter) or "
                "give it a completion."
            )
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        chat = [isinstance(v, (list, tuple)) for v in (prompt, completion)]
        if chat[0] != chat[1] and prompt is not None:
            kinds = ["a list of chat messages" if c else "text" for c in chat]
            raise ValueError(
                f"example {row}{of}: the prompt is {kinds[0]} but the completion is {kinds[1]}. Give both as lists of "
                "messages (conversational format, rendered with the chat template), both as strings, or the whole "
                "conversation in a 'messages' column."
            )
    if any(isinstance(c, (list, tuple)) for c in completions):
        check_chat_column(prompts, "prompt", source)
        check_chat_column(completions, "completion", source)
    else:
        check_text_column(prompts, "prompt", source, blank="allowed")  # "" = no prompt; None is refused
        check_text_column(completions, "completion", source)
    return kind


def tokenize_prompt_completion(
    dataset, tokenizer, max_length: int, append_eos: bool = True, desc: str | None = None, source: str | None = None
):
    """Map a `datasets.Dataset` in either format to {"input_ids", "labels"} (see `encode_example`).

    Texts are tokenised without special tokens (a chat template writes its own); the tokenizer's bos
    token, if it has one, starts each plain-text prompt, and the end token (`end_token_id`) closes
    each completion when `append_eos`, so that the student learns where to stop generating. Every row
    is checked first (`check_prompt_completion`): a number, a struct or None where text belongs is a
    ValueError naming the row, not a Python repr trained on.

    Args:
        dataset: a `datasets.Dataset` with prompt / completion or messages columns.
        tokenizer: the teacher's tokenizer (with a chat template for chat data).
        max_length: tokens per example; completions are cut to fit, prompts never.
        append_eos: close each completion with the end token.
        desc: the progress bar's label.
        source: where the rows come from, e.g. "--train_file train.jsonl" (for the error messages).
    """
    kind = check_prompt_completion(dataset, source)
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = end_token_id(tokenizer) if append_eos else None
    of = f" of {source}" if source else ""

    def encode(batch, indices):
        pairs, templated = _text_pairs(batch, indices, kind, tokenizer, of)
        rows = {"input_ids": [], "labels": []}
        for index, (prompt, completion) in zip(indices, pairs):
            # a chat template writes its own bos
            example = _encode_texts(
                prompt, completion, tokenizer, max_length, None if templated else bos, eos, f"example {index}{of}"
            )
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


def _text_pairs(batch: dict, indices: list[int], kind: str, tokenizer, of: str) -> tuple[list[tuple], bool]:
    """(prompt text, completion text) of each row of a batch of `kind` (`check_prompt_completion`), and whether
    a chat template rendered them; `of` names the source in error messages."""
    if kind == "messages":
        pairs = [split_chat(m, tokenizer, f"example {i}{of}") for m, i in zip(batch[MESSAGES], indices)]
    else:  # conversational prompt / completion (lists of messages, as in TRL datasets) go through the template
        pairs = [
            split_chat(list(p) + list(c), tokenizer, f"example {i}{of}") if isinstance(c, list) else (p, c)
            for p, c, i in zip(batch["prompt"], batch["completion"], indices)
        ]
    return pairs, kind == "messages" or isinstance(batch["completion"][0], list)


def _encode_texts(
    prompt: str, completion: str, tokenizer, max_length: int, bos: int | None, eos: int | None, where: str
) -> dict[str, list[int]]:
    """`encode_example` of one text pair: `bos` (unless None) starts the prompt, `eos` (unless None) ends the
    completion, neither twice."""
    if not completion.strip():
        raise ValueError(
            f"{where} has an empty completion: there is nothing to distil. Drop it (dataset.filter) or give it a "
            "completion."
        )
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if bos is not None and (not p or p[0] != bos):
        p = [bos] + p
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if eos is not None and c[-1:] != [eos]:  # a chat template may already end the turn with it
        c = c + [eos]
    return encode_example(p, c, max_length, where=where)


def prompt_length(labels: Sequence[int]) -> int:
    """Tokens before the first completion token (the first label that is not -100)."""
    for i, label in enumerate(labels):
        if label != IGNORE_INDEX:
            return i
    return len(labels)


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


def is_packed(batch: dict) -> bool:
    """Whether a causal-LM batch is packed: rows concatenated, `position_ids` restarting per row, no attention_mask.

    Args:
        batch: a training batch.
    """
    return torch.is_tensor(batch.get("position_ids")) and batch.get("attention_mask") is None


def pack_padded(batch: dict) -> dict:
    """The padding-free form of a padded causal-LM batch: its rows' real tokens as one (1, N) sequence.

    input_ids / labels / completion_mask (B, L) become (1, N), N = attention_mask.sum(); `position_ids` (1, N)
    restart at 0 with each row, which is how transformers' attention keeps the rows apart (block-diagonal causal
    masks for eager / sdpa / flex, variable-length kernels for flash-attention); attention_mask is dropped (with
    it, transformers would not look for packed rows). Each row's first token gets label -100 and completion 0,
    so that no position predicts the next row's first token: the losses see the same positions as padded. Other
    entries (the left-padded prompts for generation, ...) are kept as they are.

    Args:
        batch: input_ids, attention_mask (B, L), with labels and completion_mask (B, L) where the batch has them.
    """
    mask = batch["attention_mask"].bool()  # (B, L): each row's real tokens
    packed = {k: v for k, v in batch.items() if k != "attention_mask"}
    position = mask.long().cumsum(1) - 1  # (B, L): 0 at each row's first real token
    packed["input_ids"] = batch["input_ids"][mask][None]  # (1, N)
    packed["position_ids"] = position[mask][None]  # (1, N)
    first = mask & (position == 0)  # (B, L)
    if torch.is_tensor(batch.get("labels")):
        packed["labels"] = batch["labels"].masked_fill(first, IGNORE_INDEX)[mask][None]
    if torch.is_tensor(batch.get(COMPLETION_MASK)):
        packed[COMPLETION_MASK] = batch[COMPLETION_MASK].masked_fill(first, 0)[mask][None]
    return packed


class PromptCompletionCollator:
    """Batches {"input_ids", "labels"} examples (from `tokenize_prompt_completion`) for causal-LM distillation.

    Returns the padded training batch with `completion_mask` (1 on completion tokens) and the prompts
    padded on the left (`prompt_input_ids`, `prompt_attention_mask`) for on-policy generation. The
    prompt of an example is everything before its first label that is not -100. With `pack=True` the training
    rows are concatenated without padding (`pack_padded`): both models then run on real tokens only, with the
    same losses (docs/packing.md).

    Args:
        pad_token_id: the id padding is filled with (the prompts for generation are padded either way).
        pad_to_multiple_of: pad the training rows to a multiple of this length (not with pack=True).
        pack: return padding-free packed batches (causal LMs whose attention honours packed position_ids).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, pack: bool = False):
        if pad_token_id is None:
            raise ValueError(
                "PromptCompletionCollator needs a pad_token_id; for tokenizers without a pad token (GPT-2, Llama) "
                "set tokenizer.pad_token = tokenizer.eos_token first."
            )
        if pack and pad_to_multiple_of:
            raise ValueError(
                "pack=True makes batches without padding, so pad_to_multiple_of cannot apply; drop one of them."
            )
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pack = bool(pack)

    @classmethod
    def from_tokenizer(cls, tokenizer, pad_to_multiple_of: int | None = None, pack: bool = False):
        """The collator with the tokenizer's pad token (its eos token when it has none).

        Args:
            tokenizer: the student's tokenizer.
            pad_to_multiple_of: see the class.
            pack: see the class.
        """
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls(pad, pad_to_multiple_of, pack)

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
        batch = pad_prompt_completion(
            prompts, completions, self.pad_token_id, self.pad_to_multiple_of, completion_labels
        )
        return pack_padded(batch) if self.pack else batch


@torch.no_grad()
def completion_nll(model, batch: dict, chunk_size: int | None = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: (sum of next-token negative log-likelihoods over its completion tokens, their number), (B,) each.

    Per-token cross-entropy = sum / count over the examples; perplexity = exp of it. With `chunk_size`, and a
    causal LM whose logits come from a plain output layer (`hf_distill.chunked.OutputHead`), the model runs with
    logits_to_keep=1 and the logits are computed chunk by chunk over the completion positions only
    (`chunked_token_nll`, the chunked loss's own cross-entropy), so that the full (B, L, V) logits are never
    held; otherwise one forward gives them.

    Args:
        model: the causal LM (a PeftModel too: its adapters stay active).
        batch: input_ids, attention_mask and labels (B, L), labels -100 outside the completions; or a packed
            batch (`pack_padded`: input_ids, position_ids, labels (1, N)), whose rows are told apart by
            position_ids restarting at 0.
        chunk_size: logits rows per chunk, or None for one full forward.
    """
    labels = batch["labels"]  # (B, L), -100 outside the completions
    targets = next_labels(labels)  # (B, L): position i predicts token i + 1
    keep = targets != IGNORE_INDEX
    if is_packed(batch):  # (1, N): row r is the r-th run of positions starting at 0
        row_of = (batch["position_ids"] == 0).long().cumsum(1) - 1
        inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    else:
        row_of = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(targets)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}
    n_rows = int(row_of.max()) + 1 if row_of.numel() else 0
    rows = row_of[keep]  # (N,) row ids
    head = _plain_head(model) if chunk_size else None
    if head is not None:
        out = model(**inputs, logits_to_keep=1, output_hidden_states=True)
        hidden = out["hidden_states"][-1][keep]  # (N, H), completion positions only
        # The head's weight is read outside its module's forward: gathered while used where ZeRO-3 partitions it.
        with gathered_parameters([head.weight, head.bias]):
            nll = chunked_token_nll(hidden, head, targets[keep], chunk_size)  # (N,)
    else:
        logits = model(**inputs).logits  # (B, L, V)
        nll = next_token_nll(logits[keep], targets[keep], reduction="none")  # (N,)
    per_row = torch.zeros(n_rows, device=nll.device).index_add_(0, rows, nll.float())  # (B,)
    counts = torch.zeros(n_rows, dtype=torch.long, device=rows.device).index_add_(0, rows, torch.ones_like(rows))
    return per_row, counts


def _plain_head(model) -> OutputHead | None:
    """The output layer of a causal LM that can skip its full logits, or None (a LoRA head, another task)."""
    if not accepts_logits_to_keep(model):
        return None
    try:
        head = OutputHead.from_model(unwrap_peft(model))
    except ValueError:
        return None
    if _fsdp_sharded(model, head.weight):  # only whole inside FSDP's forward: the full forward computes the logits
        return None
    return head


def _fsdp_sharded(model, weight) -> bool:
    """Whether FSDP shards `weight` (an FSDP2 DTensor) or wraps `model` (FSDP1 flat parameters)."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.tensor import DTensor

    return isinstance(weight, DTensor) or any(isinstance(m, FullyShardedDataParallel) for m in model.modules())
