"""DistillationTrainer: a `transformers.Trainer` that trains a student on a frozen teacher's outputs.

The trainer only wires pieces together; every number comes from `hf_distill.losses`.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from . import losses
from .config import DistillationArguments
from .layers import build_projections, count_layers, hidden_size, resolve_layer_map
from .sharding import adapt_to_sharding, check_sharding, full_state_dict
from .teacher import (
    CACHE_COLUMNS,
    CachedOutputsCollator,
    freeze,
    has_cached_outputs,
    load_teacher,
    place_teacher,
    teacher_tokenizer,
)
from .teacher import forward_params as _forward_params

logger = logging.getLogger(__name__)

PROJECTIONS_NAME = "distill_projections.safetensors"
# Inputs every transformers model accepts through **kwargs although they are not named in forward().
_OUTPUT_FLAGS = ("output_hidden_states", "output_attentions", "return_dict")
# 2-D output fields whose classes are the sequence positions (extractive QA): the softmax runs over the
# tokens of each example, so padding positions are masked out of it in teacher and student alike.
SPAN_LOGITS = ("start_logits", "end_logits")
# Attention implementations that can return attention probabilities (sdpa / flash kernels cannot).
_ATTENTION_RETURNING = ("eager",)


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss component is NaN or infinite, before it reaches the weights."""


@dataclass
class TopKTargets:
    """A cached top-k teacher distribution: ids (..., k), raw logits (..., k), rest probability mass (...)."""

    indices: torch.Tensor
    values: torch.Tensor
    rest: torch.Tensor


@dataclass
class LogitsPair:
    """One thing to distill: student logits vs the teacher logits (one tensor per teacher).

    `mask` (the logits' leading dims, e.g. (B, L)) selects the positions that count; None = all.
    `kind` is "kl" (soft-target KL at temperature T), "mse" (raw output matching, regression) or
    "topk" (KL against a cached top-k teacher, `teachers` = [TopKTargets]).
    """

    name: str
    student: torch.Tensor
    teachers: list[torch.Tensor]
    mask: torch.Tensor | None = None
    kind: str = "kl"


class _ZeroGradAfterStep(TrainerCallback):
    """The Trainer zeroes only the student's gradients after each optimizer step; do the same for `module`."""

    def __init__(self, module: nn.Module):
        self.module = module

    def on_step_end(self, args, state, control, **kwargs):
        self.module.zero_grad(set_to_none=True)


def _is_default_id2label(id2label: dict) -> bool:
    return all(str(v) == f"LABEL_{k}" for k, v in id2label.items())


def _unwrap_peft(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _unlabelled_rows(labels: torch.Tensor) -> torch.Tensor:
    """(B,) bool: examples that carry no label at all (-100 everywhere; NaN also counts for float labels)."""
    missing = labels == -100
    if labels.is_floating_point():
        missing = missing | torch.isnan(labels)
    return missing.reshape(labels.shape[0], -1).all(dim=1)


class DistillationTrainer(Trainer):
    """Trainer for knowledge distillation (Hinton et al., 2015; DistilBERT).

    loss = soft_weight * T^2 * KL(p_t || p_s at T) + hard_weight * student loss on labels
           + hidden_weight * hidden-state alignment

    `model` is the student (trained, saved, pushed). `teacher_model` is a model, a name/path, or a
    list of them (an ensemble, combined by `args.ensemble_mode`); it is frozen, kept in eval mode, run
    without gradients and never saved. `peft_config` (a `peft.PeftConfig`) wraps the student with
    `get_peft_model` so only the adapter trains; `save_model` then writes the adapter, or the merged
    model when `merge_adapter_on_save=True` (checkpoints always keep the adapter). All other arguments
    are those of `transformers.Trainer`.

    To distill a task the generic rules do not cover, override `distillation_pairs`; add loss terms
    with `extra_losses` (attention-map distillation lives there when attention_weight > 0).
    """

    # Each micro-batch loss is a per-batch mean; the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        teacher_model: PreTrainedModel | nn.Module | str | list | None = None,
        args: DistillationArguments | None = None,
        *trainer_args,
        teacher_processing_class=None,
        peft_config=None,
        merge_adapter_on_save: bool = False,
        **trainer_kwargs,
    ):
        if model is None:
            raise ValueError("DistillationTrainer needs the student as `model`.")
        if args is None:
            args = DistillationArguments(output_dir="distilled_model")
        if not isinstance(args, DistillationArguments):
            raise ValueError(
                f"args must be a DistillationArguments (it carries temperature and the loss weights), "
                f"got {type(args).__name__}; build one with the same fields plus the distillation ones."
            )
        # A train set that carries cached teacher outputs (hf_distill.cache) needs no teacher at all.
        self.cached = has_cached_outputs(trainer_kwargs.get("train_dataset"))
        if self.cached:
            self._check_cache_only(model, args, teacher_model, trainer_kwargs)
            teacher_list = []
        elif teacher_model is None:
            raise ValueError(
                "DistillationTrainer needs a `teacher_model` (a model, a Hub id or a local directory), or a "
                "train_dataset with cached teacher outputs (python -m hf_distill.cache)."
            )
        else:
            teacher_list = teacher_model if isinstance(teacher_model, (list, tuple)) else [teacher_model]
        if not teacher_list and not self.cached:
            raise ValueError("teacher_model is an empty list; give at least one teacher.")
        # Attention maps are only returned by the eager implementation: load teachers given by path with it.
        load_kwargs = {"attn_implementation": "eager"} if args.attention_weight > 0 else {}
        self.teachers = [freeze(load_teacher(t, model, **load_kwargs)) for t in teacher_list]
        if any(t is model for t in self.teachers):
            raise ValueError("the teacher and the student are the same object; pass a separate student model.")
        model = self._wrap_peft(model, peft_config)
        self.merge_adapter_on_save = merge_adapter_on_save

        processing_class = trainer_kwargs.get("processing_class")
        self._vocab_limit = self._check_compatible(model, args, processing_class, teacher_processing_class, teacher_list)
        self.layer_map = None
        self.projections = None
        if args.hidden_weight > 0:
            self.layer_map = resolve_layer_map(args.layer_map, count_layers(model), count_layers(self.teachers[0]))
            self.projections = build_projections(self.layer_map, hidden_size(model), hidden_size(self.teachers[0]))
        self.attention_layer_map = None
        if args.attention_weight > 0:
            self.attention_layer_map = resolve_layer_map(
                args.attention_layer_map, count_layers(model), count_layers(self.teachers[0]),
                what="attention_layer_map", allow_embeddings=False,
            )

        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        check_sharding(self.accelerator, self.args)  # FSDP / DeepSpeed asked for must be in effect
        adapt_to_sharding(self.accelerator, self.model)
        if self.cached:
            self.data_collator = CachedOutputsCollator(self.data_collator)
        if merge_adapter_on_save and (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            raise ValueError(
                "merge_adapter_on_save is not supported under DeepSpeed or FSDP (the adapter is sharded); save the "
                "adapter and merge it afterwards with PeftModel.from_pretrained(...).merge_and_unload()."
            )
        # We compute our own loss: the Trainer must neither count label tokens nor pass num_items_in_batch.
        self.model_accepts_loss_kwargs = False
        if self.projections is not None:
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                raise ValueError(
                    "hidden-size projections (student and teacher hidden sizes differ) are not supported under "
                    "DeepSpeed or FSDP; use a student with the teacher's hidden size or train with DDP."
                )
            self.projections.to(self.args.device)
            self.add_callback(_ZeroGradAfterStep(self.projections))
        self.teachers = [
            place_teacher(t, self.accelerator, self.args.device, self.args.teacher_dtype) for t in self.teachers
        ]
        self._teacher_params = [set(_forward_params(t)) for t in self.teachers]
        self._student_params = _forward_params(self.model)
        self._sums = {"train": {}, "eval": {}}

    @property
    def teacher(self) -> nn.Module | None:
        """The (first) teacher; None when training on cached teacher outputs."""
        return self.teachers[0] if self.teachers else None

    @staticmethod
    def _check_cache_only(student, args, teacher_model, trainer_kwargs) -> None:
        """Training on cached teacher outputs: check what the cache can and cannot provide."""
        train = trainer_kwargs["train_dataset"]
        if teacher_model is not None:
            logger.info("the train dataset carries cached teacher outputs: the teacher is not loaded or run.")
        if args.hidden_weight > 0 or args.attention_weight > 0:
            raise ValueError(
                "the train dataset carries cached teacher outputs, which hold logits only: hidden-state and attention "
                "alignment need the live teacher. Set hidden_weight=attention_weight=0, or drop the cached columns "
                "and pass teacher_model."
            )
        evals = trainer_kwargs.get("eval_dataset")
        for name, ds in (evals.items() if isinstance(evals, dict) else [("eval_dataset", evals)]):
            if ds is not None and not has_cached_outputs(ds):
                raise ValueError(
                    f"the train dataset carries cached teacher outputs but {name} does not, and no teacher is run: "
                    "cache it too (hf_distill.cache_teacher_outputs) or train without the cache."
                )
        first = train[0]
        if "teacher_temperature" in first:
            cached_t = torch.as_tensor(first["teacher_temperature"]).reshape(-1)[0].item()
            if abs(cached_t - args.temperature) > 1e-6:
                raise ValueError(
                    f"the top-k cache was made at temperature {cached_t} but args.temperature is {args.temperature}: "
                    "the cached rest mass holds for one temperature only. Use that temperature or cache again."
                )
        config = getattr(student, "config", None)
        if "teacher_logits" in first and type(student).__name__.endswith("ForSequenceClassification") and config:
            width = torch.as_tensor(first["teacher_logits"]).shape[-1]
            if width != config.num_labels:
                raise ValueError(
                    f"the cached teacher logits have {width} classes but the student predicts {config.num_labels}: "
                    "give the student the teacher's num_labels and id2label."
                )

    @staticmethod
    def _wrap_peft(model: nn.Module, peft_config) -> nn.Module:
        """Wrap the student with `peft.get_peft_model` when a `peft_config` is given (as TRL trainers do)."""
        if peft_config is None:
            return model
        from peft import PeftConfig, PeftModel, get_peft_model

        if not isinstance(peft_config, PeftConfig):
            raise ValueError(
                f"peft_config must be a peft.PeftConfig (e.g. LoraConfig(task_type='SEQ_CLS', r=8)), "
                f"got {type(peft_config).__name__}."
            )
        if isinstance(model, PeftModel):
            raise ValueError(
                "the student is already a PeftModel and a peft_config was given too; pass the base model with "
                "peft_config, or the PeftModel without it."
            )
        return get_peft_model(model, peft_config)

    # ---- construction checks -------------------------------------------------------------------

    def _check_compatible(self, student, args, processing_class, teacher_processing_class, teacher_list) -> int | None:
        """Fail early on pairs that cannot be distilled; return the vocabulary size logits are cut to, if any."""
        vocab_limit = None
        s_cfg = getattr(student, "config", None)
        for k, teacher in enumerate(self.teachers):
            who = "the teacher" if len(self.teachers) == 1 else f"teacher {k}"
            t_cfg = getattr(teacher, "config", None)
            if args.hidden_weight > 0 or args.attention_weight > 0:
                for name, cfg in (("student", s_cfg), (who, t_cfg)):
                    if cfg is None or not hasattr(cfg, "output_hidden_states"):
                        raise ValueError(
                            f"hidden_weight/attention_weight > 0 but the {name} ({type(student if name == 'student' else teacher).__name__}) "
                            "returns no hidden states (it is not a transformers model with a config); set them to 0 "
                            "or use a model that accepts output_hidden_states=True."
                        )
            if s_cfg is None or t_cfg is None:
                continue
            if args.attention_weight > 0:
                self._check_attentions(s_cfg, t_cfg, who)
            sv, tv = getattr(s_cfg, "vocab_size", None), getattr(t_cfg, "vocab_size", None)
            n_tok = len(processing_class) if processing_class is not None and hasattr(processing_class, "__len__") else None
            if sv is not None and sv == tv and n_tok is not None and n_tok < sv:
                # Same padded vocabulary (e.g. 32064 rows for 32011 tokens): padding rows are never real tokens.
                logger.info("vocab_size %d has %d padding rows beyond the tokenizer; logits are compared on the "
                            "first %d entries.", sv, sv - n_tok, n_tok)
                vocab_limit = n_tok
            if sv is not None and tv is not None and sv != tv:
                if n_tok is not None and min(sv, tv) >= n_tok:
                    logger.warning(
                        "student vocab_size %d and %s vocab_size %d differ only by padding rows beyond the "
                        "tokenizer's %d tokens; logits are compared on the first %d entries.", sv, who, tv, n_tok, n_tok,
                    )
                    vocab_limit = n_tok
                else:
                    raise ValueError(
                        f"the student's vocab_size ({sv}) differs from {who}'s ({tv}): they must share a tokenizer "
                        "to be distilled. Build the student from the teacher's config/tokenizer (see "
                        "init_student_from_teacher); if the sizes differ only by padding rows, pass the shared "
                        "tokenizer as processing_class."
                    )
            s_head = type(_unwrap_peft(student)).__name__
            t_head = type(_unwrap_peft(teacher)).__name__
            if s_head.endswith("Classification") and t_head.endswith("Classification"):
                if s_cfg.num_labels != t_cfg.num_labels:
                    raise ValueError(
                        f"the student predicts {s_cfg.num_labels} labels but {who} predicts {t_cfg.num_labels}: "
                        "logits of different widths cannot be distilled. Give the student num_labels="
                        f"{t_cfg.num_labels} and the teacher's id2label."
                    )
                s_map = {int(i): str(v) for i, v in s_cfg.id2label.items()}
                t_map = {int(i): str(v) for i, v in t_cfg.id2label.items()}
                if s_map != t_map and not (_is_default_id2label(s_map) or _is_default_id2label(t_map)):
                    raise ValueError(
                        f"the student's id2label {s_map} differs from {who}'s {t_map}: label i must mean the same "
                        "class in both. Set student.config.id2label (and label2id) to the teacher's."
                    )
        t_tok = None
        if processing_class is not None and teacher_list:
            # Also for a teacher given as a model object: the tokenizer saved where it was loaded from.
            t_tok = teacher_tokenizer(teacher_list[0], self.teachers[0], teacher_processing_class)
        if t_tok is not None and processing_class is not None and hasattr(t_tok, "get_vocab"):
            if t_tok.get_vocab() != processing_class.get_vocab():
                raise ValueError(
                    "the teacher's tokenizer and the student's (processing_class) have different vocabularies: the "
                    "same ids would mean different tokens. Use the teacher's tokenizer for the student."
                )
        return vocab_limit

    def _check_attentions(self, s_cfg, t_cfg, who: str) -> None:
        """attention_weight > 0 needs attention maps from both models, with the same number of heads."""
        for name, cfg in (("the student", s_cfg), (who, t_cfg)):
            impl = getattr(cfg, "_attn_implementation", None) or "eager"
            if impl not in _ATTENTION_RETURNING:
                raise ValueError(
                    f"attention_weight > 0 but {name} uses attn_implementation={impl!r}, which returns no attention "
                    "maps; load it with from_pretrained(..., attn_implementation='eager') or call "
                    "model.set_attn_implementation('eager') before building the trainer."
                )
        s_heads, t_heads = getattr(s_cfg, "num_attention_heads", None), getattr(t_cfg, "num_attention_heads", None)
        if s_heads != t_heads:
            raise ValueError(
                f"attention_weight > 0 needs the same number of attention heads, but the student has {s_heads} and "
                f"{who} has {t_heads}; give the student num_attention_heads={t_heads} or set attention_weight=0."
            )

    # ---- the extension point ------------------------------------------------------------------

    def distillation_pairs(self, inputs: dict, student_outputs, teacher_outputs: list) -> list[LogitsPair]:
        """Say what to distill: every output field ending in `logits` that student and teachers return.

        2-D logits (B, C) give one position per example; 3-D logits (B, L, C) (token classification,
        masked / causal LM) count the positions where `attention_mask` is 1. QA `start_logits` /
        `end_logits` (B, L) are one distribution over the tokens per example and head: padding
        tokens are masked out of the softmax in teacher and student. One-output heads (regression)
        and `logit_loss="mse"` match raw outputs with squared error. Override this for tasks these
        rules do not fit (see the README's tasks section).
        """
        pairs = []
        attention_mask = inputs.get("attention_mask")
        for name, s in student_outputs.items():
            if not name.endswith("logits") or not torch.is_tensor(s):
                continue
            if not all(name in t and isinstance(t[name], (torch.Tensor, TopKTargets)) for t in teacher_outputs):
                continue
            ts = [t[name] for t in teacher_outputs]
            mask = None
            if isinstance(ts[0], TopKTargets):  # cached top-k teacher: the student keeps its full vocabulary
                if s.dim() == 3 and attention_mask is not None and attention_mask.shape == s.shape[:2]:
                    mask = attention_mask.bool()
                pairs.append(LogitsPair(name, s, ts, mask, "topk"))
                continue
            if self._vocab_limit is not None and s.dim() == 3:
                s, ts = s[..., : self._vocab_limit], [t[..., : self._vocab_limit] for t in ts]
            kind = "mse" if s.shape[-1] == 1 or self.args.logit_loss == "mse" else "kl"
            if s.dim() == 3 and attention_mask is not None and attention_mask.shape == s.shape[:2]:
                mask = attention_mask.bool()
            elif name in SPAN_LOGITS and attention_mask is not None and attention_mask.shape == s.shape:
                keep = attention_mask.bool()  # (B, L): the classes are the tokens
                if kind == "mse":  # match raw scores at the real tokens only: (B, L) -> (B, L, 1) positions
                    s, ts, mask = s.unsqueeze(-1), [t.unsqueeze(-1) for t in ts], keep
                else:
                    s, ts = losses.mask_logits(s, keep), [losses.mask_logits(t, keep) for t in ts]
            pairs.append(LogitsPair(name, s, ts, mask, kind))
        return pairs

    # ---- forward passes -----------------------------------------------------------------------

    def _inputs_for(self, accepted: set[str] | None, inputs: dict, drop_labels: bool) -> dict:
        kept = {k: v for k, v in inputs.items() if accepted is None or k in accepted or k in _OUTPUT_FLAGS}
        if drop_labels:  # teachers get no labels of any name (QA: start/end_positions): no wasted loss
            for name in ("labels", *getattr(self, "label_names", ())):
                kept.pop(name, None)
        return kept

    def _output_flags(self) -> dict:
        flags = {}
        if self.args.hidden_weight > 0:
            flags["output_hidden_states"] = True
        if self.args.attention_weight > 0:
            flags["output_attentions"] = True
        return flags

    def teacher_forward(self, inputs: dict) -> list:
        """Run every teacher on its share of the inputs, without building an autograd graph.

        A batch with cached teacher outputs is read instead: one output, {"logits": tensor or TopKTargets}.
        """
        if "teacher_logits" in inputs:
            return [{"logits": inputs["teacher_logits"]}]
        if "teacher_topk_indices" in inputs:
            return [{"logits": TopKTargets(inputs["teacher_topk_indices"], inputs["teacher_topk_values"],
                                           inputs["teacher_topk_rest"])}]
        if not self.teachers:
            raise ValueError("this batch carries no cached teacher outputs and no teacher was loaded.")
        outputs = []
        # The student's forward gets autocast from Accelerate's wrapper; the teacher is not wrapped, so ask for it.
        with torch.no_grad(), self.accelerator.autocast():
            for teacher, accepted in zip(self.teachers, self._teacher_params):
                outputs.append(teacher(**self._inputs_for(accepted, inputs, drop_labels=True), **self._output_flags()))
        return outputs

    def compute_distillation_loss(self, model, inputs: dict):
        """Return (total loss, {component: value}, student outputs) for one batch."""
        args = self.args
        labels = inputs.get("labels")
        student_inputs = self._inputs_for(self._student_params, inputs, drop_labels=False)
        partial_labels = None
        if torch.is_tensor(labels) and "labels" in student_inputs:
            unlabelled = _unlabelled_rows(labels)  # (B,)
            if bool(unlabelled.all()):
                student_inputs.pop("labels")  # a fully unlabelled (transfer-set) batch: soft targets only
            elif labels.is_floating_point() and bool(unlabelled.any()):
                # Regression / multi-label losses have no ignore_index (integer labels do: -100 rows drop out of
                # the model's cross-entropy): the hard loss is taken over the labelled rows after the forward.
                partial_labels = (student_inputs.pop("labels"), ~unlabelled)
        smoothed_labels = None
        if self.label_smoother is not None and "labels" in student_inputs:
            smoothed_labels = student_inputs.pop("labels")
        # Teacher first: its activations are freed before the student's (kept for backward) are built.
        teacher_outputs = self.teacher_forward(inputs)
        student_outputs = model(**student_inputs, **self._output_flags())

        components: dict[str, torch.Tensor] = {}
        pairs = self.distillation_pairs(inputs, student_outputs, teacher_outputs)
        if args.soft_weight > 0:
            if not pairs:
                raise ValueError(
                    "soft_weight > 0 but student and teacher return no common `*logits` output to distill; "
                    "override DistillationTrainer.distillation_pairs for this task."
                )
            components["soft_loss"] = torch.stack([self._pair_loss(p) for p in pairs]).mean()
        hard = None
        if smoothed_labels is not None:
            unwrapped = self.accelerator.unwrap_model(model)
            shift = type(getattr(unwrapped, "get_base_model", lambda: unwrapped)()).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
            hard = self.label_smoother(student_outputs, smoothed_labels, shift_labels=shift)
        elif partial_labels is not None:
            hard = self._labelled_rows_loss(model, student_outputs, *partial_labels)
        elif isinstance(student_outputs, dict):
            hard = student_outputs.get("loss")  # from whatever labels the task uses (labels, start/end_positions, ...)
        if hard is not None and args.hard_weight > 0:
            components["hard_loss"] = hard
        if args.hidden_weight > 0:
            components["hidden_loss"] = self._hidden_loss(inputs, student_outputs, teacher_outputs)
        extra = self.extra_losses(inputs, student_outputs, teacher_outputs)
        components.update(extra)

        weights = {"soft_loss": args.soft_weight, "hard_loss": args.hard_weight, "hidden_loss": args.hidden_weight,
                   "attention_loss": args.attention_weight}
        total = sum(weights.get(name, 1.0) * value for name, value in components.items())
        if not components:
            raise ValueError("this batch produced no loss: it has no labels and soft/hidden weights are 0.")
        return total, components, student_outputs

    def extra_losses(self, inputs: dict, student_outputs, teacher_outputs: list) -> dict[str, torch.Tensor]:
        """Additional named loss terms: "attention_loss" is weighted by attention_weight, any other name by 1.

        By default this is attention-map distillation when attention_weight > 0; an override that adds
        terms should start from `super().extra_losses(...)` to keep it.
        """
        if self.args.attention_weight <= 0:
            return {}
        return {"attention_loss": self._attention_loss(inputs, student_outputs, teacher_outputs)}

    def _attention_loss(self, inputs, student_outputs, teacher_outputs) -> torch.Tensor:
        s_maps = student_outputs.get("attentions")  # tuple of (B, H, L, L), index 0 = transformer layer 1
        mask = inputs.get("attention_mask")
        terms = []
        for t_out in teacher_outputs:
            t_maps = t_out.get("attentions")
            if not s_maps or not t_maps:
                raise ValueError(
                    "attention_weight > 0 but a model returned no attention maps; load student and teacher with "
                    "attn_implementation='eager'."
                )
            for s_idx, t_idx in self.attention_layer_map.items():
                terms.append(losses.attention_map_loss(s_maps[s_idx - 1], t_maps[t_idx - 1], mask))
        return torch.stack(terms).mean()

    def _labelled_rows_loss(self, model, student_outputs, labels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The student's own loss on the labelled rows of a batch of float labels (regression, multi-label)."""
        from transformers.loss.loss_utils import ForSequenceClassificationLoss

        logits = student_outputs.get("logits") if isinstance(student_outputs, dict) else None
        config = getattr(_unwrap_peft(self.accelerator.unwrap_model(model)), "config", None)
        if logits is None or logits.dim() != 2 or config is None:
            raise ValueError(
                "this batch mixes labelled and unlabelled (-100 / NaN) float labels, which is supported for "
                "sequence-classification heads (regression, multi-label) only; give every example of a batch a "
                "label, or none, or override compute_distillation_loss."
            )
        return ForSequenceClassificationLoss(labels[rows], logits[rows], config)  # (B_labelled, C) rows only

    def _pair_loss(self, pair: LogitsPair) -> torch.Tensor:
        T = self.args.temperature
        if pair.kind == "topk":
            t = pair.teachers[0]
            return losses.topk_soft_target_loss(pair.student, t.indices, t.values, t.rest, T, pair.mask)
        if pair.kind == "mse":
            target = torch.stack([t.float() for t in pair.teachers]).mean(0)
            return losses.logit_mse_loss(pair.student, target, pair.mask)
        if len(pair.teachers) == 1:
            return losses.soft_target_loss(pair.student, pair.teachers[0], T, pair.mask)
        target = losses.ensemble_log_probs(pair.teachers, T, self.args.ensemble_mode)
        return losses.soft_target_loss_from_log_probs(pair.student, target, T, pair.mask)

    def _hidden_loss(self, inputs, student_outputs, teacher_outputs) -> torch.Tensor:
        s_states = student_outputs["hidden_states"]  # tuple of (B, L, d_s), index 0 = embeddings
        mask = inputs.get("attention_mask")
        terms = []
        for t_out in teacher_outputs:
            t_states = t_out["hidden_states"]
            for s_idx, t_idx in self.layer_map.items():
                h = s_states[s_idx]
                if self.projections is not None:
                    h = self.projections[str(s_idx)](h.to(self.projections[str(s_idx)].weight.dtype))  # (B, L, d_t)
                terms.append(losses.hidden_state_loss(h, t_states[t_idx], mask, self.args.hidden_loss))
        return torch.stack(terms).mean()

    # ---- Trainer hooks --------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, components, student_outputs = self.compute_distillation_loss(model, inputs)
        split = "train" if model.training else "eval"
        if split == "train":
            self._check_finite(loss, components)
        # Training logs average per step (like `loss`); evaluation weights each batch by its size (like eval_loss).
        weight = 1 if split == "train" else self._batch_size(inputs)
        sums = self._sums[split]
        for name, value in components.items():
            total, count = sums.get(name, (0.0, 0))
            sums[name] = (total + value.detach().float() * weight, count + weight)
        if return_outputs:
            # Only the student's logits go to prediction gathering / compute_metrics (no hidden states).
            return loss, {k: v for k, v in student_outputs.items() if k.endswith("logits")}
        return loss

    @staticmethod
    def _batch_size(inputs: dict) -> int:
        for value in inputs.values():
            if torch.is_tensor(value) and value.dim() > 0:
                return value.shape[0]
        return 1

    def _check_finite(self, loss, components):
        values = torch.stack([loss.detach().float()] + [v.detach().float() for v in components.values()])
        if not bool(torch.isfinite(values).all()):
            bad = [name for name, v in components.items() if not torch.isfinite(v.detach()).all()] or ["loss"]
            raise NonFiniteLossError(
                f"non-finite {', '.join(bad)} at step {self.state.global_step + 1} (epoch {self.state.epoch}); "
                "training stopped before the weights were updated. Lower the learning rate, check the inputs, "
                "or use bf16 instead of fp16."
            )

    def _pop_component_means(self, split: str) -> dict[str, float]:
        sums, self._sums[split] = self._sums[split], {}
        means = {}
        for name, (total, count) in sorted(sums.items()):
            value = torch.as_tensor(total / count, device=self.args.device, dtype=torch.float32)
            means[name] = self.accelerator.reduce(value, reduction="mean").item()
        return means

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and "eval_loss" not in logs:
            logs = {**logs, **self._pop_component_means("train")}
        super().log(logs, start_time)

    def evaluation_loop(self, *args, **kwargs):
        self._sums["eval"] = {}
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        for name, value in self._pop_component_means("eval").items():
            output.metrics[f"{prefix}_{name}"] = value
        return output

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        # Keep the columns any teacher needs (e.g. token_type_ids for a BERT teacher of a DistilBERT student).
        extra = set().union(*self._teacher_params_for_columns(), CACHE_COLUMNS) - set(self._signature_columns)
        self._signature_columns += sorted(extra)

    def _teacher_params_for_columns(self) -> list[set[str]]:
        params = getattr(self, "_teacher_params", None)
        return params if params is not None else [_forward_params(t) for t in self.teachers]

    # ---- saving: a PEFT student is saved as its adapter, or merged into its base model on request ------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        unwrapped = self.accelerator.unwrap_model(self.model)
        final = not _internal_call or getattr(self, "_pushing", False)  # not a checkpoint
        if self.is_fsdp_enabled and final and not self.merge_adapter_on_save:
            # The Trainer writes nothing here with SHARDED_STATE_DICT: gather the full student whatever the format.
            output_dir = output_dir if output_dir is not None else self.args.output_dir
            state_dict = full_state_dict(self.model)  # collective: every rank
            self._save(output_dir, state_dict=state_dict)
            if self.args.push_to_hub and not _internal_call:
                self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)
            return None
        if not (self.merge_adapter_on_save and final and hasattr(unwrapped, "merge_and_unload")):
            return super().save_model(output_dir, _internal_call)  # checkpoints always keep the adapter (resume)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            merged = copy.deepcopy(unwrapped).merge_and_unload()  # the trainer's PEFT student stays untouched
            merged.save_pretrained(output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
            logger.info("saved the student with its adapter merged into the base weights to %s", output_dir)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def push_to_hub(self, *args, **kwargs):
        self._pushing = True  # the pushed student is the merged one too when merge_adapter_on_save is set
        try:
            return super().push_to_hub(*args, **kwargs)
        finally:
            self._pushing = False

    # ---- projections: trained, checkpointed, never in the saved student -------------------------

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.projections is not None and not getattr(self, "_projections_in_optimizer", False):
            optimizer.add_param_group({"params": list(self.projections.parameters()),
                                       "weight_decay": self.args.weight_decay})
            self._projections_in_optimizer = True
        return optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.projections is not None and self.accelerator.num_processes > 1 and self.accelerator.sync_gradients:
            # The projections live outside the DDP-wrapped student: average their gradients by hand.
            for p in self.projections.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.AVG)
        return loss

    def _clip_grad_norm(self, model):
        if self.projections is None:
            return super()._clip_grad_norm(model)
        # Clip student and projections together, as one model would be.
        params = list(model.parameters()) + list(self.projections.parameters())
        return self.accelerator.clip_grad_norm_(params, self.args.max_grad_norm)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.projections is not None and self.args.should_save:
            from safetensors.torch import save_file

            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            state = {k: v.detach().cpu().contiguous() for k, v in self.projections.state_dict().items()}
            save_file(state, os.path.join(folder, PROJECTIONS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, PROJECTIONS_NAME)
        if self.projections is not None:
            if not os.path.isfile(path):
                raise ValueError(f"{resume_from_checkpoint} holds no {PROJECTIONS_NAME}: it was not written by a "
                                 "run with the same hidden-size projections.")
            from safetensors.torch import load_file

            self.projections.load_state_dict(load_file(path, device=str(self.args.device)))
