"""Chunked output-layer loss: the soft divergence and the hard next-token loss from last hidden states.

A causal LM's logits are `hidden @ W.T` over the whole vocabulary: at 32k-256k entries the (tokens x V)
logits of student and teacher, their softmaxes and their gradient dominate a training step's memory.
Here the logits are built chunk by chunk (`chunk_size` rows at a time, or "auto": as many as a memory
budget holds, one chunk when all fit) inside one custom autograd Function whose forward also computes the
gradients of its chunk (the way fused linear + cross-entropy kernels do), so neither the forward nor the
backward ever holds (N, V) logits: the backward only scales the stored (N, H) and (V, H) gradients by the
incoming gradient. The work is the same as the unchunked step (one logits matmul per model and two
gradient matmuls for the student), never a recomputation; soft and hard terms of a chunk share one pass,
and the forward KL's gradient is formed in closed form from the same teacher probabilities as its value.

Layers: `chunked_output_loss` runs any per-chunk loss of a head's logits (a `ChunkFn`); `chunked_head_loss`
is distillation's (teachers' divergence + next-token cross-entropy) on top of it. Pure tensors in, tensors
out; no Trainer. The caller runs the bodies (`logits_to_keep=1, output_hidden_states=True`), picks the rows
that count (`hf_distill.positions.causal_lm_rows`) and normalises the returned sums by its own token counts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .losses import divergence_loss, teacher_target
from .positions import IGNORE_INDEX

# Old homes of names that now live in hf_distill.positions, kept importable.
from .positions import causal_lm_rows as causal_lm_rows
from .positions import step_token_totals as step_token_totals
from .positions import token_counts as token_counts

# How a causal LM's forward turns its output layer's result into logits, beyond `hidden @ W.T + b`:
# config attribute -> operation. Applied in this order; a model whose config lacks the attribute skips it.
LOGIT_TRANSFORMS: tuple[tuple[str, str], ...] = (
    ("logit_scale", "multiply"),  # Cohere: logits * logit_scale
    ("logits_scaling", "divide"),  # Granite: logits / logits_scaling
    ("final_logit_softcapping", "softcap"),  # Gemma 2 / 3: cap * tanh(logits / cap)
)


@dataclass
class OutputHead:
    """The output layer of a causal LM as plain tensors: logits = transforms(hidden @ weight.T + bias)."""

    weight: torch.Tensor  # (V, H)
    bias: torch.Tensor | None = None  # (V,)
    scale: float = 1.0
    softcap: float | None = None

    @classmethod
    def from_model(cls, model: nn.Module) -> OutputHead:
        """Read `get_output_embeddings()` and the config's logit transforms (LOGIT_TRANSFORMS) of a causal LM."""
        get = getattr(model, "get_output_embeddings", None)
        layer = get() if get is not None else None
        if type(layer) is not nn.Linear:  # exactly Linear: a LoRA / wrapped head computes something else
            raise ValueError(
                f"loss_chunk_size needs a model whose logits come from a plain nn.Linear output layer "
                f"(get_output_embeddings()); {type(model).__name__} has {type(layer).__name__}. Leave the output "
                "layer out of PEFT target_modules / modules_to_save, or unset loss_chunk_size."
            )
        config = getattr(model, "config", None)
        scale, softcap = 1.0, None
        for attr, op in LOGIT_TRANSFORMS:
            value = getattr(config, attr, None)
            if value is None:
                continue
            if op == "multiply":
                scale *= float(value)
            elif op == "divide":
                scale /= float(value)
            else:
                softcap = float(value)
        return cls(layer.weight, layer.bias, scale, softcap)

    def finish(self, raw: torch.Tensor) -> torch.Tensor:
        """(n, V) `hidden @ W.T + b` -> the model's logits (scale, then soft-capping)."""
        z = raw * self.scale if self.scale != 1.0 else raw
        if self.softcap is not None:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    def finish_grad(self, z: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """d loss / d raw from grad = d loss / d z (n, V) float32, z = finish(raw); in place on grad."""
        if self.softcap is not None:
            grad.mul_(1.0 - (z / self.softcap).square())  # tanh' = 1 - tanh^2
        if self.scale != 1.0:
            grad.mul_(self.scale)
        return grad


def next_token_nll(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """The model's own causal-LM loss on logits rows: float32 cross-entropy over the whole (padded) vocabulary.

    Args:
        logits: (n, V) the model's logits at n positions.
        labels: (n,) the next-token ids; -100 rows count for nothing.
        reduction: "sum", "mean" or "none" (then (n,), 0 at -100 rows).
    """
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction=reduction)


@torch.no_grad()
def chunked_token_nll(hidden: torch.Tensor, head: OutputHead, labels: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """(N,) float32 next-token negative log-likelihoods from last hidden states, `chunk_size` rows at a time.

    The hard term of `chunked_head_loss` per row and without gradients (evaluation): never more than
    (chunk_size, V) logits at once.

    Args:
        hidden: (N, H) last hidden states of the positions to score.
        head: the model's output layer (`OutputHead.from_model`).
        labels: (N,) the next-token ids.
        chunk_size: rows per chunk (> 0).
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}.")
    w = head.weight.to(hidden.dtype)
    b = None if head.bias is None else head.bias.to(hidden.dtype)
    nll = [
        next_token_nll(head.finish(F.linear(hidden[i : i + chunk_size], w, b)), labels[i : i + chunk_size], "none")
        for i in range(0, hidden.shape[0], chunk_size)
    ]  # one (chunk, V) block at a time
    return torch.cat(nll) if nll else hidden.new_zeros(0, dtype=torch.float32)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a matmul with `t` runs in: autocast's when it is on (as in the model's own forward), else t's."""
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


# ---- chunk size: a number of rows, or "auto" from a memory budget ---------------------------------------------

# "auto" budget: on CUDA this fraction of the memory still free when the loss runs (free device memory plus what
# torch's allocator caches unused: 1.6 GB of an 80 GB card), elsewhere this many MiB. Small enough that the chunked
# loss keeps its memory saving where logits are large (V = 128k, 4096 tokens: several chunks), large enough that
# chunks are hundreds of rows (no per-chunk cost) and small problems run as one chunk.
AUTO_GPU_FREE_FRACTION = 0.02
AUTO_CPU_BUDGET_MB = 512
# float32 (rows, V) buffers alive at once while one chunk is processed (the estimate "auto" divides the budget by):
# the student's logits, its log-probabilities at T and at 1 (turned into gradients in place) and one temporary;
# per teacher its logits, log-probabilities and probabilities.
STUDENT_BUFFERS, TEACHER_BUFFERS = 4, 3


def chunk_bytes_per_row(vocab: int, n_teachers: int) -> int:
    """Bytes one row of a chunk holds while its logits, targets and gradients are alive (float32 estimate)."""
    return 4 * vocab * (STUDENT_BUFFERS + TEACHER_BUFFERS * n_teachers)


def memory_budget(device: torch.device) -> int:
    """Bytes the chunks of loss_chunk_size="auto" may use on `device` (AUTO_GPU_FREE_FRACTION, AUTO_CPU_BUDGET_MB)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(AUTO_GPU_FREE_FRACTION * (free + cached))
    return AUTO_CPU_BUDGET_MB * 2**20


def auto_chunk_size(n_rows: int, vocab: int, n_teachers: int, budget: int) -> int:
    """Rows per chunk so that a chunk fits `budget` bytes: all rows (one chunk) when they fit, else the fewest chunks
    that do, of even size.

    Args:
        n_rows: rows (tokens) the loss is computed at.
        vocab: the student's output size V.
        n_teachers: teachers whose logits are built beside the student's.
        budget: bytes (e.g. `memory_budget(device)`).
    """
    fits = max(1, budget // chunk_bytes_per_row(vocab, n_teachers))
    if fits >= n_rows:
        return max(n_rows, 1)
    n_chunks = -(-n_rows // fits)  # ceil
    return -(-n_rows // n_chunks)


def resolve_chunk_size(chunk_size: int | str, n_rows: int, vocab: int, n_teachers: int, device) -> int:
    """`chunk_size` rows, or for "auto" `auto_chunk_size` with the device's `memory_budget`; ValueError otherwise."""
    if chunk_size == "auto":
        return auto_chunk_size(n_rows, vocab, n_teachers, memory_budget(torch.device(device)))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive number of rows or 'auto', got {chunk_size!r}.")
    return chunk_size


# ---- the chunk loop: any loss of a head's logits, gradients formed chunk by chunk -------------------------------

# A chunk function: (z (n, V) float32 finished logits of `rows`, rows, want_grad) ->
#   (loss 0-d, sums (k,) detached float32 per-term sums for logs, d loss / d z (n, V) float32 or None).
ChunkFn = Callable[[torch.Tensor, slice, bool], tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]]


class _HeadGrads:
    """The gradients of a loss w.r.t. (hidden (N, H), weight (V, H), bias (V,)), summed chunk by chunk."""

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, wants, w_cd):
        self.w = w_cd  # (V, H) in the compute dtype
        self.hidden = torch.zeros_like(hidden) if wants[0] else None  # (N, H)
        self.weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if wants[1] else None
        self.bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if wants[2] else None
        self.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)

    def add(self, rows: slice, h: torch.Tensor, g_raw: torch.Tensor) -> None:
        """Add one chunk: h (n, H) its hidden states (compute dtype), g_raw (n, V) float32 d loss / d (h W^T + b)."""
        g = g_raw.to(self.w.dtype)
        if self.hidden is not None:
            self.hidden[rows] = (g @ self.w).to(self.hidden.dtype)  # (n, H)
        if self.weight is not None:
            _accumulate_outer(self.weight, g, h)
        if self.bias is not None:
            self.bias += g_raw.sum(0)

    def scaled(self, grad_loss: torch.Tensor) -> list:
        """The three gradients times the incoming gradient, in place (no second (V, H) copy), in the inputs' dtypes."""
        grads = (self.hidden, self.weight, self.bias)
        return [None if g is None else g.mul_(grad_loss).to(dtype) for g, dtype in zip(grads, self.dtypes)]


_MIXED_MM: dict[str, bool] = {}


def _accumulate_outer(acc: torch.Tensor, g: torch.Tensor, h: torch.Tensor) -> None:
    """acc (V, H) float32 += g.T @ h, for g (n, V) and h (n, H) in the compute dtype.

    float32: in place. bf16 / fp16 on CUDA: one GEMM writing float32 (`out_dtype`, where this torch has it),
    so the head's gradient is summed over chunks in float32 without a low-precision (V, H) temporary.
    """
    if g.dtype == torch.float32:
        acc.addmm_(g.t(), h)
        return
    device = g.device.type
    if device not in _MIXED_MM:
        try:
            torch.mm(g[:1].t(), h[:1], out_dtype=torch.float32)
            _MIXED_MM[device] = True
        except (RuntimeError, TypeError, NotImplementedError):
            _MIXED_MM[device] = False
    if _MIXED_MM[device]:
        acc += torch.mm(g.t(), h, out_dtype=torch.float32)
    else:
        acc += (g.t() @ h).float()


def _run_chunks(hidden: torch.Tensor, head: OutputHead, chunk_fn: ChunkFn, chunk_size: int, n_terms: int, wants):
    """Loop over row chunks: (loss, sums (n_terms,), _HeadGrads or None when no gradient is wanted)."""
    cd = _compute_dtype(head.weight)
    w = head.weight.detach().to(cd)  # (V, H): cast once, as autocast would (it caches the cast weight)
    b = None if head.bias is None else head.bias.detach().to(cd)
    grads = _HeadGrads(hidden, head.weight, head.bias, wants, w) if any(wants) else None
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    sums = torch.zeros(n_terms, dtype=torch.float32, device=hidden.device)
    # The autocast state is handled by explicit dtypes: no op below may be recast behind our back.
    with torch.autocast(hidden.device.type, enabled=False), torch.no_grad():
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, min(start + chunk_size, hidden.shape[0]))
            h = hidden[rows].detach().to(cd)  # (n, H)
            z = head.finish(F.linear(h, w, b).float())  # (n, V) float32: the only student logits alive
            chunk_loss, chunk_sums, g_z = chunk_fn(z, rows, grads is not None)
            loss += chunk_loss
            sums += chunk_sums
            if grads is not None and g_z is not None:
                grads.add(rows, h, head.finish_grad(z, g_z))
            del z, g_z
    return loss, sums, grads


class _ChunkedOutputLoss(torch.autograd.Function):
    """loss = sum over chunks of chunk_fn's loss; its gradients are computed during the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, head, chunk_fn, chunk_size, n_terms):
        wants = (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
        loss, sums, grads = _run_chunks(hidden, head, chunk_fn, chunk_size, n_terms, wants)
        # Kept on ctx, not save_for_backward: they are results, not inputs, and the backward scales them in place.
        ctx.grads = grads
        ctx.mark_non_differentiable(sums)
        return loss, sums

    @staticmethod
    def backward(ctx, grad_loss, _grad_sums):
        if ctx.grads is None:
            raise RuntimeError("the chunked head loss was already back-propagated; it cannot be twice (retain_graph).")
        grads, ctx.grads = ctx.grads, None
        return (*grads.scaled(grad_loss), None, None, None, None)


def chunked_output_loss(
    hidden: torch.Tensor, head: OutputHead, chunk_fn: ChunkFn, chunk_size: int, n_terms: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Any loss of a head's logits, `chunk_size` rows at a time, never holding (N, V) logits or their gradient.

    Args:
        hidden: (N, H) the rows' last hidden states (differentiable).
        head: the output layer (`OutputHead`); its weight / bias get gradients where they require them.
        chunk_fn: called per chunk as chunk_fn(z, rows, want_grad) with z (n, V) float32 the finished logits of
            `hidden[rows]`; returns (loss 0-d, sums (n_terms,) float32 for logs, d loss / d z (n, V) or None).
        chunk_size: rows per chunk (a number; see `resolve_chunk_size`).
        n_terms: length of the sums.

    Returns (loss, sums): loss differentiable w.r.t. hidden, head.weight and head.bias; sums detached.
    """
    return _ChunkedOutputLoss.apply(hidden, head.weight, head.bias, head, chunk_fn, chunk_size, n_terms)


# ---- the distillation chunk: soft divergence against the teachers and hard cross-entropy, fused -----------------


@dataclass
class _Plan:
    """What `chunked_head_loss` computes on each chunk, beyond the student's head and hidden states."""

    teacher_hidden: list[torch.Tensor]  # K x (N, H_t)
    teacher_heads: list[OutputHead]
    soft_mask: torch.Tensor | None  # (N,) bool, None = every row
    labels: torch.Tensor | None  # (N,) next-token ids, -100 = no hard loss
    temperature: float
    divergence: str
    ensemble_mode: str
    vocab_limit: int | None
    soft_scale: float | torch.Tensor
    hard_scale: float | torch.Tensor
    params: dict = field(default_factory=dict)

    @property
    def want_soft(self) -> bool:
        return bool(self.teacher_heads) and not _is_zero(self.soft_scale)

    @property
    def want_hard(self) -> bool:
        return self.labels is not None and not _is_zero(self.hard_scale)


def _is_zero(scale) -> bool:
    return not torch.is_tensor(scale) and float(scale) == 0.0


class _DistillChunk:
    """The chunk function of `chunked_head_loss`: loss = soft_scale * soft + hard_scale * hard; sums (soft, hard)."""

    def __init__(self, plan: _Plan):
        self.plan = plan
        self.teachers = []  # (hidden (N, H_t), head, weight, bias) in the teacher's compute dtype
        for h_t, t_head in zip(plan.teacher_hidden, plan.teacher_heads):
            tcd = _compute_dtype(t_head.weight)
            bias = None if t_head.bias is None else t_head.bias.detach().to(tcd)
            self.teachers.append((h_t.detach(), t_head, t_head.weight.detach().to(tcd), bias))

    def target(self, rows: slice) -> torch.Tensor:
        """(n, V') the combined teachers' target of these rows (log-probs at T; raw logits for "mse")."""
        limit = self.plan.vocab_limit
        logits = [head.finish(F.linear(h[rows].to(w.dtype), w, b))[:, :limit] for h, head, w, b in self.teachers]
        return teacher_target(logits, self.plan.temperature, self.plan.ensemble_mode, self.plan.divergence)

    def __call__(self, z: torch.Tensor, rows: slice, want_grad: bool):
        plan = self.plan
        soft = hard = z.new_zeros(())
        g_soft = g_hard = None
        if plan.want_soft:
            mask = None if plan.soft_mask is None else plan.soft_mask[rows]
            soft, g_soft = _soft_term(z[:, : plan.vocab_limit], self.target(rows), mask, plan, want_grad)
        if plan.want_hard:
            hard, g_hard = _hard_term(z, plan.labels[rows], plan.hard_scale, want_grad)
        loss = plan.soft_scale * soft + plan.hard_scale * hard
        return loss, torch.stack([soft, hard]), _combine_grads(g_hard, g_soft, z.shape[1]) if want_grad else None


def _combine_grads(g_full: torch.Tensor | None, g_part: torch.Tensor | None, vocab: int) -> torch.Tensor | None:
    """g_full (n, V) + g_part (n, V' <= V) padded with zeros, in place in g_full where there is one."""
    if g_part is None:
        return g_full
    if g_full is None:
        return g_part if g_part.shape[1] == vocab else F.pad(g_part, (0, vocab - g_part.shape[1]))
    g_full[:, : g_part.shape[1]] += g_part
    return g_full


def _soft_term(z: torch.Tensor, target: torch.Tensor, mask, plan: _Plan, want_grad: bool):
    """(T^2 * sum over the masked rows of the divergence, d (soft_scale * that) / d z or None); z (n, V') float32."""
    if plan.divergence == "forward_kl":
        return _forward_kl_term(z, target, plan.temperature, mask, plan.soft_scale, want_grad)
    with torch.enable_grad():
        leaf = z.detach().requires_grad_(want_grad)
        soft = divergence_loss(
            leaf, target, plan.temperature, mask, divergence=plan.divergence, reduction="sum", **plan.params
        )
        grad = torch.autograd.grad(soft * plan.soft_scale, leaf)[0] if want_grad and soft.requires_grad else None
    return soft.detach(), grad


def _forward_kl_term(z, log_pt, T: float, mask, scale, want_grad: bool):
    """Forward KL in closed form: T^2 * sum_rows KL(p_t || p_s) and its gradient scale * T * (p_s - p_t).

    One pass of log-softmax for the student; the teacher's probabilities are formed once, for value and gradient.
    """
    log_ps = F.log_softmax(z / T, dim=-1)  # (n, V')
    p_t = log_pt.exp()
    per_row = (log_pt - log_ps).mul_(p_t).sum(-1)  # (n,): sum_c p_t (log p_t - log p_s), as F.kl_div(log_target)
    if mask is not None:
        per_row = per_row.masked_fill(~mask, 0.0)
    soft = per_row.sum() * T**2
    if not want_grad:
        return soft, None
    row_scale = scale * T if mask is None else mask.float().mul_(scale * T)  # scalar or (n,)
    grad = log_ps.exp_().sub_(p_t)  # (n, V'): p_s - p_t, in place of log p_s
    return soft, grad.mul_(row_scale if mask is None else row_scale[:, None])


def _hard_term(z: torch.Tensor, labels: torch.Tensor, scale, want_grad: bool):
    """(sum over labelled rows of the cross-entropy of z (n, V) float32, d (scale * that) / d z or None)."""
    log_p = F.log_softmax(z, dim=-1)  # (n, V)
    labelled = labels != IGNORE_INDEX  # (n,)
    index = labels.masked_fill(~labelled, 0)[:, None]  # (n, 1)
    hard = -log_p.gather(1, index).squeeze(1).masked_fill(~labelled, 0.0).sum()
    if not want_grad:
        return hard, None
    grad = log_p.exp_()  # (n, V): softmax - one_hot(label), in place of log p
    grad.scatter_add_(1, index, torch.full_like(index, -1, dtype=grad.dtype))
    return hard, grad.mul_(labelled.float().mul_(scale)[:, None])


@dataclass
class ChunkedLoss:
    """`loss` (differentiable) = soft_scale * soft_sum + hard_scale * hard_sum; the sums are detached, for logs.

    soft_sum = T^2 * sum over the soft rows of the divergence; hard_sum = sum over labelled rows of the
    next-token cross-entropy.
    """

    loss: torch.Tensor
    soft_sum: torch.Tensor
    hard_sum: torch.Tensor


def chunked_head_loss(
    student_hidden: torch.Tensor,
    student_head: OutputHead,
    teacher_hidden: Sequence[torch.Tensor] = (),
    teacher_heads: Sequence[OutputHead] = (),
    *,
    labels: torch.Tensor | None = None,
    soft_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    divergence: str = "forward_kl",
    ensemble_mode: str = "mean",
    vocab_limit: int | None = None,
    soft_scale: float | torch.Tensor = 1.0,
    hard_scale: float | torch.Tensor = 1.0,
    chunk_size: int | str = 1024,
    **params: float,
) -> ChunkedLoss:
    """Soft divergence and hard cross-entropy from last hidden states, `chunk_size` rows at a time.

    Normalise the returned sums through soft_scale / hard_scale (e.g. weight / token count; a float or a 0-d
    tensor), which must be known up front because the gradient is formed chunk by chunk during the forward.

    Args:
        student_hidden: (N, H_s) the rows that count (see `causal_lm_rows`).
        student_head: the student's output layer (`OutputHead.from_model`).
        teacher_hidden: K x (N, H_t), the same rows of each teacher (several teachers are combined by
            `teacher_target`, as in the unchunked loss).
        teacher_heads: the K teachers' output layers.
        labels: (N,) next-token ids (-100: no hard loss at that row); None = no hard loss.
        soft_mask: (N,) bool, the rows where the divergence counts (None: all).
        temperature, divergence, ensemble_mode, params: as in `losses.divergence_loss` / `teacher_target`.
        vocab_limit: the divergence compares the first `vocab_limit` logits (vocabulary padding); the hard loss
            uses the student's whole output, as the model's own loss does.
        soft_scale, hard_scale: the loss is soft_scale * soft_sum + hard_scale * hard_sum.
        chunk_size: rows per chunk, or "auto": as many as `memory_budget` holds (one chunk when all rows fit).
    """
    _check_head_inputs(student_hidden, student_head, teacher_hidden, teacher_heads, labels, soft_mask, vocab_limit)
    if soft_mask is not None and divergence != "forward_kl" and bool(soft_mask.all()):
        soft_mask = None  # every row counts: skip the (n, V) copy that selecting rows makes in each chunk
    plan = _Plan(
        teacher_hidden=list(teacher_hidden),
        teacher_heads=list(teacher_heads),
        soft_mask=None if soft_mask is None else soft_mask.bool(),
        labels=labels,
        temperature=temperature,
        divergence=divergence,
        ensemble_mode=ensemble_mode,
        vocab_limit=vocab_limit,
        soft_scale=soft_scale,
        hard_scale=hard_scale,
        params=params,
    )
    size = resolve_chunk_size(
        chunk_size, student_hidden.shape[0], student_head.weight.shape[0], len(teacher_heads), student_hidden.device
    )
    loss, sums = chunked_output_loss(student_hidden, student_head, _DistillChunk(plan), size, n_terms=2)
    return ChunkedLoss(loss, sums[0], sums[1])


def _check_head_inputs(student_hidden, student_head, teacher_hidden, teacher_heads, labels, soft_mask, vocab_limit):
    """ValueError naming the problem when the shapes of `chunked_head_loss`'s inputs do not line up."""
    if len(teacher_hidden) != len(teacher_heads):
        raise ValueError(f"{len(teacher_hidden)} teacher hidden states but {len(teacher_heads)} teacher heads.")
    n_rows = student_hidden.shape[0]
    for k, (h_t, t_head) in enumerate(zip(teacher_hidden, teacher_heads)):
        if h_t.shape[0] != n_rows:
            raise ValueError(f"teacher {k} gives {h_t.shape[0]} rows of hidden states, the student {n_rows}.")
        v_s, v_t = student_head.weight.shape[0], t_head.weight.shape[0]
        if vocab_limit is None and v_s != v_t:
            raise ValueError(
                f"the student's output layer has {v_s} rows and teacher {k}'s {v_t}: pass vocab_limit (the shared "
                "tokenizer's size) when they differ only by padding rows."
            )
        if vocab_limit is not None and vocab_limit > min(v_s, v_t):
            raise ValueError(f"vocab_limit {vocab_limit} exceeds the output layers' sizes ({v_s}, {v_t}).")
    if labels is not None and labels.shape != (n_rows,):
        raise ValueError(f"labels must be (N,) = ({n_rows},) next-token ids, got {tuple(labels.shape)}.")
    if soft_mask is not None and soft_mask.shape != (n_rows,):
        raise ValueError(f"soft_mask must be (N,) = ({n_rows},), got {tuple(soft_mask.shape)}.")


# ---- causal-LM plumbing: can the chunked loss run -----------------------------------------------------------


def check_chunkable(model: nn.Module, who: str) -> None:
    """ValueError unless `model` is a causal LM the chunked loss can run: `logits_to_keep` and a plain head."""
    from .modeling import is_causal_lm, unwrap_peft

    if not is_causal_lm(model):
        raise ValueError(
            f"loss_chunk_size is for causal language models (their logits come from an output embedding), but {who} "
            f"is a {type(unwrap_peft(model)).__name__}; unset loss_chunk_size."
        )
    if not accepts_logits_to_keep(model):
        raise ValueError(f"loss_chunk_size needs {who}'s forward to accept logits_to_keep; unset loss_chunk_size.")
    OutputHead.from_model(unwrap_peft(model))


def check_chunking(
    size: int | None,
    student: nn.Module,
    teachers: Sequence[nn.Module],
    *,
    cached: bool = False,
    sharded: bool = False,
    label_smoothing: bool = False,
) -> int | None:
    """`size` (loss_chunk_size) when the chunked loss can run for these models and settings, else a ValueError."""
    if size is None:
        return None
    problem = (
        "it needs live teachers (cached outputs are logits already)"
        if cached
        else "the output layer's weight must not be sharded (FSDP / DeepSpeed ZeRO-3)"
        if sharded
        else "label smoothing is not implemented on the chunked path"
        if label_smoothing
        else None
    )
    if problem:
        raise ValueError(f"loss_chunk_size={size} cannot be used here: {problem}; unset loss_chunk_size.")
    check_chunkable(student, "the student")
    for k, teacher in enumerate(teachers):
        check_chunkable(teacher, "the teacher" if len(teachers) == 1 else f"teacher {k}")
    return size


def accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether the model's forward can skip its full logits (transformers causal LMs: `logits_to_keep`)."""
    inner = model
    while True:  # DDP / PEFT wrappers pass keyword arguments through: look at the innermost forward
        nxt = getattr(inner, "module", None) or getattr(inner, "get_base_model", lambda: None)()
        if nxt is None or nxt is inner:
            break
        inner = nxt
    return "logits_to_keep" in inspect.signature(inner.forward).parameters
