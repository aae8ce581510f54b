"""Pure tensor functions for distillation losses, and the divergence registry.

Nothing here knows about the Trainer: every function takes tensors and returns tensors, so each loss
can be checked against a hand computation and reused by any loop. All softmax / divergence arithmetic
runs in float32, whatever dtype the models ran in.

The soft loss is built from three pieces, each written once:

- `teacher_target` / `teacher_log_probs`: the teachers' logits -> ONE target (the only place where
  several teachers are combined);
- `DIVERGENCES`: name -> fn(log_ps (P, C), log_pt (P, C), **params) -> (P,), one value per position.
  A new divergence is one function plus one entry. Each keyword parameter (default in the function's
  signature) also needs one `DIVERGENCE_PARAMS` entry (range, help) and one line in `DistillationArguments`,
  `name: float = divergence_field("name")`; tests/test_losses.py checks that the three agree.
- `divergence_loss` (full targets) / `topk_divergence_loss` (cached top-k targets): flatten the kept
  positions, apply the divergence at temperature T, reduce, scale by T^2.

`"mse"` compares raw logits, not distributions, so it lives in `LOGIT_DIVERGENCES` (same signature,
applied to raw student / teacher logits, no temperature, no T^2); `divergence_loss` then takes the
teachers' mean raw logits (what `teacher_target(..., divergence="mse")` returns) as its target.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Finite stand-in for -inf: softmax gives it probability exactly 0 at any temperature, and unlike
# -inf it never produces 0 * inf = NaN in a KL.
_MASKED_LOGIT = -1e9


def _flatten_positions(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(..., C) -> (P, C): keep the positions where `mask` is true (all when mask is None)."""
    if mask is None:
        return x.reshape(-1, x.shape[-1])
    if mask.shape != x.shape[:-1]:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not match the logits' positions {tuple(x.shape[:-1])}."
        )
    return x[mask.bool()]


# ---- divergences: fn(log_ps (P, C), log_pt (P, C), **params) -> (P,) ------------------------------
# Inputs are float32 log-probabilities at temperature T (student s, teacher t). Terms of the form
# p * (log p - log q) go through F.kl_div(log q, log p, log_target=True), which is exact where p
# underflows to 0 (no 0 * -inf). Mixtures are formed in log space (logaddexp), never as
# log(a * p + b * q), so they stay finite when probabilities underflow (extreme logits, fp16 / bf16).


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position: sum_c p_c (log p_c - log q_c). (P, C), (P, C) -> (P,)."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


def _log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, weight_p: float) -> torch.Tensor:
    """log(w * p + (1 - w) * q) for 0 < w < 1, in log space. (P, C)."""
    return torch.logaddexp(log_p + math.log(weight_p), log_q + math.log1p(-weight_p))


def forward_kl(log_ps: torch.Tensor, log_pt: torch.Tensor) -> torch.Tensor:
    """KL(p_t || p_s): Hinton et al.'s soft-target loss (mean-seeking: the student covers all teacher modes)."""
    return _kl(log_pt, log_ps)


def reverse_kl(log_ps: torch.Tensor, log_pt: torch.Tensor) -> torch.Tensor:
    """KL(p_s || p_t): MiniLLM's choice (mode-seeking: the student may drop teacher modes it cannot fit)."""
    return _kl(log_ps, log_pt)


def jsd(log_ps: torch.Tensor, log_pt: torch.Tensor, jsd_beta: float = 0.5) -> torch.Tensor:
    """Generalized JSD of GKD (Agarwal et al. 2024) in TRL's convention.

    For 0 < beta < 1: M = beta * p_t + (1 - beta) * p_s, JSD_beta = beta * KL(p_t || M) + (1 - beta) * KL(p_s || M).
    beta = 0 is forward KL and beta = 1 reverse KL, by definition (the bounded mixture form itself tends to 0
    there; TRL uses the same endpoints).
    """
    if jsd_beta == 0.0:
        return forward_kl(log_ps, log_pt)
    if jsd_beta == 1.0:
        return reverse_kl(log_ps, log_pt)
    log_m = _log_mixture(log_pt, log_ps, jsd_beta)  # (P, C)
    return jsd_beta * _kl(log_pt, log_m) + (1.0 - jsd_beta) * _kl(log_ps, log_m)


def skew_forward_kl(log_ps: torch.Tensor, log_pt: torch.Tensor, skew_alpha: float = 0.1) -> torch.Tensor:
    """DistiLLM's skew KL (Ko et al. 2024): KL(p_t || alpha * p_t + (1 - alpha) * p_s); alpha = 0 is forward KL."""
    if skew_alpha == 0.0:
        return forward_kl(log_ps, log_pt)
    return _kl(log_pt, _log_mixture(log_pt, log_ps, skew_alpha))


def skew_reverse_kl(log_ps: torch.Tensor, log_pt: torch.Tensor, skew_alpha: float = 0.1) -> torch.Tensor:
    """DistiLLM's skew reverse KL: KL(p_s || alpha * p_s + (1 - alpha) * p_t); alpha = 0 is reverse KL."""
    if skew_alpha == 0.0:
        return reverse_kl(log_ps, log_pt)
    return _kl(log_ps, _log_mixture(log_ps, log_pt, skew_alpha))


def tvd(log_ps: torch.Tensor, log_pt: torch.Tensor) -> torch.Tensor:
    """Total variation distance 1/2 * sum_c |p_t - p_s| (bounded by 1, symmetric)."""
    return 0.5 * (log_pt.exp() - log_ps.exp()).abs().sum(-1)


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over classes of the squared difference of raw logits, per position. (P, C), (P, C) -> (P,)."""
    return (student_logits - teacher_logits).pow(2).mean(-1)


DIVERGENCES: dict[str, Callable[..., torch.Tensor]] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "skew_forward_kl": skew_forward_kl,
    "skew_reverse_kl": skew_reverse_kl,
    "tvd": tvd,
}
# Divergences on raw logits: no softmax, no temperature, no T^2 (logit matching / regression heads).
LOGIT_DIVERGENCES: dict[str, Callable[..., torch.Tensor]] = {"mse": logit_mse}
DIVERGENCE_NAMES: tuple[str, ...] = (*DIVERGENCES, *LOGIT_DIVERGENCES)


@dataclass(frozen=True)
class DivergenceParam:
    """A keyword parameter of registered divergences: its valid range [low, high] or [low, high) and its help.

    Its default is the one in the divergence function's signature (`divergence_param_default`).
    """

    low: float
    high: float
    high_included: bool
    help: str


# Every keyword parameter of a registered divergence. DistillationArguments has one field per entry
# (`config.divergence_field(name)`), with this help and range and the function's default.
DIVERGENCE_PARAMS: dict[str, DivergenceParam] = {
    "jsd_beta": DivergenceParam(
        0.0,
        1.0,
        True,
        "divergence='jsd': weight beta in [0, 1] of the teacher in the mixture M = beta p_t + (1-beta) p_s; JSD = "
        "beta KL(p_t||M) + (1-beta) KL(p_s||M); beta=0 is forward KL, beta=1 reverse KL (TRL's convention).",
    ),
    "skew_alpha": DivergenceParam(
        0.0,
        1.0,
        False,  # alpha = 1 would make the target the student itself: a zero loss
        "divergence='skew_forward_kl' / 'skew_reverse_kl': skew alpha in [0, 1); KL(p_t || alpha p_t + (1-alpha) "
        "p_s) resp. KL(p_s || alpha p_s + (1-alpha) p_t); alpha=0 is the plain KL.",
    ),
}
# name -> (low, high, high included), read from DIVERGENCE_PARAMS.
DIVERGENCE_PARAM_RANGES: dict[str, tuple[float, float, bool]] = {
    name: (p.low, p.high, p.high_included) for name, p in DIVERGENCE_PARAMS.items()
}


def _divergence_fn(name: str) -> Callable[..., torch.Tensor]:
    fn = DIVERGENCES.get(name) or LOGIT_DIVERGENCES.get(name)
    if fn is None:
        raise ValueError(f"unknown divergence {name!r}: choose one of {list(DIVERGENCE_NAMES)}.")
    return fn


def divergence_params(name: str) -> tuple[str, ...]:
    """Names of the keyword parameters of divergence `name` (e.g. ("jsd_beta",) for "jsd")."""
    return _signature_params(_divergence_fn(name))


@functools.cache
def _signature_params(fn: Callable[..., torch.Tensor]) -> tuple[str, ...]:
    # read once per function: the loss asks on every step
    return tuple(p.name for p in list(inspect.signature(fn).parameters.values())[2:])


def divergence_param_default(param: str) -> float:
    """The default of divergence parameter `param`, from the signature of the registered divergences that take it.

    Args:
        param: a key of `DIVERGENCE_PARAMS`, e.g. "jsd_beta".
    """
    defaults = {
        p.default
        for fn in (*DIVERGENCES.values(), *LOGIT_DIVERGENCES.values())
        for p in list(inspect.signature(fn).parameters.values())[2:]
        if p.name == param
    }
    if len(defaults) != 1 or inspect.Parameter.empty in defaults:
        raise ValueError(
            f"divergence parameter {param!r} needs one default shared by the divergences that take it, "
            f"found {sorted(map(str, defaults))}."
        )
    return defaults.pop()


def check_divergence_params(**params: float) -> None:
    """Raise a ValueError naming the parameter and its valid range when a value is out of range."""
    for name, value in params.items():
        if name not in DIVERGENCE_PARAM_RANGES:
            raise ValueError(f"unknown divergence parameter {name!r}; known: {list(DIVERGENCE_PARAM_RANGES)}.")
        low, high, high_ok = DIVERGENCE_PARAM_RANGES[name]
        ok = isinstance(value, (int, float)) and low <= value and (value <= high if high_ok else value < high)
        if not ok:
            bracket = "]" if high_ok else ")"
            raise ValueError(f"{name} must be in [{low:g}, {high:g}{bracket}, got {value!r}.")


def _checked_params(name: str, params: dict) -> dict:
    """`params` after checking that divergence `name` takes them and that they are in range."""
    accepted = divergence_params(name)
    unknown = set(params) - set(accepted)
    if unknown:
        raise ValueError(f"divergence {name!r} takes {list(accepted) or 'no parameters'}, not {sorted(unknown)}.")
    check_divergence_params(**params)
    return params


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")


def _reduce(per_position: torch.Tensor, reduction: str) -> torch.Tensor:
    _check_reduction(reduction)
    return per_position.mean() if reduction == "mean" else per_position.sum()


# ---- teacher targets: the one place where several teachers are combined -----------------------------


def ensemble_log_probs(teacher_logits: list[torch.Tensor], temperature: float, mode: str = "mean") -> torch.Tensor:
    """Combine several teachers' predictions at temperature T into one target, as log-probabilities (..., C).

    Args:
        teacher_logits: one (..., C) tensor of raw logits per teacher, all of the same shape.
        temperature: T > 0; each teacher's distribution is softmax(logits / T), in float32.
        mode: "mean", the log of the arithmetic mean of the teachers' probabilities, or "geometric", their
            normalised geometric mean (log_softmax of the mean log-probability).
    """
    log_probs = torch.stack([F.log_softmax(z.float() / temperature, dim=-1) for z in teacher_logits])  # (K, ..., C)
    if mode == "mean":
        return torch.logsumexp(log_probs, dim=0) - math.log(len(teacher_logits))
    if mode == "geometric":
        return F.log_softmax(log_probs.mean(dim=0), dim=-1)
    raise ValueError(f"unknown ensemble mode {mode!r}: use 'mean' or 'geometric'.")


def teacher_log_probs(
    teacher_logits: torch.Tensor | Sequence[torch.Tensor], temperature: float, ensemble_mode: str = "mean"
) -> torch.Tensor:
    """The target log-probabilities at temperature T, float32, from one teacher's logits or several (..., C).

    Args:
        teacher_logits: a (..., C) tensor of raw logits, or a sequence of them (an ensemble).
        temperature: T > 0.
        ensemble_mode: how several teachers are combined, "mean" or "geometric" (`ensemble_log_probs`).
    """
    if torch.is_tensor(teacher_logits):
        return F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if len(teacher_logits) == 0:
        raise ValueError("teacher_log_probs needs at least one teacher's logits.")
    if len(teacher_logits) == 1:
        return F.log_softmax(teacher_logits[0].float() / temperature, dim=-1)
    return ensemble_log_probs(list(teacher_logits), temperature, ensemble_mode)


def teacher_target(
    teacher_logits: torch.Tensor | Sequence[torch.Tensor],
    temperature: float,
    ensemble_mode: str = "mean",
    divergence: str = "forward_kl",
) -> torch.Tensor:
    """What `divergence_loss` compares the student with: log-probs at T, or for "mse" the mean raw logits."""
    _divergence_fn(divergence)
    if divergence in LOGIT_DIVERGENCES:
        logits = [teacher_logits] if torch.is_tensor(teacher_logits) else list(teacher_logits)
        return torch.stack([z.float() for z in logits]).mean(0)  # (..., C): the teachers' mean raw outputs
    return teacher_log_probs(teacher_logits, temperature, ensemble_mode)


# ---- losses -----------------------------------------------------------------------------------------


def divergence_loss(
    student_logits: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
    *,
    divergence: str = "forward_kl",
    reduction: str = "mean",
    **params: float,
) -> torch.Tensor:
    """T^2 * (mean or sum) over the kept positions of divergence(p_s, p_t), in float32.

    A fully masked batch gives 0 with a gradient path, never NaN.

    Args:
        student_logits: (..., C) the student's raw logits.
        teacher_log_probs: (..., C) the target from `teacher_target`: the (combined) teacher log-probabilities
            at T, or for the logit divergence "mse" the raw teacher logits (then no temperature and no T^2).
        temperature: T > 0.
        mask: (...) bool or 0/1, the positions that count (leading dims of the logits); None = all.
        divergence: a name from `DIVERGENCES` or "mse" (`DistillationArguments.divergence`).
        reduction: "mean", or "sum" for a caller that normalises by its own token count (gradient
            accumulation, chunking).
        **params: the divergence's own parameters (jsd_beta, skew_alpha; see `DIVERGENCE_PARAMS`).
    """
    fn = _divergence_fn(divergence)
    params = _checked_params(divergence, params)
    s = _flatten_positions(student_logits, mask).float()  # (P, C)
    t = _flatten_positions(teacher_log_probs, mask).float()  # (P, C)
    if s.shape != t.shape:
        raise ValueError(
            f"student logits {tuple(s.shape)} and teacher targets {tuple(t.shape)} differ in shape: "
            "teacher and student must predict over the same classes / vocabulary."
        )
    _check_reduction(reduction)  # also on an empty batch
    if s.shape[0] == 0:
        return student_logits.float().sum() * 0.0
    if divergence in LOGIT_DIVERGENCES:
        return _reduce(fn(s, t, **params), reduction)  # raw logits: no temperature, no T^2
    log_ps = F.log_softmax(s / temperature, dim=-1)  # (P, C)
    per_position = fn(log_ps, t, **params)  # (P,)
    return _reduce(per_position, reduction) * temperature**2


def soft_target_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton et al. soft-target loss: T^2 * mean_positions sum_c p_t[c] (log p_t[c] - log p_s[c]).

    p_t = softmax(teacher_logits / T), log p_s = log_softmax(student_logits / T), in float32.

    Args:
        student_logits: (B, C), one position per row, or (B, L, C) token logits.
        teacher_logits: raw teacher logits of the same shape.
        temperature: T > 0.
        mask: for 3-D logits, (B, L), usually the attention mask: the positions that count; None = all.
    """
    target = teacher_log_probs(teacher_logits, temperature)
    return divergence_loss(student_logits, target, temperature, mask, divergence="forward_kl")


def logit_mse_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over positions of the mean squared difference of raw outputs (logit matching / regression).

    Used for regression heads (one output, no softmax) and as divergence "mse" (old name
    `logit_loss="mse"`), the high-temperature limit of the soft-target loss.

    Args:
        student_logits: (..., C) the student's raw outputs.
        teacher_logits: (..., C) the teacher's raw outputs.
        mask: (...) the positions that count; None = all.
    """
    return divergence_loss(student_logits, teacher_logits, 1.0, mask, divergence="mse")


def hidden_state_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: str = "mse",
) -> torch.Tensor:
    """Distance between two (B, L, D) hidden states, averaged over the tokens where `mask` is 1.

    Args:
        student_hidden: (B, L, D), already projected to the teacher's width.
        teacher_hidden: (B, L, D).
        mask: (B, L), usually the attention mask; None = every token.
        kind: "mse", the mean over tokens of the mean squared error over the D dimensions, or "cosine",
            the mean over tokens of 1 - cosine similarity (`DistillationArguments.hidden_loss`).
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


def _coarsened_log_probs(
    student_logits: torch.Tensor,
    indices: torch.Tensor,
    values: torch.Tensor,
    rest: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probs at T over the k cached classes plus one "rest" bin: (P, k + 1) each.

    `student_logits` (P, C), `indices` / `values` (P, k) the teacher's top-k ids and raw logits,
    `rest` (P,) the teacher's probability of every other class at T.
    """
    rest = rest.float().clamp(0.0, 1.0)
    # The cached rest is 1 - sum(top-k probabilities) in float32: known to about eps, so below eps it is rounding
    # noise. Both rest bins are floored at eps: with k = C (rest 0 on both sides) the bin then adds exactly 0 to
    # every divergence, and a teacher's noise rest of ~1e-7 against a student rest of 0 cannot blow up a KL.
    eps = torch.finfo(torch.float32).eps
    tiny = torch.finfo(torch.float32).tiny
    log_kept = torch.log((1.0 - rest).clamp_min(tiny))  # (P,)
    # Teacher: log q_i = v_i / T - log Z, Z chosen so that the kept classes carry 1 - rest.
    log_q = F.log_softmax(values.float() / temperature, dim=-1) + log_kept.unsqueeze(-1)  # (P, k)
    log_q = torch.cat([log_q, torch.log(rest.clamp_min(eps)).unsqueeze(-1)], dim=-1)  # (P, k + 1)
    # Student: gather the same k classes; its rest bin is the logsumexp over the other classes (exact, also when
    # the rest is small, unlike log(1 - kept)), with the k gathered entries pushed to _MASKED_LOGIT.
    log_ps_all = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (P, C)
    log_ps_kept = log_ps_all.gather(-1, indices)  # (P, k)
    others = log_ps_all.scatter(-1, indices, _MASKED_LOGIT)  # (P, C)
    log_ps_rest = torch.logsumexp(others, dim=-1, keepdim=True).clamp_min(math.log(eps))  # (P, 1)
    return torch.cat([log_ps_kept, log_ps_rest], dim=-1), log_q


def topk_divergence_loss(
    student_logits: torch.Tensor,
    indices: torch.Tensor,
    values: torch.Tensor,
    rest: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
    *,
    divergence: str = "forward_kl",
    reduction: str = "mean",
    **params: float,
) -> torch.Tensor:
    """Any divergence against a cached top-k teacher, on the coarsened (k classes + one rest bin) distributions.

    The student's distribution at T is coarsened the same way (the k classes + the sum of the others).
    T^2 * (mean or sum) over the kept positions. With k = C this is `divergence_loss`; otherwise, for the
    KLs, a lower bound of the full divergence (coarsening never increases an f-divergence).

    Args:
        student_logits: (..., C) the student's raw logits.
        indices: (..., k) the teacher's top-k class ids.
        values: (..., k) the teacher's raw logits at those ids.
        rest: (...) the teacher's probability of all other classes together, at T.
        temperature: T > 0, the temperature the cache was made at.
        mask: (...) the positions that count; None = all.
        divergence: a distribution divergence from `DIVERGENCES` (not "mse": the cache lacks the other logits).
        reduction: "mean" or "sum".
        **params: the divergence's own parameters (see `DIVERGENCE_PARAMS`).
    """
    if divergence in LOGIT_DIVERGENCES:
        raise ValueError(
            f"divergence {divergence!r} compares all raw logits, which a top-k cache does not store; "
            "cache the full logits (no --top_k) or choose a distribution divergence."
        )
    fn = _divergence_fn(divergence)
    params = _checked_params(divergence, params)
    _check_reduction(reduction)  # also on an empty batch
    s = _flatten_positions(student_logits, mask)  # (P, C)
    idx = _flatten_positions(indices, mask).long()  # (P, k)
    vals = _flatten_positions(values, mask)  # (P, k)
    rest_p = rest.reshape(-1) if mask is None else rest[mask.bool()]  # (P,)
    if s.shape[0] == 0:
        return student_logits.float().sum() * 0.0
    log_ps, log_q = _coarsened_log_probs(s, idx, vals, rest_p, temperature)  # (P, k + 1) each
    per_position = fn(log_ps, log_q, **params)  # (P,)
    return _reduce(per_position, reduction) * temperature**2


def topk_soft_target_loss(
    student_logits: torch.Tensor,
    topk_indices: torch.Tensor,
    topk_values: torch.Tensor,
    rest_mass: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft-target loss against a cached top-k teacher: T^2 * KL over the k kept classes plus one "rest" bin.

    With k = C the result equals `soft_target_loss`; otherwise it is the KL between the coarsened
    distributions, a lower bound of the full one (`topk_divergence_loss` with divergence="forward_kl").

    Args:
        student_logits: (..., C) the student's raw logits.
        topk_indices: (..., k) the teacher's top-k class ids.
        topk_values: (..., k) the teacher's raw logits at those ids.
        rest_mass: (...) the teacher's probability (at T) of all other classes together.
        temperature: T > 0, the temperature the cache was made at.
        mask: (...) the positions that count; None = all.
    """
    return topk_divergence_loss(student_logits, topk_indices, topk_values, rest_mass, temperature, mask)
