"""DistillationTrainer: a `transformers.Trainer` that trains a student on a frozen teacher's outputs.

The trainer wires pieces together: construction checks come from `hf_distill.checks`, teachers from
`hf_distill.teacher`, cached teacher outputs from `hf_distill.cache`, the loss (terms, masks, weights) from
`hf_distill.objective`, whose numbers come from `hf_distill.losses`, the forward passes and per-step hooks from
`hf_distill.step`, and the saving hooks from `hf_distill.saving`.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer
from transformers.trainer_pt_utils import find_batch_size
from transformers.utils import can_return_loss, find_labels

from .cache import CACHE_COLUMNS, CachedOutputsCollator
from .checks import (
    NonFiniteLossError,
    PackingCheck,
    check_args,
    check_cache_only,
    check_finite,
    check_generation_setup,
    check_merge_on_save,
    check_sharding,
    check_teachers,
)
from .chunked import check_chunking
from .config import DistillationArguments
from .generation import STUDENT, CompletionSampler, completions_from, special_token_ids
from .modeling import forward_params, is_causal_lm, signature_columns, unwrap_peft, wrap_peft
from .objective import (
    DistillationObjective,
    LogitsPair,
    ProjectedStudent,
    TermMeans,
    TopKTargets,
    with_projections,
)
from .positions import StepTokens
from .routing import PairedDistillation
from .saving import StudentSaving
from .sharding import adapt_to_sharding
from .step import DistillationStep
from .teacher import load_teachers, place_teacher

logger = logging.getLogger(__name__)

__all__ = ["DistillationTrainer", "LogitsPair", "NonFiniteLossError", "TopKTargets"]


class DistillationTrainer(StudentSaving, DistillationStep, Trainer):
    """Trainer for knowledge distillation (Hinton et al., 2015; DistilBERT); the loss is `self.objective`'s.

    `model` is the student (trained, saved, pushed). `teacher_model` is a model, a name/path, or a list of them
    (an ensemble); teachers are frozen, in eval mode, run without gradients and never saved. `peft_config` wraps
    the student with `get_peft_model`; `save_model` then writes the adapter, or the merged model when
    `merge_adapter_on_save=True`. Other arguments are `transformers.Trainer`'s. With learned hidden-size
    projections `trainer.model` is a `ProjectedStudent`; `trainer.student` is always the student.

    Extension points: `distillation_pairs` (what to distill for a new task) and `extra_losses` (more named
    terms, whose weights the class attribute `extra_loss_weights` declares).

    Args:
        model: the student, a `PreTrainedModel` or any `nn.Module` returning a dict / ModelOutput.
        teacher_model: a model, a Hub id or a local folder (loaded with the Auto class of the student's task),
            or a list of them; None when `train_dataset` carries cached teacher outputs (`cache_teacher_outputs`).
        args: the `DistillationArguments` (every distillation field's `help` text is its reference).
        *trainer_args: `transformers.Trainer`'s positional arguments after `args`.
        teacher_processing_class: the teacher's tokenizer when it is not saved with the teacher; it must map
            the same ids to the same tokens as `processing_class`.
        peft_config: a PEFT config (e.g. `LoraConfig`) to wrap the student with `get_peft_model`.
        merge_adapter_on_save: `save_model` writes the merged model instead of the adapter.
        **trainer_kwargs: `transformers.Trainer`'s keyword arguments (train_dataset, processing_class, ...).
    """

    # Each micro-batch loss is a per-batch mean; the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False
    # Weights of the terms a subclass's `extra_losses` returns, e.g. {"contrastive_loss": 0.5}.
    extra_loss_weights: ClassVar[dict[str, float]] = {}

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
        args = check_args(args if args is not None else DistillationArguments(output_dir="distilled_model"))
        datasets = {name: trainer_kwargs.get(name) for name in ("train_dataset", "eval_dataset")}
        # A train set that carries cached teacher outputs (hf_distill.cache) needs no teacher at all.
        self.cached = check_cache_only(model, args, datasets["train_dataset"], datasets["eval_dataset"])
        sources, self.teachers = load_teachers(teacher_model, model, args, self.cached)
        student = wrap_peft(model, peft_config)
        self.merge_adapter_on_save, self._pushing = merge_adapter_on_save, False
        tokenizer = trainer_kwargs.get("processing_class")
        self._build_objective(args, student, sources, datasets, tokenizer, teacher_processing_class)
        super().__init__(
            with_projections(student, self.objective.layer_map, self.teacher), args, *trainer_args, **trainer_kwargs
        )
        self._finish_setup(student)
        self._packing = PackingCheck(student, self.teachers, args, self.cached)  # at the first packed batch
        if getattr(self.data_collator, "pack", False):  # PromptCompletionCollator(pack=True): refuse before training
            self._packing.run()
        # On-policy / sequence-level KD (lmbda, seq_kd): completions sampled as the batches are drawn.
        check_generation_setup(args, student, self.teachers, self.cached)
        self.sampler = CompletionSampler(args, *special_token_ids(self.processing_class, unwrap_peft(student)))

    def _build_objective(
        self, args, student: nn.Module, sources: list, datasets: dict, tokenizer, teacher_processing_class
    ) -> None:
        """`self.objective` and `self.paired` (rows routed to their own teacher, teacher_id_column, and / or teachers
        with another tokenizer), after the teacher checks."""
        limit, teacher_tokenizers = check_teachers(
            student, self.teachers, args, tokenizer, teacher_processing_class, sources
        )
        self.objective = DistillationObjective.for_models(
            args, student, self.teacher, vocab_limit=limit, extra_weights=self.extra_loss_weights
        )
        self.paired = PairedDistillation.build(
            args, student, self.teachers, sources, tokenizer, teacher_tokenizers, limit, datasets, self.cached
        )
        self.objective.paired = self.paired.loss if self.paired else None

    def _finish_setup(self, student: nn.Module) -> None:
        check_sharding(self.accelerator, self.args)  # the FSDP / DeepSpeed / processes asked for must be in effect
        adapt_to_sharding(self.accelerator, student)
        if self.cached:
            self.data_collator = CachedOutputsCollator(self.data_collator)
        if self.paired:  # routing column -> teacher_index, and each row aligned for its teacher, in the data loader
            self.data_collator = self.paired.collator(self.data_collator)
        check_merge_on_save(self.merge_adapter_on_save, self.is_deepspeed_enabled or self.is_fsdp_enabled)
        # We compute our own loss: the Trainer must neither count label tokens nor pass num_items_in_batch.
        self.model_accepts_loss_kwargs = False
        if self.args.label_names is None:  # read from the student's class, not from a ProjectedStudent wrapper
            self.label_names = find_labels(type(unwrap_peft(student)))
        self.can_return_loss = can_return_loss(type(unwrap_peft(student)))
        args = self.args
        self.teachers = [place_teacher(t, self.accelerator, args.device, args.teacher_dtype) for t in self.teachers]
        self._teacher_params = [forward_params(t) for t in self.teachers]
        self._student_params = forward_params(student)
        self._shift_labels = is_causal_lm(student)  # label smoothing must shift next-token labels
        self._student_config = getattr(unwrap_peft(student), "config", None)  # read once, not per step
        self._term_means = TermMeans()
        # Causal LMs: soft and hard terms are token-level. compute_loss normalises them by the tokens of the whole
        # accumulated batch (counted in get_batch_samples) and every other term by the accumulation steps itself.
        self._step_tokens = StepTokens()
        self.loss_is_scaled_for_ga = self.loss_is_scaled_for_ga or self._shift_labels
        # args.loss_chunk_size if the chunked output-layer loss can run here (ValueError where it cannot).
        zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        self._chunk_size = check_chunking(
            args.loss_chunk_size,
            student,
            self.teachers,
            cached=self.cached,
            sharded=self.is_fsdp_enabled or zero3,
            label_smoothing=self.label_smoother is not None,
        )

    @property
    def teacher(self) -> nn.Module | None:
        """The (first) teacher; None when training on cached teacher outputs."""
        return self.teachers[0] if self.teachers else None

    @property
    def student(self) -> nn.Module:
        """The student (a PeftModel with a peft_config), without a ProjectedStudent or DDP/FSDP wrapper."""
        return ProjectedStudent.parts(self.accelerator.unwrap_model(self.model))[0]

    @property
    def projections(self) -> nn.ModuleDict | None:
        """The learned hidden-size projections (str(student layer) -> nn.Linear(d_s, d_t)), or None."""
        return ProjectedStudent.parts(self.accelerator.unwrap_model(self.model))[1]

    @property
    def layer_map(self) -> dict[int, int] | None:
        return self.objective.layer_map

    @property
    def loss_weights(self) -> dict[str, float]:
        """Every loss term's weight, by the name it is logged under."""
        return self.objective.weights

    # ---- the extension points -------------------------------------------------------------------

    def distillation_pairs(self, inputs: dict, student_outputs, teacher_outputs: list) -> list[LogitsPair]:
        """Say what to distill; by default `DistillationObjective.pairs` (every common `*logits` field).

        Override this for tasks those rules do not fit (see docs/tasks.md).
        """
        return self.objective.pairs(inputs, student_outputs, teacher_outputs)

    def extra_losses(self, inputs: dict, student_outputs, teacher_outputs: list) -> dict[str, torch.Tensor]:
        """Additional named loss terms (none by default); declare each one's weight in `extra_loss_weights`."""
        return {}

    # ---- Trainer hooks --------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if completions_from(inputs) == STUDENT:  # the student's own samples are no labels: soft loss only
            inputs = {k: v for k, v in inputs.items() if k != "labels"}
        scales = self._token_scales(inputs, num_items_in_batch) if model.training else None
        # Evaluation builds the full logits only when compute_metrics will read them.
        want_logits = return_outputs and self.compute_metrics is not None and not self.args.prediction_loss_only
        chunked = self._chunk_size is not None and not want_logits
        compute = self.chunked_distillation_loss if chunked else self.compute_distillation_loss
        loss, terms, student_outputs = compute(model, inputs, scales)
        split = "train" if model.training else "eval"
        if split == "train":
            check_finite(loss, terms, self.state.global_step + 1, self.state.epoch)
        # Training logs average per step (like `loss`); evaluation weights each batch by its size (like eval_loss).
        self._term_means.add(split, terms, 1 if split == "train" else (find_batch_size(inputs) or 1))
        if return_outputs:
            # Only the student's logits go to prediction gathering / compute_metrics (no hidden states).
            return loss, {} if chunked else {k: v for k, v in student_outputs.items() if k.endswith("logits")}
        return loss

    def _set_signature_columns_if_needed(self):
        # Private, overridden because no public hook sets the columns `remove_unused_columns` keeps: we keep the
        # teachers' inputs too (token_type_ids for a BERT teacher of a DistilBERT student) and the cached columns,
        # and read the student's forward, not that of a ProjectedStudent wrapper.
        if self._signature_columns is None:
            extra = {*CACHE_COLUMNS, *self.label_names, *(self.paired.columns() if self.paired else ())}
            self._signature_columns = signature_columns(self.student, self.teachers, extra)
