"""Which positions of a batch count for each loss term, and how many: the ignored-label value, masks, token counts.

One home for
- `IGNORE_INDEX` (-100): the label of a token or example that carries no hard label (PyTorch's ignore_index;
  the DistillationTrainer reads a batch whose labels are all -100 as "soft targets only");
- the masks: `token_mask` (3-D logits: the real tokens), `next_token_mask` / `soft_token_mask` (causal LMs: the
  positions that predict a completion token), `causal_lm_rows` (the rows the chunked output-layer loss computes);
- the counts: `token_counts` of one micro-batch, `step_token_totals` of an optimizer step's micro-batches (over
  the processes too), and `token_scales`, the per-term factors that turn per-micro-batch means into one big
  batch's mean; `StepTokens` carries the step's totals from `get_batch_samples` to `compute_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
# Key a prompt/completion collator adds next to input_ids / attention_mask / labels (1 on completion tokens).
COMPLETION_MASK = "completion_mask"
# (B, L) teacher position paired with each student position, -1 where none (routing / cross-tokenizer batches,
# hf_distill.cross_tokenizer).
TEACHER_POSITION = "teacher_position"


# ---- masks ---------------------------------------------------------------------------------------------------


def token_mask(attention_mask: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor | None:
    """(B, L) bool positions of 3-D logits (B, L, C) that count: the attention mask when it lines up, else None.

    Args:
        attention_mask: (B, L) 1 on the positions that count (or a bool mask), or None.
        logits: the logits the mask is for; 2-D logits (one position per example) get None.
    """
    if logits.dim() == 3 and attention_mask is not None and attention_mask.shape == logits.shape[:2]:
        return attention_mask.bool()
    return None


def next_token_mask(completion_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: positions whose logits predict a completion token (causal LMs predict the next token).

    Position i scores token i + 1, so the mask is `completion_mask` shifted left by one; the last
    position predicts nothing in the batch.

    Args:
        completion_mask: (B, L) 1 on completion tokens.
    """
    mask = torch.zeros_like(completion_mask, dtype=torch.bool)  # (B, L)
    mask[:, :-1] = completion_mask[:, 1:].bool()
    return mask


def soft_token_mask(inputs: dict) -> torch.Tensor | None:
    """(B, L) positions whose next-token distribution the soft loss compares, for causal-LM batches.

    Prompt/completion batches (with `completion_mask`): the positions that predict a completion token.
    Other batches: the real tokens (attention_mask), as before; None without an attention mask.
    Batches paired with teacher positions (`teacher_position`: routed or cross-tokenizer teachers): the paired
    positions (a subset of the above).

    Args:
        inputs: the batch (input_ids, attention_mask, optionally completion_mask / teacher_position).
    """
    paired = inputs.get(TEACHER_POSITION)
    if torch.is_tensor(paired):
        return paired >= 0
    completion = inputs.get(COMPLETION_MASK)
    if torch.is_tensor(completion):
        return next_token_mask(completion)
    return inputs.get("attention_mask")


def next_labels(labels: torch.Tensor) -> torch.Tensor:
    """(B, L): the label of the token after each position (the model's shifted targets), -100 at the end.

    Args:
        labels: (B, L) token labels, -100 where none.
    """
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def causal_lm_rows(
    attention_mask: torch.Tensor | None, labels: torch.Tensor | None, shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The (B, L) positions to compute logits at, and per kept row its soft flag and next-token label.

    Soft rows are the positions of `attention_mask` (the soft mask: real tokens, or `soft_token_mask`); hard rows
    are the positions whose next label is not -100 (the model's shifted cross-entropy). Returns keep (B, L) bool,
    soft_mask (N,) bool and next_labels (N,) (None without labels); N = keep.sum().

    Args:
        attention_mask: (B, L) the soft positions, or None for all.
        labels: (B, L) token labels (-100 where none), or None.
        shape: (B, L) of the batch.
    """
    B, L = shape
    soft = torch.ones(B, L, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if labels is None:
        return soft, soft[soft], None
    shifted = next_labels(labels)  # (B, L)
    keep = soft.to(labels.device) | (shifted != IGNORE_INDEX)
    return keep, soft.to(keep.device)[keep], shifted[keep]


def has_labels(labels) -> bool:
    """Whether a batch's `labels` carry at least one hard label (a tensor not all -100).

    Args:
        labels: the batch's labels (a tensor, or None).
    """
    return torch.is_tensor(labels) and not bool((labels == IGNORE_INDEX).all())


# ---- counts --------------------------------------------------------------------------------------------------


def token_counts(batch: dict) -> torch.Tensor:
    """(2,) long: the soft positions (`soft_token_mask`) and the hard ones (next-token labels != -100) of a
    causal-LM batch, counted the way `causal_lm_rows` selects them.

    Args:
        batch: a causal-LM batch (input_ids, attention_mask, labels, optionally completion_mask).
    """
    ids = batch.get("input_ids")
    mask = soft_token_mask(batch)  # prompt/completion batches: the completion positions only
    soft = mask.sum() if torch.is_tensor(mask) else torch.tensor(ids.numel() if torch.is_tensor(ids) else 0)
    labels = batch.get("labels")
    hard = (labels[..., 1:] != IGNORE_INDEX).sum() if torch.is_tensor(labels) else torch.tensor(0)
    return torch.stack([soft.long().cpu(), hard.long().cpu()])


def step_token_totals(batches: list[dict], device, gather=None) -> torch.Tensor:
    """(2,) long on `device`: `token_counts` (soft, hard) summed over one optimizer step's micro-batches, and over
    the processes with `gather` (e.g. accelerator.gather, for average_tokens_across_devices).

    Args:
        batches: the micro-batches of one optimizer step.
        device: where the totals go (gathering needs the accelerator's device).
        gather: a function gathering a (1, 2) tensor from every process, or None on one process.
    """
    totals = torch.stack([token_counts(b) for b in batches]).sum(0).to(device)  # (k, 2) -> (2,): soft, hard
    if gather is not None:
        totals = gather(totals[None]).sum(0)  # (P, 2) -> (2,)
    return totals


def token_scales(
    weights: dict[str, float], local: torch.Tensor, totals: tuple | None, steps: int, processes: int = 1
) -> dict[str, float]:
    """Per-term factors (for `combine`) that make k micro-batches on P processes sum to one big batch's loss.

    Token-level terms of a causal LM are per-token means of their micro-batch; "soft_loss" and "hard_loss" are
    scaled by local tokens * P / tokens of the whole step (DDP then averages over the P processes). Every other
    term is a per-batch mean and is divided by the k = `steps` micro-batches, as the Trainer does.

    Args:
        weights: the objective's weights (their names are the terms scaled).
        local: (2,) this micro-batch's (soft, hard) counts (`token_counts`).
        totals: (soft, hard) counts of the whole step (None entries: not counted), or None: 1 / k for all.
        steps: the micro-batches of the step (gradient accumulation).
        processes: P when the counts are summed over the processes, else 1.
    """
    scales = {name: 1.0 / steps for name in weights}
    if totals is None:
        return scales
    for i, name in enumerate(("soft_loss", "hard_loss")):
        total = float(totals[i]) if totals[i] is not None else 0.0
        if total > 0:
            scales[name] = float(local[i]) * processes / total
    return scales


class StepTokens:
    """The token totals of the optimizer step being run, counted once per step and read by each micro-batch.

    `count` (from Trainer.get_batch_samples) sums `token_counts` over the step's micro-batches (and processes)
    and returns num_items_in_batch (the hard count, None when 0); `scales` gives `token_scales` for one of them.
    """

    def __init__(self):
        self.totals: torch.Tensor | None = None  # (2,) soft, hard on the CPU; None before the first step

    def count(self, batches: list[dict], device, gather=None) -> torch.Tensor | None:
        """Count a step's micro-batches; returns num_items_in_batch (next-token labels) or None.

        Args:
            batches: the step's micro-batches.
            device: the accelerator's device.
            gather: accelerator.gather when the counts are summed over the processes, else None.
        """
        totals = step_token_totals(batches, device, gather)  # (2,): soft, hard
        self.totals = totals.cpu()
        return totals[1] if int(totals[1]) > 0 else None

    def scales(
        self, weights: dict[str, float], batch: dict, num_items_in_batch, steps: int, processes: int = 1
    ) -> dict[str, float]:
        """`token_scales` of one micro-batch of the counted step.

        Args:
            weights: the objective's weights.
            batch: the micro-batch.
            num_items_in_batch: the hard total the Trainer passes to compute_loss (None: not counted).
            steps: the step's micro-batches.
            processes: P when the totals were summed over the processes, else 1.
        """
        totals = None if self.totals is None else (self.totals[0], num_items_in_batch)
        return token_scales(weights, token_counts(batch), totals, steps, processes)
