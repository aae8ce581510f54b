"""The final save of a distilled student: the student alone (no projections), its adapter merged on request.

Checkpoints are not written here (the Trainer's keep everything, projections included, to resume exactly); these
functions, and the trainer's saving hooks (`StudentSaving`), write the model that `save_model` / `push_to_hub` hand
out.
"""

from __future__ import annotations

import copy
import logging
import os

import torch
from torch import nn

from .redaction import redacted_args
from .sharding import full_state_dict

logger = logging.getLogger(__name__)


def gathered_state_dict(
    accelerator, model: nn.Module, model_wrapped: nn.Module, *, deepspeed: bool, fsdp: bool
) -> dict[str, torch.Tensor] | None:
    """The full state dict of a sharded model, gathered on every process (a collective); None if not sharded."""
    if deepspeed:
        return accelerator.get_state_dict(model_wrapped)
    if fsdp:
        return full_state_dict(model)  # whatever fsdp_state_dict_type says
    return None


def student_part(state_dict: dict[str, torch.Tensor] | None, projected: bool) -> dict[str, torch.Tensor] | None:
    """The student's entries of a `ProjectedStudent`'s state dict ("student.x" -> "x"); others' as they are."""
    if state_dict is None or not projected:
        return state_dict
    return {k.removeprefix("student."): v for k, v in state_dict.items() if k.startswith("student.")}


def save_student(
    student: nn.Module,
    output_dir: str,
    *,
    args,
    processing_class=None,
    state_dict: dict[str, torch.Tensor] | None = None,
    merge: bool = False,
) -> None:
    """Write `student` (with `state_dict` when gathered from shards), its tokenizer and the training arguments.

    With `merge`, a copy of the PeftModel has its adapter merged into the base weights (the trainer's stays as is).
    """
    student = copy.deepcopy(student).merge_and_unload() if merge else student
    os.makedirs(output_dir, exist_ok=True)
    student.save_pretrained(output_dir, state_dict=state_dict)
    if processing_class is not None:
        processing_class.save_pretrained(output_dir)
    save_training_args(args, output_dir)
    logger.info("saved the student%s to %s", " with its adapter merged" if merge else "", output_dir)


def save_training_args(args, output_dir: str) -> None:
    """training_args.bin, as the Trainer writes it, but from a redacted copy: no hub token, no token-shaped text."""
    torch.save(redacted_args(args), os.path.join(output_dir, "training_args.bin"))


def save_final_student(trainer, output_dir: str | None, merge: bool) -> None:
    """`DistillationTrainer.save_model`'s final save: the student alone (no projections), gathered from shards under
    DeepSpeed / FSDP (a collective: every process calls this), its adapter merged on a copy when `merge`.

    Args:
        trainer: the DistillationTrainer.
        output_dir: where to write (None: args.output_dir).
        merge: merge the PEFT adapter into the base weights of the written copy.
    """
    state_dict = gathered_state_dict(
        trainer.accelerator,
        trainer.model,
        trainer.model_wrapped,
        deepspeed=trainer.is_deepspeed_enabled,
        fsdp=trainer.is_fsdp_enabled,
    )
    if trainer.args.should_save:
        save_student(
            trainer.student,
            output_dir if output_dir is not None else trainer.args.output_dir,
            args=trainer.args,
            processing_class=trainer.processing_class,
            state_dict=student_part(state_dict, trainer.projections is not None),
            merge=merge,
        )


class StudentSaving:
    """The DistillationTrainer's saving hooks, a mixin placed before `transformers.Trainer`.

    `save_model` (and the save that `push_to_hub` makes) writes the student alone: no projections, its adapter
    merged when `merge_adapter_on_save`, gathered from shards under FSDP. Checkpoints keep everything (projections
    included, to resume exactly) and carry a redacted copy of the training arguments.
    """

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        final = not _internal_call or self._pushing  # not a checkpoint (those keep everything, to resume exactly)
        merge = self.merge_adapter_on_save and hasattr(self.student, "merge_and_unload")
        # Under FSDP the Trainer writes no loadable model with SHARDED_STATE_DICT: gather the full student ourselves.
        if not final or not (merge or self.projections is not None or self.is_fsdp_enabled):
            return super().save_model(output_dir, _internal_call)
        save_final_student(self, output_dir, merge)  # the student alone, gathered from shards: a collective
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)
        return None

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        # The Trainer pickles self.args (hub_token included) into every checkpoint: write a redacted copy over it.
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            save_training_args(self.args, output_dir if output_dir is not None else self.args.output_dir)

    def push_to_hub(self, *args, **kwargs):
        self._pushing = True  # Trainer.push_to_hub saves through save_model(_internal_call=True): the final student
        try:
            return super().push_to_hub(*args, **kwargs)
        finally:
            self._pushing = False
