"""Pure tensor functions for distillation losses.

Nothing here knows about the Trainer: every function takes tensors and returns a scalar
tensor, so each loss can be checked against a hand computation and reused by any loop.
All softmax / KL arithmetic runs in float32, whatever dtype the models ran in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _flatten_positions(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(..., C) -> (P, C): keep the positions where `mask` is true (all when mask is None)."""
    if mask is None:
        return x.reshape(-1, x.shape[-1])
    if mask.shape != x.shape[:-1]:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not match the logits' positions {tuple(x.shape[:-1])}."
        )
    return x[mask.bool()]


def soft_target_loss_from_log_probs(
    student_logits: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """T^2 * mean over positions of KL(p_t || softmax(z_s / T)), with log p_t already given.

    `teacher_log_probs` are the teacher's log-probabilities at temperature T (for an ensemble,
    the combined target). Shapes: (..., C) for both, `mask` (...) selects the positions.
    A fully masked batch gives 0 (with a gradient path), never NaN.
    """
    s = _flatten_positions(student_logits, mask).float()  # (P, C)
    log_pt = _flatten_positions(teacher_log_probs, mask).float()  # (P, C)
    if s.shape != log_pt.shape:
        raise ValueError(
            f"student logits {tuple(s.shape)} and teacher targets {tuple(log_pt.shape)} differ in shape: "
            "teacher and student must predict over the same classes / vocabulary."
        )
    if s.shape[0] == 0:
        return student_logits.float().sum() * 0.0
    log_ps = F.log_softmax(s / temperature, dim=-1)
    # xlogy-style: positions where p_t == 0 contribute 0 (kl_div with log_target handles it).
    kl = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(-1)  # (P,)
    return kl.mean() * temperature**2


def soft_target_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton et al. soft-target loss: T^2 * mean_positions sum_c p_t[c] (log p_t[c] - log p_s[c]).

    p_t = softmax(teacher_logits / T), log p_s = log_softmax(student_logits / T), in float32.
    2-D logits (B, C): one position per row. 3-D logits (B, L, C): `mask` (B, L), usually the
    attention mask, selects the positions that count.
    """
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return soft_target_loss_from_log_probs(student_logits, teacher_log_probs, temperature, mask)


def logit_mse_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over positions of the mean squared difference of raw outputs (logit matching / regression).

    Used for regression heads (one output, no softmax) and as `logit_loss="mse"`, the
    high-temperature limit of the soft-target loss.
    """
    s = _flatten_positions(student_logits, mask).float()
    t = _flatten_positions(teacher_logits, mask).float()
    if s.shape[0] == 0:
        return student_logits.float().sum() * 0.0
    return (s - t).pow(2).mean()


def ensemble_log_probs(teacher_logits: list[torch.Tensor], temperature: float, mode: str = "mean") -> torch.Tensor:
    """Combine several teachers' predictions at temperature T into one target, as log-probabilities.

    mode="mean": log of the arithmetic mean of the teachers' probabilities.
    mode="geometric": the normalised geometric mean, i.e. log_softmax of the mean log-probability.
    """
    log_probs = torch.stack([F.log_softmax(z.float() / temperature, dim=-1) for z in teacher_logits])  # (K, ..., C)
    if mode == "mean":
        return torch.logsumexp(log_probs, dim=0) - math.log(len(teacher_logits))
    if mode == "geometric":
        return F.log_softmax(log_probs.mean(dim=0), dim=-1)
    raise ValueError(f"unknown ensemble mode {mode!r}: use 'mean' or 'geometric'.")


def hidden_state_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: str = "mse",
) -> torch.Tensor:
    """Distance between two (B, L, D) hidden states, averaged over the tokens where `mask` is 1.

    kind="mse": mean over tokens of the mean squared error over the D hidden dimensions.
    kind="cosine": mean over tokens of 1 - cosine similarity.
    The student's states must already be projected to the teacher's width.
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"hidden states differ in shape: student {tuple(student_hidden.shape)} vs teacher "
            f"{tuple(teacher_hidden.shape)}; project the student's states to the teacher's width first."
        )
    s = _flatten_positions(student_hidden, mask).float()  # (N_tokens, D)
    t = _flatten_positions(teacher_hidden, mask).float()
    if s.shape[0] == 0:
        return student_hidden.float().sum() * 0.0
    if kind == "mse":
        return (s - t).pow(2).mean(-1).mean()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()
    raise ValueError(f"unknown hidden loss {kind!r}: use 'mse' or 'cosine'.")


# Finite stand-in for -inf: softmax gives it probability exactly 0 at any temperature, and unlike
# -inf it never produces 0 * inf = NaN in the KL.
_MASKED_LOGIT = -1e9


def mask_logits(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """float32 copy of `logits` (..., C) with the entries where `keep` (..., C) is False set to -1e9.

    Used where the classes are positions (extractive QA start/end over tokens): padding positions
    get zero probability in both teacher and student, so the softmax runs over real tokens only.
    """
    if keep.shape != logits.shape:
        raise ValueError(f"keep mask {tuple(keep.shape)} does not match logits {tuple(logits.shape)}.")
    return logits.float().masked_fill(~keep.bool(), _MASKED_LOGIT)


def attention_map_loss(
    student_attentions: torch.Tensor,
    teacher_attentions: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(teacher || student) between attention distributions, MiniLM / TinyBERT-style attention transfer.

    Inputs are attention probabilities (B, H, L, L) (rows sum to 1 over the keys), the same number of
    heads in both. Per (head, query) row: sum_k a_t log(a_t / a_s); averaged over heads and over the
    query positions where `mask` (B, L) is 1. Keys with a_t = 0 (padding) contribute 0.
    """
    if student_attentions.shape != teacher_attentions.shape:
        raise ValueError(
            f"attention maps differ in shape: student {tuple(student_attentions.shape)} vs teacher "
            f"{tuple(teacher_attentions.shape)}; attention distillation needs the same number of heads and tokens."
        )
    s = student_attentions.float()
    t = teacher_attentions.float()
    tiny = torch.finfo(torch.float32).tiny
    kl = (torch.xlogy(t, t) - t * torch.log(s.clamp_min(tiny))).sum(-1)  # (B, H, L): one value per query row
    per_query = kl.transpose(1, 2)  # (B, L, H)
    rows = _flatten_positions(per_query, mask)  # (P, H)
    if rows.shape[0] == 0:
        return s.sum() * 0.0
    return rows.mean()


def topk_soft_target_loss(
    student_logits: torch.Tensor,
    topk_indices: torch.Tensor,
    topk_values: torch.Tensor,
    rest_mass: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft-target loss against a cached top-k teacher: T^2 * KL over the k kept classes plus one "rest" bin.

    `topk_values` (..., k) are the teacher's raw logits at `topk_indices` (..., k); `rest_mass` (...)
    is the teacher probability (at temperature T) of all other classes together. The student's
    distribution at T is coarsened the same way (k classes + the sum of the others). With k = C the
    result equals `soft_target_loss`; otherwise it is the KL between the coarsened distributions, a
    lower bound of the full one.
    """
    s = _flatten_positions(student_logits, mask).float()  # (P, C)
    idx = _flatten_positions(topk_indices, mask).long()  # (P, k)
    vals = _flatten_positions(topk_values, mask).float()  # (P, k)
    rest = (rest_mass.reshape(-1) if mask is None else rest_mass[mask.bool()]).float().clamp(0.0, 1.0)  # (P,)
    if s.shape[0] == 0:
        return student_logits.float().sum() * 0.0
    # teacher: log q_i = v_i / T - log Z, with Z from the kept mass: sum_i q_i = 1 - rest
    kept = (1.0 - rest).clamp_min(1e-12)
    log_q = vals / temperature - torch.logsumexp(vals / temperature, dim=-1, keepdim=True) + kept.log().unsqueeze(-1)
    log_ps_all = F.log_softmax(s / temperature, dim=-1)
    log_ps = log_ps_all.gather(-1, idx)  # (P, k)
    log_ps_kept = torch.logsumexp(log_ps, dim=-1)  # (P,) log of the student's mass on the k classes
    log_ps_rest = torch.log1p(-log_ps_kept.exp().clamp(max=1.0 - 1e-7))  # (P,)
    kl = (log_q.exp() * (log_q - log_ps)).sum(-1)
    kl = kl + torch.xlogy(rest, rest) - rest * log_ps_rest
    return kl.mean() * temperature**2
