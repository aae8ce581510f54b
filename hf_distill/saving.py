"""The final save of a distilled student: the student alone (no projections), its adapter merged on request.

Checkpoints are not written here (the Trainer's keep everything, projections included, to resume exactly); these
functions write the model that `save_model` / `push_to_hub` hand out.
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
