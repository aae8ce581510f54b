"""The distillation objective: which loss terms, on which positions, with which weights.

`DistillationObjective` turns one batch's inputs and model outputs into named loss terms and their
weighted sum; every number comes from `hf_distill.losses`. It needs no Trainer:

    objective = DistillationObjective.from_args(args, layer_map={1: 2, 2: 4})
    student_out = student(**batch, output_hidden_states=True)
    with torch.no_grad():
        teacher_out = teacher(**inputs_without_labels, output_hidden_states=True)
    loss, terms = objective(batch, student_out, [teacher_out], hard_loss=student_out.loss)

`ProjectedStudent` keeps the student and its hidden-size projections in one module, so whatever trains,
shards, clips or checkpoints the student does the same for the projections.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from . import losses
from .chunked import OutputHead, chunked_head_loss
from .layers import build_projections, count_layers, hidden_size, resolve_layer_map
from .positions import IGNORE_INDEX, causal_lm_rows, has_labels, soft_token_mask, token_mask

# Old home of a name that now lives in hf_distill.positions, kept importable.
from .positions import token_scales as token_scales

# 2-D output fields whose classes are the sequence positions (extractive QA): the softmax runs over the
# tokens of each example, so padding positions are masked out of it in teacher and student alike.
SPAN_LOGITS = ("start_logits", "end_logits")
# The built-in terms, in the order they are computed, and the DistillationArguments field holding each weight.
BUILTIN_WEIGHTS = {
    "soft_loss": "soft_weight",
    "hard_loss": "hard_weight",
    "hidden_loss": "hidden_weight",
    "attention_loss": "attention_weight",
}


@dataclass
class TopKTargets:
    """A cached top-k teacher distribution (`cache_teacher_outputs(..., top_k=k)`).

    Args:
        indices: (..., k) the teacher's top-k class ids.
        values: (..., k) the teacher's raw logits at those ids.
        rest: (...) the teacher's probability of all other classes together, at the cache's temperature.
    """

    indices: torch.Tensor
    values: torch.Tensor
    rest: torch.Tensor


@dataclass
class LogitsPair:
    """One thing to distill: student logits vs the teacher logits (one tensor per teacher).

    Args:
        name: labels the pair in error messages.
        student: the student's raw logits (..., C).
        teachers: one tensor of raw logits per teacher, shaped like `student` (or [TopKTargets] for "topk").
        mask: the positions that count, over the logits' leading dims (e.g. (B, L)); None = all.
        kind: "kl" (the chosen divergence at temperature T; the name is kept), "mse" (raw output matching,
            regression) or "topk" (against a cached top-k teacher).
    """

    name: str
    student: torch.Tensor
    teachers: list[torch.Tensor]
    mask: torch.Tensor | None = None
    kind: str = "kl"


@dataclass
class DistillationObjective:
    """loss = sum over terms of weights[term] * term; the terms are soft, hard, hidden, attention and extras.

    `weights` maps every term name to its weight: the single place a weight lives. A term whose weight
    is 0 is not computed (hard: not added). Extra terms (from `DistillationTrainer.extra_losses`) must
    have their weight declared here too (`extra_weights` in `from_args`): an undeclared term is an error,
    never a silent 1.0. Build one with `from_args` / `for_models`; the fields mirror `DistillationArguments`.

    Args:
        weights: {term name: weight}: soft_loss, hard_loss, hidden_loss, attention_loss and any extras.
        temperature: `DistillationArguments.temperature`.
        divergence: `DistillationArguments.divergence`.
        ensemble_mode: `DistillationArguments.ensemble_mode`.
        hidden_distance: `DistillationArguments.hidden_loss` ("mse" or "cosine").
        layer_map: resolved {student layer: teacher layer} for hidden states (`DistillationArguments.layer_map`).
        attention_layer_map: resolved map for attention maps (`DistillationArguments.attention_layer_map`).
        vocab_limit: compare logits on the first `vocab_limit` entries (vocabularies padded beyond the tokenizer).
        divergence_kwargs: the divergence's parameters, e.g. {"jsd_beta": 0.5}.
    """

    weights: dict[str, float]
    temperature: float = 2.0
    divergence: str = "forward_kl"
    ensemble_mode: str = "mean"
    hidden_distance: str = "mse"
    layer_map: dict[int, int] | None = None
    attention_layer_map: dict[int, int] | None = None
    vocab_limit: int | None = None
    divergence_kwargs: dict = field(default_factory=dict)
    # Routed / cross-tokenizer teachers (hf_distill.routing): the soft term over aligned position pairs.
    paired: object = None
    _paired_logs: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_args(cls, args, *, layer_map=None, attention_layer_map=None, vocab_limit=None, extra_weights=None):
        weights = {term: float(getattr(args, name)) for term, name in BUILTIN_WEIGHTS.items()}
        clash = set(extra_weights or {}) & set(weights)
        if clash:
            raise ValueError(f"extra loss terms {sorted(clash)} reuse built-in names; their weights come from args.")
        weights.update({name: float(w) for name, w in (extra_weights or {}).items()})
        return cls(
            weights,
            args.temperature,
            args.divergence,
            args.ensemble_mode,
            args.hidden_loss,
            layer_map,
            attention_layer_map,
            vocab_limit,
            args.divergence_kwargs(),
        )

    @classmethod
    def for_models(cls, args, student: nn.Module, teacher: nn.Module | None, **kwargs):
        """`from_args` with args.layer_map / attention_layer_map resolved and range-checked against the models."""
        maps = {}
        if args.hidden_weight > 0:
            maps["layer_map"] = resolve_layer_map(args.layer_map, count_layers(student), count_layers(teacher))
        if args.attention_weight > 0:
            maps["attention_layer_map"] = resolve_layer_map(
                args.attention_layer_map,
                count_layers(student),
                count_layers(teacher),
                what="attention_layer_map",
                allow_embeddings=False,
            )
        return cls.from_args(args, **maps, **kwargs)

    # ---- what to distill ------------------------------------------------------------------------

    def pairs(self, inputs: dict, student_outputs, teacher_outputs: list) -> list[LogitsPair]:
        """Every output field ending in `logits` that student and all teachers return (DESIGN's rules).

        2-D logits (B, C): one position per example. 3-D logits (B, L, C): positions with attention_mask 1, or
        for prompt/completion batches (`completion_mask`, hf_distill.lm_data) those predicting a completion token.
        QA start/end logits (B, L): one distribution over the real tokens (padding masked out of the softmax).
        One-output heads (regression) and divergence="mse" match raw outputs with squared error.
        """
        attention_mask = inputs.get("attention_mask")
        positions = soft_token_mask(inputs)  # prompt/completion data: the completion tokens only
        pairs = []
        for name, s in student_outputs.items():
            if not name.endswith("logits") or not torch.is_tensor(s):
                continue
            if not all(name in t and isinstance(t[name], (torch.Tensor, TopKTargets)) for t in teacher_outputs):
                continue
            ts = [t[name] for t in teacher_outputs]
            if isinstance(ts[0], TopKTargets):  # cached top-k teacher: the student keeps its full vocabulary
                pairs.append(LogitsPair(name, s, ts, token_mask(positions, s), "topk"))
            else:
                pairs.append(self._logits_pair(name, s, ts, attention_mask, positions))
        return pairs

    def _logits_pair(self, name: str, s: torch.Tensor, ts: list, attention_mask, positions=None) -> LogitsPair:
        if self.vocab_limit is not None and s.dim() == 3:  # padding rows beyond the tokenizer are no tokens
            s, ts = s[..., : self.vocab_limit], [t[..., : self.vocab_limit] for t in ts]
        kind = "mse" if s.shape[-1] == 1 or self.divergence == "mse" else "kl"
        mask = token_mask(attention_mask if positions is None else positions, s)
        if name in SPAN_LOGITS and attention_mask is not None and attention_mask.shape == s.shape:
            keep = attention_mask.bool()  # (B, L): the classes are the tokens
            if kind == "mse":  # match raw scores at the real tokens only: (B, L) -> (B, L, 1) positions
                s, ts, mask = s.unsqueeze(-1), [t.unsqueeze(-1) for t in ts], keep
            else:
                s, ts = losses.mask_logits(s, keep), [losses.mask_logits(t, keep) for t in ts]
        return LogitsPair(name, s, ts, mask, kind)

    # ---- the terms ------------------------------------------------------------------------------

    def pair_loss(self, pair: LogitsPair) -> torch.Tensor:
        """One pair's soft loss: the chosen divergence from the registry (losses.DIVERGENCES), at T, scaled by T^2."""
        T = self.temperature
        try:
            if pair.kind == "topk":
                t = pair.teachers[0]
                return losses.topk_divergence_loss(
                    pair.student,
                    t.indices,
                    t.values,
                    t.rest,
                    T,
                    pair.mask,
                    divergence=self.divergence,
                    **self.divergence_kwargs,
                )
            divergence = "mse" if pair.kind == "mse" else self.divergence
            params = {} if pair.kind == "mse" else self.divergence_kwargs
            # Several teachers are combined into one target here (losses.teacher_target), whatever the divergence.
            target = losses.teacher_target(pair.teachers, T, self.ensemble_mode, divergence)  # (..., C)
            return losses.divergence_loss(pair.student, target, T, pair.mask, divergence=divergence, **params)
        except ValueError as err:
            raise ValueError(f"distilling {pair.name!r}: {err}") from err

    def soft_loss(self, pairs: list[LogitsPair]) -> torch.Tensor:
        if not pairs:
            raise ValueError(
                "soft_weight > 0 but student and teacher return no common `*logits` output to distill; "
                "override DistillationTrainer.distillation_pairs for this task."
            )
        return torch.stack([self.pair_loss(p) for p in pairs]).mean()

    def hidden_loss(self, inputs: dict, student_outputs, teacher_outputs: list) -> torch.Tensor:
        """Mean over teachers and mapped layers of D(proj(h_s[i]), h_t[j]) over the real tokens.

        The student's states come from `projected_hidden_states` when a `ProjectedStudent` produced them.
        """
        s_states = student_outputs.get("projected_hidden_states") or student_outputs["hidden_states"]  # (B, L, d_t)
        mask = inputs.get("attention_mask")
        if mask is not None and bool(mask.all()):  # no padding (one check per step): no token selection per pair
            mask = None
        terms = [
            losses.hidden_state_loss(s_states[i], t_out["hidden_states"][j], mask, self.hidden_distance)
            for t_out in teacher_outputs
            for i, j in self.layer_map.items()
        ]
        return torch.stack(terms).mean()

    def attention_loss(self, inputs: dict, student_outputs, teacher_outputs: list) -> torch.Tensor:
        s_maps = student_outputs.get("attentions")  # tuple of (B, H, L, L), index 0 = transformer layer 1
        terms = []
        for t_out in teacher_outputs:
            t_maps = t_out.get("attentions")
            if not s_maps or not t_maps:
                raise ValueError(
                    "attention_weight > 0 but a model returned no attention maps; load student and teacher with "
                    "attn_implementation='eager'."
                )
            for i, j in self.attention_layer_map.items():
                terms.append(losses.attention_map_loss(s_maps[i - 1], t_maps[j - 1], inputs.get("attention_mask")))
        return torch.stack(terms).mean()

    def terms(
        self, inputs, student_outputs, teacher_outputs, hard_loss=None, pairs=None, include_soft: bool = True
    ) -> dict[str, torch.Tensor]:
        """The built-in terms whose weight is > 0 (hard only when the batch had labels).

        include_soft=False leaves the soft term out (the chunked path computes it with the hard one).
        """
        w = self.weights
        terms = {}
        if w["soft_loss"] > 0 and include_soft and self.paired is not None:  # per-teacher parts kept for the logs
            terms["soft_loss"], self._paired_logs = self.paired.full_loss(
                inputs, student_outputs["logits"], teacher_outputs
            )
        elif w["soft_loss"] > 0 and include_soft:
            pairs = self.pairs(inputs, student_outputs, teacher_outputs) if pairs is None else pairs
            terms["soft_loss"] = self.soft_loss(pairs)
        if hard_loss is not None and w["hard_loss"] > 0:
            terms["hard_loss"] = hard_loss
        if w["hidden_loss"] > 0:
            terms["hidden_loss"] = self.hidden_loss(inputs, student_outputs, teacher_outputs)
        if w["attention_loss"] > 0:
            terms["attention_loss"] = self.attention_loss(inputs, student_outputs, teacher_outputs)
        return terms

    def lm_head_loss(
        self,
        inputs: dict,
        student_hidden: torch.Tensor,
        teacher_hidden: list[torch.Tensor],
        student_head: OutputHead,
        teacher_heads: list[OutputHead],
        chunk_size: int,
        scales: dict[str, float] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A causal LM's soft and hard terms from last hidden states (B, L, H), `chunk_size` tokens at a time.

        The same numbers as the full-logits path (soft: the divergence over the real tokens, vocab_limit applied;
        hard: the model's next-token cross-entropy over its whole output), without (B, L, V) logits. Returns the
        weighted (and `scales`d, see `combine`) sum of both, differentiable, and the two terms as per-token means
        of this batch, detached, for the logs.
        """
        labels = inputs.get("labels")
        if not has_labels(labels):
            labels = None  # a transfer-set batch: soft targets only
        keep, soft_mask, next_labels = causal_lm_rows(soft_token_mask(inputs), labels, student_hidden.shape[:2])
        keep = keep.to(student_hidden.device)
        n_soft = soft_mask.sum().clamp_min(1)
        n_hard = (next_labels != IGNORE_INDEX).sum().clamp_min(1) if next_labels is not None else None
        w_soft, w_hard = self._head_weights(scales)
        w_hard = w_hard if n_hard is not None else 0.0
        params = {} if self.divergence in losses.LOGIT_DIVERGENCES else self.divergence_kwargs
        out = chunked_head_loss(
            student_hidden[keep],
            student_head,
            [h[keep] for h in teacher_hidden],
            teacher_heads,
            labels=next_labels,
            soft_mask=soft_mask,
            temperature=self.temperature,
            divergence=self.divergence,
            ensemble_mode=self.ensemble_mode,
            vocab_limit=self.vocab_limit,
            chunk_size=chunk_size,
            **params,
            soft_scale=w_soft / n_soft if w_soft else 0.0,
            hard_scale=w_hard / n_hard if w_hard else 0.0,  # no sync
        )
        return out.loss, self._head_terms(out.soft_sum / n_soft, out.hard_sum / n_hard if n_hard is not None else None)

    def chunked_loss(
        self,
        inputs: dict,
        student_outputs,
        teacher_outputs: list,
        student_head: OutputHead,
        teacher_heads: list[OutputHead],
        chunk_size: int,
        scales=None,
        extra=None,
    ):
        """(total loss, {term: value}) of a causal LM run with output_hidden_states and logits_to_keep=1.

        Soft and hard terms come from the last hidden states, `chunk_size` tokens at a time (`lm_head_loss`);
        hidden, attention and `extra` terms are computed and weighted as usual (`terms`, `combine`).
        """
        teacher_hidden = [None if out is None else out["hidden_states"][-1] for out in teacher_outputs]  # (B, L, H)
        head = self.paired_head_loss if self.paired is not None else self.lm_head_loss
        head_loss, terms = head(
            inputs,
            student_outputs["hidden_states"][-1],
            teacher_hidden,
            student_head,
            teacher_heads,
            chunk_size,
            scales,
        )
        others = self.terms(inputs, student_outputs, teacher_outputs, include_soft=False)
        others.update(extra or {})
        loss = head_loss + self.combine(others, scales) if others else head_loss
        return loss, {**terms, **others, **self._pop_paired_logs()}

    def paired_head_loss(
        self,
        inputs: dict,
        student_hidden,
        teacher_hidden: list,
        student_head: OutputHead,
        teacher_heads: list[OutputHead],
        chunk_size: int,
        scales=None,
    ):
        """`lm_head_loss` for routed / cross-tokenizer teachers: the soft term over aligned pairs (`self.paired`)."""
        w_soft, w_hard = self._head_weights(scales)
        loss, soft, hard, self._paired_logs = self.paired.chunked_loss(
            inputs, student_hidden, teacher_hidden, student_head, teacher_heads, chunk_size, w_soft, w_hard
        )
        return loss, self._head_terms(soft, hard)

    def _head_weights(self, scales: dict[str, float] | None) -> tuple[float, float]:
        """The soft and hard weights of the chunked output-layer loss, times their `scales` (see `combine`)."""
        scales = scales or {}
        return (
            self.weights["soft_loss"] * scales.get("soft_loss", 1.0),
            self.weights["hard_loss"] * scales.get("hard_loss", 1.0),
        )

    def _head_terms(self, soft: torch.Tensor, hard: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The soft and hard terms to log, those whose weight is on (hard: only for a batch with labels)."""
        terms = {"soft_loss": soft} if self.weights["soft_loss"] > 0 else {}
        if hard is not None and self.weights["hard_loss"] > 0:
            terms["hard_loss"] = hard
        return terms

    def _pop_paired_logs(self) -> dict:
        logs, self._paired_logs = self._paired_logs, {}
        return logs

    def with_divergence(self, name: str, params: dict) -> DistillationObjective:
        """A copy whose soft term uses divergence `name` with `params` (e.g. on_policy_divergence)."""
        return replace(self, divergence=name, divergence_kwargs=params)

    def output_flags(self) -> dict:
        """The forward flags the weighted terms need: hidden states for hidden_loss, attentions for attention_loss."""
        flags = {"output_hidden_states": True} if self.weights["hidden_loss"] > 0 else {}
        return {**flags, "output_attentions": True} if self.weights["attention_loss"] > 0 else flags

    # ---- putting them together --------------------------------------------------------------------

    def combine(self, terms: dict[str, torch.Tensor], scales: dict[str, float] | None = None) -> torch.Tensor:
        """sum of weights[name] * scales[name] * value; a term without a declared weight is an error.

        `scales` (default 1 each) rescale terms per batch, e.g. token-level terms to a token count taken over
        several micro-batches (gradient accumulation) instead of this batch's own.
        """
        if not terms:
            raise ValueError("this batch produced no loss: it has no labels and soft/hidden weights are 0.")
        unknown = sorted(set(terms) - set(self.weights))
        if unknown:
            raise ValueError(
                f"loss terms {unknown} have no weight: declare one, e.g. `extra_loss_weights = {{{unknown[0]!r}: "
                "1.0}` on the DistillationTrainer subclass (or extra_weights= in DistillationObjective.from_args)."
            )
        scales = scales or {}
        return sum(self.weights[name] * scales.get(name, 1.0) * value for name, value in terms.items())

    def __call__(self, inputs, student_outputs, teacher_outputs, hard_loss=None, pairs=None, extra=None, scales=None):
        """Return (total loss, {term name: value}) for one batch."""
        terms = self.terms(inputs, student_outputs, teacher_outputs, hard_loss, pairs)
        terms.update(extra or {})
        return self.combine(terms, scales), {**terms, **self._pop_paired_logs()}


class TermMeans:
    """Running means of the logged loss terms, one set per split ("train", "eval").

    Training weighs each step alike (like `loss`); evaluation weighs each batch by its size (like eval_loss).
    `pop` averages over the processes with `reduce` (e.g. accelerator.reduce) and starts again.
    """

    def __init__(self):
        self.sums: dict[str, dict[str, tuple]] = {"train": {}, "eval": {}}

    def add(self, split: str, terms: dict[str, torch.Tensor], weight: float = 1) -> None:
        sums = self.sums[split]
        for name, value in terms.items():
            total, count = sums.get(name, (0.0, 0))
            sums[name] = (total + value.detach().float() * weight, count + weight)

    def reset(self, split: str) -> None:
        self.sums[split] = {}

    def pop(self, split: str, device, reduce) -> dict[str, float]:
        sums, self.sums[split] = self.sums[split], {}
        return mean_over_processes(
            {name: total / count for name, (total, count) in sorted(sums.items())}, device, reduce
        )


def mean_over_processes(values: dict, device, reduce) -> dict[str, float]:
    """Each value (a number or 0-d tensor) averaged over the processes with `reduce` (accelerator.reduce)."""
    return {
        name: reduce(torch.as_tensor(value, device=device, dtype=torch.float32), reduction="mean").item()
        for name, value in values.items()
    }


def with_projections(student: nn.Module, layer_map: dict[int, int] | None, teacher: nn.Module | None) -> nn.Module:
    """The student, or a ProjectedStudent when hidden alignment needs learned projections (the widths differ)."""
    if layer_map is None:
        return student
    projections = build_projections(layer_map, hidden_size(student), hidden_size(teacher))
    return student if projections is None else ProjectedStudent(student, projections)


class ProjectedStudent(nn.Module):
    """The student and its hidden-size projections as one module (used only when the widths differ).

    forward returns the student's output fields as a dict, plus `projected_hidden_states`: `hidden_states` with
    `projections[str(i)]` applied to each mapped layer i, (B, L, d_s) -> (B, L, d_t). Because the
    projections run inside forward, DDP averages their gradients, FSDP / ZeRO-3 gather and shard them,
    and the Trainer puts them in the optimizer, clips them and checkpoints them with the student.
    `DistillationTrainer.save_model` writes the inner `student` only.
    """

    def __init__(self, student: nn.Module, projections: nn.ModuleDict):
        super().__init__()
        self.student = student
        self.projections = projections
        self.config = getattr(student, "config", None)  # what Trainer / DeepSpeed read (hidden_size, use_cache...)
        # Tied weights (an LM head sharing the embedding) would be written twice, which safetensors refuses: the
        # state dict keeps the first name of each shared parameter, and the Trainer re-ties them after loading.
        seen, self._keys_to_ignore_on_save = set(), []
        for name, param in self.named_parameters(remove_duplicate=False):
            if id(param) in seen:
                self._keys_to_ignore_on_save.append(name)
            seen.add(id(param))

    def forward(self, *args, **kwargs) -> dict:
        # A plain dict: a ModelOutput dataclass takes no new field (DDP rebuilds outputs from their fields).
        outputs = dict(self.student(*args, **kwargs))
        states = outputs.get("hidden_states")
        if states is not None:
            outputs["projected_hidden_states"] = tuple(
                self.projections[str(i)](h.to(self.projections[str(i)].weight.dtype))
                if str(i) in self.projections
                else h
                for i, h in enumerate(states)
            )
        return outputs

    @staticmethod
    def parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleDict | None]:
        """(the student, its projections) of a ProjectedStudent; (model, None) for any other model."""
        return (model.student, model.projections) if isinstance(model, ProjectedStudent) else (model, None)

    def gradient_checkpointing_enable(self, **kwargs):
        self.student.gradient_checkpointing_enable(**kwargs)

    def gradient_checkpointing_disable(self):
        self.student.gradient_checkpointing_disable()

    def tie_weights(self):
        self.student.tie_weights()  # the Trainer calls this after loading a checkpoint without the tied copies

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        if destination is None:  # the top-level call (a parent module fills its own dict in place)
            for name in self._keys_to_ignore_on_save:
                state.pop(name, None)
        return state


@dataclass
class HeldLabels:
    """Labels kept out of the student's forward: the hard loss is computed from them after it."""

    labels: torch.Tensor
    rows: torch.Tensor | None = None  # (B,) bool labelled rows of a mixed float-label batch; None = label smoothing


def unlabelled_rows(labels: torch.Tensor) -> torch.Tensor:
    """(B,) bool: examples that carry no label at all (-100 everywhere; NaN also counts for float labels)."""
    missing = labels == IGNORE_INDEX
    if labels.is_floating_point():
        missing = missing | torch.isnan(labels)
    return missing.reshape(labels.shape[0], -1).all(dim=1)


def hold_labels(student_inputs: dict, smoothing: bool = False) -> tuple[dict, HeldLabels | None]:
    """The three label regimes: the student's inputs, and the labels held back when the hard loss is taken here.

    - no labelled row (a transfer-set batch): labels dropped, soft targets only;
    - float labels with some unlabelled rows (regression / multi-label have no ignore_index): held with the rows;
    - label smoothing: held for the smoother; otherwise the model's own loss (-100 is ignored by it).
    """
    labels = student_inputs.get("labels")
    if not torch.is_tensor(labels):
        return student_inputs, None
    unlabelled = unlabelled_rows(labels)  # (B,)
    rest = {k: v for k, v in student_inputs.items() if k != "labels"}
    if bool(unlabelled.all()):
        return rest, None
    if labels.is_floating_point() and bool(unlabelled.any()):
        return rest, HeldLabels(labels, ~unlabelled)
    return (rest, HeldLabels(labels)) if smoothing else (student_inputs, None)


def hard_loss(
    student_outputs, held: HeldLabels | None, config=None, label_smoother=None, shift_labels: bool = False
) -> torch.Tensor | None:
    """The student's own loss: the model's `.loss`, or for held float labels the loss on the labelled rows.

    Labels held for label smoothing (`held.rows` None) go through `label_smoother` (the Trainer's
    `LabelSmoother`), with next-token labels shifted for a causal LM (`shift_labels`).
    """
    if held is not None and held.rows is None:
        return label_smoother(student_outputs, held.labels, shift_labels=shift_labels)
    if held is None:  # from whatever labels the task uses (labels, start/end_positions, ...); None without labels
        return student_outputs.get("loss") if isinstance(student_outputs, dict) else None
    from transformers.loss.loss_utils import ForSequenceClassificationLoss

    logits = student_outputs.get("logits") if isinstance(student_outputs, dict) else None
    if logits is None or logits.dim() != 2 or config is None:
        raise ValueError(
            "this batch mixes labelled and unlabelled (-100 / NaN) float labels, which is supported for "
            "sequence-classification heads (regression, multi-label) only; give every example of a batch a "
            "label, or none, or override compute_distillation_loss."
        )
    return ForSequenceClassificationLoss(held.labels[held.rows], logits[held.rows], config)  # labelled rows only
