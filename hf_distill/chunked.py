"""Chunked output-layer loss: the soft divergence and the hard next-token loss from last hidden states.

A causal LM's logits are `hidden @ W.T` over the whole vocabulary: at 32k-256k entries the (tokens x V)
logits of student and teacher, their softmaxes and their gradient dominate a training step's memory.
Here the logits are built chunk by chunk (`chunk_size` rows at a time) inside one custom autograd
Function whose forward also computes the gradients of its chunk (the way fused linear + cross-entropy
kernels do), so neither the forward nor the backward ever holds (N, V) logits: the backward only scales
the stored (N, H) and (V, H) gradients by the incoming gradient. The work is the same as the unchunked
step (one logits matmul per model and two gradient matmuls for the student), never a recomputation.

Pure tensors in, tensors out; no Trainer. The caller runs the bodies (see `last_hidden_states`), picks
the rows that count (`hf_distill.positions.causal_lm_rows`) and normalises the returned sums by its own token counts.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass
class _Plan:
    """Everything but the student's differentiable tensors (hidden, weight, bias), for one call."""

    student_head: OutputHead
    teacher_hidden: Sequence[torch.Tensor]
    teacher_heads: Sequence[OutputHead]
    soft_mask: torch.Tensor | None
    labels: torch.Tensor | None
    temperature: float
    divergence: str
    ensemble_mode: str
    vocab_limit: int | None
    soft_scale: float
    hard_scale: float
    chunk_size: int
    params: dict


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


def _run_chunks(hidden: torch.Tensor, plan: _Plan, grads_for: tuple[bool, bool, bool]):
    """Loop over row chunks; return (loss, soft_sum, hard_sum) and, where asked, the gradients of the loss
    with respect to (hidden (N, H), weight (V, H), bias (V,))."""
    head = plan.student_head
    device_type = hidden.device.type
    cd = _compute_dtype(head.weight)
    w = head.weight.detach().to(cd)  # (V, H): cast once, as autocast would (it caches the cast weight)
    b = None if head.bias is None else head.bias.detach().to(cd)
    teachers = [
        (h_t.detach(), t_head, _compute_dtype(t_head.weight))
        for h_t, t_head in zip(plan.teacher_hidden, plan.teacher_heads)
    ]
    t_weights = [
        (t_head.weight.detach().to(tcd), None if t_head.bias is None else t_head.bias.detach().to(tcd))
        for _, t_head, tcd in teachers
    ]
    want_soft = plan.soft_scale != 0.0 and bool(teachers)
    want_hard = plan.hard_scale != 0.0 and plan.labels is not None
    n_rows = hidden.shape[0]
    g_hidden = torch.zeros_like(hidden) if grads_for[0] else None  # (N, H)
    g_weight = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if grads_for[1] else None  # (V, H)
    g_bias = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device) if grads_for[2] and b is not None else None
    soft_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
    hard_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
    # The autocast state is handled above by explicit dtypes: no op below may be recast behind our back.
    with torch.autocast(device_type, enabled=False):
        for start in range(0, n_rows, plan.chunk_size):
            rows = slice(start, min(start + plan.chunk_size, n_rows))
            h = hidden[rows].detach().to(cd)  # (n, H)
            with torch.enable_grad():
                raw = F.linear(h, w, b).requires_grad_(bool(any(grads_for)))  # (n, V): the only logits alive
                z = head.finish(raw)
                total = raw.new_zeros((), dtype=torch.float32)
                if want_soft:
                    with torch.no_grad():
                        t_logits = [
                            t_head.finish(F.linear(h_t[rows].to(tcd), tw, tb))
                            for (h_t, t_head, tcd), (tw, tb) in zip(teachers, t_weights)
                        ]  # K x (n, V_t)
                        limit = plan.vocab_limit
                        if limit is not None:
                            t_logits = [t[:, :limit] for t in t_logits]
                        target = teacher_target(t_logits, plan.temperature, plan.ensemble_mode, plan.divergence)
                        del t_logits
                    mask = None if plan.soft_mask is None else plan.soft_mask[rows]
                    z_soft = z if plan.vocab_limit is None else z[:, : plan.vocab_limit]
                    soft = divergence_loss(
                        z_soft,
                        target,
                        plan.temperature,
                        mask,
                        divergence=plan.divergence,
                        reduction="sum",
                        **plan.params,
                    )
                    soft_sum += soft.detach()
                    total = total + plan.soft_scale * soft
                if want_hard:
                    hard = next_token_nll(z, plan.labels[rows], reduction="sum")
                    hard_sum += hard.detach()
                    total = total + plan.hard_scale * hard
                if any(grads_for) and total.requires_grad:
                    (g_raw,) = torch.autograd.grad(total, raw)  # (n, V)
                else:
                    g_raw = None
            if g_raw is not None:
                g = g_raw.to(cd)
                if g_hidden is not None:
                    g_hidden[rows] = (g @ w).to(g_hidden.dtype)  # (n, H)
                if g_weight is not None:
                    _accumulate_outer(g_weight, g, h)
                if g_bias is not None:
                    g_bias += g_raw.float().sum(0)
            del raw, z, g_raw
    loss = plan.soft_scale * soft_sum + plan.hard_scale * hard_sum
    return loss, soft_sum, hard_sum, g_hidden, g_weight, g_bias


class _ChunkedHeadLoss(torch.autograd.Function):
    """loss = soft_scale * soft_sum + hard_scale * hard_sum; its gradients are computed during the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, plan):
        grads_for = (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
        loss, soft_sum, hard_sum, g_hidden, g_weight, g_bias = _run_chunks(hidden, plan, grads_for)
        # Kept on ctx, not save_for_backward: they are results, not inputs, and the backward scales them in
        # place, so that no second (V, H) copy of the head's gradient is ever made.
        ctx.grads = [g_hidden, g_weight, g_bias]
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(soft_sum, hard_sum)
        return loss, soft_sum, hard_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_soft, _grad_hard):
        if ctx.grads is None:
            raise RuntimeError("the chunked head loss was already back-propagated; it cannot be twice (retain_graph).")
        out = []
        for g, dtype in zip(ctx.grads, ctx.dtypes):
            out.append(None if g is None else g.mul_(grad_loss).to(dtype))
        ctx.grads = None
        return (*out, None)


@dataclass
class ChunkedLoss:
    """`loss` (differentiable) = soft_scale * soft_sum + hard_scale * hard_sum; the sums are detached, for logs.

    soft_sum = T^2 * sum over the soft rows of the divergence; hard_sum = sum over labelled rows of the
    next-token cross-entropy. soft_count / hard_count are the numbers of rows in each sum.
    """

    loss: torch.Tensor
    soft_sum: torch.Tensor
    hard_sum: torch.Tensor
    soft_count: torch.Tensor
    hard_count: torch.Tensor


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
    soft_scale: float = 1.0,
    hard_scale: float = 1.0,
    chunk_size: int = 1024,
    **params: float,
) -> ChunkedLoss:
    """Soft divergence and hard cross-entropy from last hidden states, `chunk_size` rows at a time.

    student_hidden (N, H_s): the rows that count (see `causal_lm_rows`); teacher_hidden K x (N, H_t), the same
    rows of each teacher (several teachers are combined by `teacher_target`, as in the unchunked loss);
    labels (N,) the next-token ids (-100: no hard loss at that row); soft_mask (N,) bool, the rows where the
    divergence counts (None: all). The divergence compares the first `vocab_limit` logits (vocabulary
    padding); the hard loss uses the student's whole output, as the model's own loss does. Returns sums:
    normalise through soft_scale / hard_scale (e.g. weight / token count), which must be known up front
    because the gradient is formed chunk by chunk during the forward.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}.")
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
    if soft_mask is not None and bool(soft_mask.all()):
        # every row counts (the usual case): skip the (n, V) copy that selecting rows makes in each chunk
        soft_mask = None
    plan = _Plan(
        student_head,
        list(teacher_hidden),
        list(teacher_heads),
        None if soft_mask is None else soft_mask.bool(),
        labels,
        temperature,
        divergence,
        ensemble_mode,
        vocab_limit,
        float(soft_scale),
        float(hard_scale),
        int(chunk_size),
        params,
    )
    loss, soft_sum, hard_sum = _ChunkedHeadLoss.apply(student_hidden, student_head.weight, student_head.bias, plan)
    if soft_mask is None:
        soft_count = torch.tensor(n_rows, device=student_hidden.device)
    else:
        soft_count = soft_mask.sum()
    hard_count = (labels != IGNORE_INDEX).sum() if labels is not None else torch.zeros((), dtype=torch.long)
    if not teacher_heads:
        soft_count = torch.zeros_like(soft_count)
    return ChunkedLoss(loss, soft_sum, hard_sum, soft_count, hard_count)


# ---- causal-LM plumbing: can the chunked loss run, and the bodies' last hidden states -----------------------


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


def last_hidden_states(model: nn.Module, inputs: dict) -> torch.Tensor:
    """(B, L, H) final hidden states (after the final norm), without computing the (B, L, V) logits.

    The model's own forward runs (so DDP hooks, PEFT adapters and autocast behave as usual) with
    `logits_to_keep=1` and `output_hidden_states=True`; its last hidden state is what the output layer reads.
    """
    if not accepts_logits_to_keep(model):
        raise ValueError(
            f"loss_chunk_size needs a causal LM whose forward accepts logits_to_keep (transformers' *ForCausalLM); "
            f"{type(model).__name__} does not. Unset loss_chunk_size."
        )
    kwargs = {k: v for k, v in inputs.items() if k != "labels"}
    out = model(**kwargs, logits_to_keep=1, output_hidden_states=True)
    return out["hidden_states"][-1]
