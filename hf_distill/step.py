"""One distillation step of the DistillationTrainer: the forward passes and the loss, the step's batches.

`DistillationStep` is a mixin of `DistillationTrainer` (hf_distill.trainer), which sets what it reads: `teachers`,
`objective`, `paired`, `sampler`, `label_names`, `label_smoother` and the per-run facts of `_finish_setup`
(`_teacher_params`, `_student_params`, `_shift_labels`, `_student_config`, `_chunk_size`, `_packing`, `_term_means`,
`_step_tokens`). The numbers come from hf_distill.objective and hf_distill.losses; this module only runs the models
and hands their outputs over.
"""

from __future__ import annotations

import torch

from .cache import cached_teacher_outputs
from .chunked import OutputHead
from .generation import STUDENT, completions_from
from .modeling import select_inputs, unwrap_peft
from .objective import DistillationObjective, hard_loss, hold_labels, mean_over_processes
from .teacher import run_teachers


class DistillationStep:
    """The forward passes (`teacher_forward`, `compute_distillation_loss`, `chunked_distillation_loss`), the
    objective of a batch, and the Trainer hooks of a step: sampled completions swapped into the batches and the
    tokens counted (`get_batch_samples`), the loss terms logged (`log`, `evaluation_loop`)."""

    def _inputs_for(self, accepted: set[str], inputs: dict, drop_labels: bool) -> dict:
        # Teachers get no labels of any name (QA: start/end_positions): no wasted loss.
        return select_inputs(inputs, accepted, ("labels", *self.label_names) if drop_labels else ())

    def teacher_forward(self, inputs: dict, flags: dict | None = None) -> list:
        """Run every teacher on its share of the inputs (with forward `flags`), without an autograd graph.

        A batch with cached teacher outputs is read instead: one output, {"logits": tensor or TopKTargets}.
        """
        cached = cached_teacher_outputs(inputs)
        if cached is not None:
            return cached
        if not self.teachers:
            raise ValueError("this batch carries no cached teacher outputs and no teacher was loaded.")
        flags = self.objective.output_flags() if flags is None else flags
        # The student's forward gets autocast from Accelerate's wrapper; the teacher is not wrapped, so ask for it.
        with torch.no_grad(), self.accelerator.autocast():
            return run_teachers(
                self.teachers,
                inputs,
                flags,
                self._teacher_params,
                ("labels", *self.label_names),
                self.paired.loss if self.paired else None,
            )

    def compute_distillation_loss(self, model, inputs: dict, scales: dict[str, float] | None = None):
        """Return (total loss, {term: value}, student outputs) for one batch; `scales` see objective.combine."""
        student_inputs = self._inputs_for(self._student_params, inputs, drop_labels=False)
        student_inputs, held = hold_labels(student_inputs, smoothing=self.label_smoother is not None)
        flags = {**self.objective.output_flags(), **self._packing.flags(inputs)}
        # Teacher first: its activations are freed before the student's (kept for backward) are built.
        teacher_outputs = self.teacher_forward(inputs, flags)
        student_outputs = model(**student_inputs, **flags)
        pairs = None
        if self.objective.weights["soft_loss"] > 0:
            pairs = self.distillation_pairs(inputs, student_outputs, teacher_outputs)
        extra = self.extra_losses(inputs, student_outputs, teacher_outputs)
        hard = hard_loss(student_outputs, held, self._student_config, self.label_smoother, self._shift_labels)
        loss, terms = self.objective_for(inputs)(inputs, student_outputs, teacher_outputs, hard, pairs, extra, scales)
        return loss, terms, student_outputs

    def chunked_distillation_loss(self, model, inputs: dict, scales: dict[str, float] | None = None):
        """`compute_distillation_loss` of a causal LM with loss_chunk_size: no (B, L, V) logits are built.

        Student and teachers run with logits_to_keep=1; their last hidden states go through the output layers
        chunk by chunk (DistillationObjective.lm_head_loss); hidden, attention and extra terms are as usual.
        """
        flags = {
            **self.objective.output_flags(),
            "output_hidden_states": True,
            "logits_to_keep": 1,
            **self._packing.flags(inputs),
        }
        teacher_outputs = self.teacher_forward(inputs, flags)
        student_outputs = model(**self._inputs_for(self._student_params, inputs, drop_labels=True), **flags)
        heads = [OutputHead.from_model(unwrap_peft(m)) for m in (self.student, *self.teachers)]
        loss, terms = self.objective_for(inputs).chunked_loss(
            inputs,
            student_outputs,
            teacher_outputs,
            heads[0],
            heads[1:],
            self._chunk_size,
            scales,
            self.extra_losses(inputs, student_outputs, teacher_outputs),
        )
        return loss, terms, student_outputs

    def objective_for(self, inputs: dict) -> DistillationObjective:
        """The objective of a batch: `self.objective`, with `on_policy_divergence` for the student's samples."""
        name = self.args.on_policy_divergence
        if name is None or completions_from(inputs) != STUDENT:
            return self.objective
        return self.objective.with_divergence(name, self.args.divergence_kwargs(name))

    def _token_scales(self, inputs: dict, num_items_in_batch) -> dict[str, float] | None:
        """positions.token_scales for a causal LM's micro-batch in training; None for sequence-level students."""
        if not self._shift_labels:
            return None
        k = getattr(self, "current_gradient_accumulation_steps", None) or self.args.gradient_accumulation_steps
        processes = self.accelerator.num_processes if self.args.average_tokens_across_devices else 1
        return self._step_tokens.scales(self.objective.weights, inputs, num_items_in_batch, k, processes)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The micro-batches of one optimizer step and num_items_in_batch, their next-token label count.

        Causal LMs: both counts of `token_counts` (soft: real tokens; hard: next-token labels) are taken, summed
        over the processes when average_tokens_across_devices (the Trainer's own count skips our models).
        """
        if self.sampler.active:  # swap in sampled completions first, so that their tokens are the ones counted
            drawn = [batch for _, batch in zip(range(num_batches), epoch_iterator)]
            epoch_iterator = iter(
                self.sampler.sample_step(
                    drawn,
                    self.student,
                    self.teacher,
                    self.state.global_step,
                    self.accelerator.process_index,
                    self.accelerator.autocast,
                )
            )
        if self.paired:  # re-sampled completions are aligned for their teachers again
            epoch_iterator = self.paired.batches(epoch_iterator)
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not self._shift_labels or not batches:
            return batches, num_items
        across = self.args.average_tokens_across_devices and self.args.world_size > 1
        return batches, self._step_tokens.count(batches, device, self.accelerator.gather if across else None)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and "eval_loss" not in logs:
            # on-policy fraction, generated length, generation time
            generation = mean_over_processes(self.sampler.pop_logs(), self.args.device, self.accelerator.reduce)
            logs = {**logs, **self._term_means.pop("train", self.args.device, self.accelerator.reduce), **generation}
        super().log(logs, start_time)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ):
        self._term_means.reset("eval")
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        for name, value in self._term_means.pop("eval", self.args.device, self.accelerator.reduce).items():
            output.metrics[f"{metric_key_prefix}_{name}"] = value
        return output
